"""The tips every finding cites (``R2.4``, ``T11``, ``P13`` …), as data: one line of advice each,
what kind of help the pack gives, and which finding codes and callbacks implement it.

Ids: ``R`` — a recipe for training neural networks (become one with the data, an end-to-end
skeleton, overfit, regularise, tune, squeeze); ``T`` — a tuning handbook; ``P`` — rules of thumb of
a lab that trains many networks. ``lightning-tips explain R2.4`` prints one; the README's tips table
is generated from :data:`TIPS`. Pure data: imports only :mod:`lightning_tips.findings`.

Example:
    >>> from lightning_tips.tips import TIPS, tip
    >>> tip("R2.4").advice
    'Check the loss at initialisation: with C balanced classes it should be about log(C).'
    >>> "init-loss" in tip("R2.4").codes
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_tips.findings import CODES

__all__ = ["TIPS", "Tip", "tip", "tips_markdown"]


@dataclass(frozen=True)
class Tip:
    """One tip: ``id``, one line of ``advice``, the ``kind`` of help (check, fix, view, integration,
    guide) and the callbacks that implement it; :attr:`codes` are the finding codes that cite it."""

    id: str
    advice: str
    kind: str
    callbacks: tuple[str, ...] = ()

    @property
    def codes(self) -> tuple[str, ...]:
        """The finding codes whose registry entry cites this tip."""
        return tuple(c for c, info in CODES.items() if self.id in info.tips)

    def render(self) -> str:
        lines = [f"{self.id} ({self.kind}): {self.advice}"]
        if self.codes:
            lines.append(f"Codes: {', '.join(self.codes)}")
        if self.callbacks:
            lines.append(f"Callbacks: {', '.join(self.callbacks)}")
        if not self.codes and not self.callbacks:
            lines.append("Advice only: the pack does not automate it.")
        return "\n".join(lines)


def _t(id: str, kind: str, advice: str, callbacks: str = "") -> Tip:
    return Tip(id, advice, kind, tuple(callbacks.split()))


TIPS: tuple[Tip, ...] = (
    # --- recipe -------------------------------------------------------------------------------------
    _t("R1", "check, view", "Look at the data before modelling: duplicates, bad labels, outliers, NaN.",
       "DataChecks"),
    _t("R2.1", "check", "Seed everything so that runs can be compared.", "DataChecks"),
    _t("R2.2", "guide", "Leave data augmentation off until the plain pipeline works."),
    _t("R2.3", "view", "Evaluate on the whole validation set and plot the curves.", "LearningCurves"),
    _t("R2.4", "check", "Check the loss at initialisation: with C balanced classes it should be about log(C).",
       "InitialLossCheck Preflight"),
    _t("R2.5", "fix, check", "Initialise the output bias to the data: the prior for classes, the mean for regression.",
       "OutputBiasInit InitialLossCheck"),
    _t("R2.6", "guide, view", "Log a metric a human can read (accuracy) beside the loss, and know a human baseline."),
    _t("R2.7", "check", "Train once on zeroed inputs: the real inputs must do better.", "InputIndependenceCheck"),
    _t("R2.8", "check", "Overfit one small batch to near-zero loss before anything else.", "OverfitBatchCheck"),
    _t("R2.9", "check", "Make sure the training loss goes down.", "OverfitBatchCheck LearningCurves"),
    _t("R2.10", "view", "Look at exactly what enters the network: tensors, labels, shapes, ranges.",
       "FirstBatchView"),
    _t("R2.11", "view", "Watch the predictions on one fixed batch change during training.", "FixedBatchPredictions"),
    _t("R2.12", "check", "The loss of sample i must give gradient on input i only: nothing mixes samples.",
       "BatchMixingCheck"),
    _t("R2.13", "guide", "Write the specific case first, make it work, then generalise."),
    _t("R3.1", "guide", "Start from a proven architecture rather than inventing one."),
    _t("R3.2", "guide, check", "Adam with a learning rate around 3e-4 is a safe first choice.", "Recipe"),
    _t("R3.3", "guide", "Add one piece of complexity at a time and check each."),
    _t("R3.4", "check, fix", "Distrust learning-rate schedules: they can reach ~0 long before training ends.",
       "LRDecayGuard"),
    _t("R4.1", "guide", "The best regulariser is more real data."),
    _t("R4.2", "guide", "Augment the data."),
    _t("R4.3", "guide", "Be creative with augmentation: synthetic and partly synthetic data."),
    _t("R4.4", "guide", "A smaller input (fewer features, lower resolution) can generalise better."),
    _t("R4.5", "guide", "A smaller model can generalise better."),
    _t("R4.6", "guide", "A smaller batch strengthens BatchNorm's regularising effect."),
    _t("R4.7", "guide", "Add dropout when the model overfits."),
    _t("R4.8", "guide", "Add weight decay when the model overfits."),
    _t("R4.9", "fix, integration", "Stop early on the validation loss and keep the best weights.",
       "EarlyStopping LearningCurves"),
    _t("R4.10", "guide", "A bigger model stopped early can beat a smaller one trained to the end."),
    _t("R4.11", "view", "First-layer filters should look like edges and blobs, not noise.", "FirstLayerFilters"),
    _t("R4.12", "view, check", "Look at the activations: dead or saturated units are flaws.", "ActivationStats"),
    _t("R5.1", "integration", "Random search beats grid search for hyper-parameters."),
    _t("R5.2", "integration", "Bayesian optimisation makes the search cheaper."),
    _t("R6.1", "fix, guide", "An ensemble of models adds a couple of points; distil it if it is too slow.",
       "SnapshotEnsemble"),
    _t("R6.2", "guide", "Leave it training: nets keep improving for longer than expected."),
    # --- tuning handbook ----------------------------------------------------------------------------
    _t("T1", "integration", "Keep every hyper-parameter in one config and log the loss and accuracies."),
    _t("T2", "view, check", "Plot train and validation accuracy on one chart every epoch.", "LearningCurves"),
    _t("T3", "integration", "Search coarse to fine, on a log scale for the learning rate and regularisation."),
    _t("T4", "guide", "Tune on a subsample or fewer classes first, for speed."),
    _t("T5", "guide", "Rules of thumb: lr 0.1-0.01, batch ~128, clip at 5-15, dropout 0.5."),
    _t("T6", "fix, check", "Mind the class ratio: oversample the minority, balance each mini-batch.",
       "BalancedSampler DataChecks"),
    _t("T7", "check", "NaN: look for log(0), division by zero and NaN in the data; find the first layer that "
       "outputs NaN.", "NonFiniteGuard DataChecks"),
    _t("T8", "fix, check", "Exploding gradients (long RNNs): clip the gradient norm, lower the lr.",
       "GradientClipping GradientStats"),
    _t("T9", "check", "Too-large initial weights give NaN: initialise carefully, normalise inputs and outputs.",
       "InitialLossCheck DataChecks"),
    _t("T10", "check", "When nothing is learnt: watch the loss trends, overfit ~10 samples, look at the outputs.",
       "OverfitBatchCheck"),
    _t("T11", "fix", "Always initialise on purpose: Xavier for tanh/sigmoid, He for ReLU, orthogonal for RNNs.",
       "WeightInit"),
    _t("T12", "check", "Zero-centre and scale the inputs (PCA/whitening when it helps).", "DataChecks"),
    _t("T13", "check", "Average the loss over the mini-batch, do not sum it.", "InitialLossCheck"),
    _t("T14", "guide", "Place dropout with care; try SGD vs Adam; halve the lr on a plateau."),
    _t("T15", "check", "Avoid sigmoid in hidden layers: it saturates and is not zero-centred.", "ActivationStats"),
    _t("T16", "check", "Shuffle the training data.", "DataChecks"),
    _t("T17", "fix", "Set the LSTM forget-gate bias to 1 or more.", "ForgetGateBias"),
    _t("T18", "guide", "BatchNorm is a late improvement, not a first step."),
    _t("T19", "fix, guide", "Ensemble seeds, folds or checkpoints from different iterations.", "SnapshotEnsemble"),
    # --- rules of thumb -----------------------------------------------------------------------------
    _t("P1", "integration", "Use Adam, and restore the optimizer's state with the weights."),
    _t("P2", "guide, check", "Use ReLU in hidden layers.", "ActivationStats"),
    _t("P3", "check", "No activation on the output layer when the loss expects logits.", "OutputActivationCheck"),
    _t("P4", "check", "Give every layer a bias unless a normalisation follows it.", "MissingBiasCheck"),
    _t("P5", "fix", "Use variance-scaling initialisation.", "WeightInit"),
    _t("P6", "check", "Whiten the inputs; squash huge dynamic ranges first (e.g. tanh(x / C)).", "DataChecks"),
    _t("P7", "check", "With Adam, usually no lr decay, at most a short drop at the very end.", "LRDecayGuard"),
    _t("P8", "guide", "64-128 conv filters are usually enough; pool for invariance."),
    _t("P9", "check", "Debug by overfitting a single data point.", "OverfitBatchCheck"),
    _t("P10", "guide", "When in doubt, try a lower and a higher learning rate."),
    _t("P11", "check", "Batch size 1 without BatchNorm exposes vanishing/exploding gradients that BN hides.",
       "GradientStats"),
    _t("P12", "check", "Check every reshape: it can mix samples or destroy spatial locality.", "BatchMixingCheck"),
    _t("P13", "check", "Check the loss function itself; try L1/L2.", "InitialLossCheck OutputActivationCheck"),
    _t("P14", "view", "Check the picture itself: no silent rescaling or clipping, uniform colour maps.",
       "FirstLayerFilters ActivationStats"),
    _t("P15", "check, fix", "A fast lr decay or a bad init hidden by BatchNorm: watch the gradients, use "
       "variance scaling.", "GradientStats WeightInit"),
)  # fmt: skip

_BY_ID = {t.id: t for t in TIPS}


def tip(tip_id: str) -> Tip:
    """The tip ``tip_id`` (``R2.4``, ``t11`` — case-insensitive).

    Raises:
        ValueError: not a tip id.
    """
    found = _BY_ID.get(tip_id.upper())
    if found is None:
        raise ValueError(f"Unknown tip id {tip_id!r}. Expected one of: {', '.join(_BY_ID)}.")
    return found


def tips_markdown() -> str:
    """The tips as the README's markdown table: id, advice, kind, finding codes, callbacks."""
    lines = ["| tip | advice | kind | codes | callbacks |", "|---|---|---|---|---|"]
    for t in TIPS:
        codes = ", ".join(f"`{c}`" for c in t.codes)
        callbacks = ", ".join(f"`{c}`" for c in t.callbacks)
        lines.append(f"| {t.id} | {t.advice.replace('|', '/')} | {t.kind} | {codes} | {callbacks} |")
    return "\n".join(lines)
