"""Findings: the one channel every check, fix and view reports through.

A :class:`Finding` is a verdict with a stable ``code`` (documented in :data:`CODES`), a
:class:`Severity`, a message carrying the measured figures, advice citing tip ids (``lightning-tips
explain R2.4``), and where it happened (step, module path). :data:`ROOT_CAUSES` says which codes
explain which others. This module is pure data: it imports nothing from the package.
:func:`lightning_tips._report.report` is the one function callbacks call: on rank zero it emits a
:class:`TipWarning` in the exact form ``[code] severity: message — advice``, logs the finding to
every attached logger, and keeps it in a :class:`FindingsLog` for the end-of-fit summary. A finding
is reported once per fit unless its figures change materially; a consequence of a root cause
already reported is demoted (see :func:`root_cause`).

Example:
    >>> from lightning_tips.findings import Finding
    >>> f = Finding("init-loss", "warning", "initial loss 9.21, expected 2.30 (log 10)")
    >>> f.format().startswith("[init-loss] warning: initial loss 9.21")
    True
    >>> f.tips
    ('R2.4', 'R2.5', 'T9', 'T13', 'P13')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

__all__ = [
    "CODES",
    "ROOT_CAUSES",
    "CodeInfo",
    "Finding",
    "FindingsLog",
    "RootCause",
    "Severity",
    "TipError",
    "TipWarning",
    "demote",
    "explain",
    "repeat",
    "repeat_of",
    "root_cause",
]


class Severity(str, Enum):
    """How serious a finding is: ``info`` < ``warning`` < ``error``."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return ("info", "warning", "error").index(self.value)

    def __str__(self) -> str:
        return self.value


class TipWarning(UserWarning):
    """The warning category of every finding; filter it like any ``UserWarning``.

    Example:
        >>> import warnings
        >>> from lightning_tips import TipWarning
        >>> warnings.filterwarnings("ignore", message=r"\\[no-seed\\]", category=TipWarning)
        >>> warnings.filterwarnings("error", message=r"\\[nonfinite-loss\\]", category=TipWarning)
    """


class TipError(RuntimeError):
    """Raised when a check must stop training; ``.code`` is the finding's code.

    Example:
        >>> err = TipError("nonfinite-loss", "loss is nan at step 12")
        >>> err.code, str(err)
        ('nonfinite-loss', 'loss is nan at step 12')
    """

    def __init__(self, code: str, message: str, finding: Finding | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.finding = finding


@dataclass(frozen=True)
class CodeInfo:
    """The registry entry of one finding code: what it means, when it fires, which tips it implements."""

    code: str
    kind: str  # "check", "fix" or "view"
    title: str  # one line
    explanation: str  # one paragraph
    thresholds: str
    tips: tuple[str, ...]
    advice: str  # the default advice attached to findings of this code

    def render(self) -> str:
        return (
            f"{self.code} ({self.kind}): {self.title}\n\n{self.explanation}\n\n"
            f"Thresholds: {self.thresholds}\nAdvice: {self.advice}\nTips: {', '.join(self.tips)}"
        )


def _entry(
    code: str, kind: str, title: str, explanation: str, thresholds: str, tips: str, advice: str
) -> CodeInfo:
    return CodeInfo(code, kind, title, " ".join(explanation.split()), thresholds, tuple(tips.split()), advice)


_ENTRIES = [
    # --- non-finite values (T7-T9) -------------------------------------------------------------
    _entry(
        "nonfinite-loss", "check", "the loss is NaN/Inf",
        """The training loss returned by `training_step` is NaN or infinite. The guard re-runs the
        offending batch on a copy of the model under forward hooks and names the first module whose
        output went non-finite. Typical causes: a learning rate far too high, log(0) or division by
        zero in the loss, NaN in the data, exploding gradients in a long RNN.""",
        "any non-finite element in the loss; an on-device flag every step, synced every `every_n_steps` "
        "(default 1, so the bad update is dropped before it spreads)",
        "T7 T8 T9",
        "lower the learning rate (P10), clip gradients (T8), guard log/division with an epsilon, "
        "check the data for NaN (T7)",
    ),
    _entry(
        "nonfinite-gradient", "check", "a gradient is NaN/Inf",
        """A parameter's gradient holds NaN or Inf after backward (AMP-unscaled). The finding names
        the parameters. Under fp16 AMP the grad scaler legitimately produces inf gradients on steps it
        then skips; those are not reported.""",
        "any non-finite element in any gradient after AMP unscaling; not checked while a grad scaler "
        "(fp16 AMP) is active",
        "T7 T8",
        "clip the gradient norm (T8), lower the learning rate (P10), check custom backward code",
    ),
    _entry(
        "nonfinite-input", "check", "a batch holds NaN/Inf",
        """A tensor of the input batch holds NaN or Inf values. The finding names the field (tuple
        index or dict key) and how many values.""",
        "any non-finite element in a floating-point batch field (pre-flight scan of up to 20 batches; "
        "at runtime every `every_n_steps`)",
        "R1 T7",
        "clean or impute the data before training; check the preprocessing for log(0) or 0/0 (R1, T7)",
    ),
    # --- gradients (T8, P11, P15) --------------------------------------------------------------
    _entry(
        "exploding-gradient", "check", "gradient norms grow by orders of magnitude or pass a bound",
        """The total gradient norm grew by orders of magnitude over its recent history, or passed an
        absolute bound. BatchNorm can hide this from the loss curve (P15); batch size 1 and no
        BatchNorm exposes it (P11).""",
        "latest total norm > `growth` (default 100) x the median of the first 3 sampled norms, or "
        "> `max_norm` (default 1e4); sampled at steps 0, 1, 2, 5, 10, 20, 50, then every `every_n_steps` "
        "(default 50, Recipe 100); a blow-up in the first 50 steps with an lr above its family's usual range "
        "(SGD > 1, Adam-family > 0.01) names the lr as the likely root cause",
        "T8 P11 P15",
        "clip the gradient norm (T8, `GradientClipping`), lower the learning rate (P10), use "
        "variance-scaling init (P5, `init_weights_`)",
    ),
    _entry(
        "vanishing-gradient", "check", "early layers' gradients are orders of magnitude below the late ones",
        """The gradient norm of the first layers is orders of magnitude below that of the last
        layers, or practically zero: the early layers barely learn. Deep sigmoid/tanh stacks and bad
        initialisation are the usual causes (P11, P15).""",
        "first-to-last layer gradient-norm ratio < `min_ratio` (default 1e-4), or a layer's norm "
        "< `floor` (default 1e-10), on 3 sampled steps in a row (zero-initialised heads and residual "
        "branches give exact zeros at step 0 alone); non-finite norms are not judged (nonfinite-* is the cause)",
        "P11 P15 T11",
        "use ReLU hidden layers (P2), He/Xavier init (T11, P5), residual connections or normalisation",
    ),
    # --- activations (R4.12, T15, P2) ----------------------------------------------------------
    _entry(
        "dead-activation", "check", "ReLU-family units that never fire",
        """A large fraction of a ReLU-family layer's units output zero for every sample of the
        sampled batch: they get no gradient and stop learning. Very negative biases, a learning rate
        too high, or bad init are the usual causes.""",
        "fraction of units with output <= 0 for every sample of the (global) sampled batch > "
        "`dead_fraction` (default 0.5), over at least 16 values per unit, accumulated over sampled steps when one "
        "batch has fewer (a unit firing with probability p "
        "looks dead over n values with probability (1-p)^n: 0.5 for one value at p=0.5, 1.5e-5 for 16); "
        "no verdict from non-finite activations (nonfinite-* is the cause); output activations get no verdict; "
        "functional activations (F.relu, F.gelu, ...) are observed too, per enclosing module",
        "R4.12 P2",
        "lower the learning rate (P10), He init (T11, P5), check biases; consider LeakyReLU",
    ),
    _entry(
        "saturated-activation", "check", "sigmoid/tanh units stuck in their flat tails",
        """A large fraction of a sigmoid/tanh layer's outputs sit in the flat tails where the
        gradient is ~0 (sigmoid outside ~[-4, 4] pre-activation, T15).""",
        "fraction of outputs with sigmoid <= 0.02 or >= 0.98 (tanh |y| >= 0.96, hardtanh at its bounds) "
        "> `saturated_fraction` (default 0.5)",
        "T15 P2 R4.12",
        "use ReLU in hidden layers (P2, T15), Xavier init for tanh/sigmoid (T11), normalise inputs (T12)",
    ),
    # --- pre-flight (R2.x) ---------------------------------------------------------------------
    _entry(
        "init-loss", "check", "the loss at init is far from what a well-initialised output gives",
        """The first-batch loss on the untrained model is far from the value a well-initialised
        output gives: log C for C-class cross-entropy, the prior's entropy for imbalanced classes
        (or the loss of the output bias alone, when the bias already holds the prior, e.g. set by
        `OutputBiasInit` — then that fix is never advised again), the target variance for MSE
        regression. Large initial logits waste the first iterations ("hockey stick" loss) and can
        mean too-large init weights (T9). A loss already *below* every expectation is info: a trained
        or loaded model (fine-tuning) — or labels leaking into the inputs. Noise model: the batch
        prior is used only from >= 5 x C labels (its plug-in entropy is biased on fewer); a mean loss
        far above log C needs large logits on real samples whatever the batch size (the per-sample
        standard error is reported). A non-finite loss is skipped: non-finite inputs or weights are
        the root cause, reported by their own checks.""",
        "|measured - e| > max(0.5, 0.25 x e) for every e in {log C, prior entropy (>= 5 x C labels), "
        "loss of the output bias alone (when <= log C + tolerance)} and measured above them (CE, NLL, BCE; "
        "below: info); measured > 2 x target variance (MSE, >= 8 samples)",
        "R2.4 R2.5 T9 T13 P13",
        "initialise the output layer small and its bias to the prior (R2.5, `OutputBiasInit`)",
    ),
    _entry(
        "loss-reduction", "check", "the loss is summed, not averaged, over the batch",
        """The initial loss scales with the batch size: the loss is a sum over samples, not a mean,
        so the effective learning rate depends on the batch size (T13). A traced loss call decides:
        `reduction='sum'` flags, `reduction='mean'` returned unchanged passes. Only an untraced
        reduction is measured, on the batch and its two halves: a mean gives full = (first +
        second) / 2, a sum full = first + second — exact up to batch-statistics layers, so the
        margins (10% / 30%) cover BatchNorm and round-off, not sampling noise.""",
        "`reduction='sum'` seen in the loss call; or, with no traced mean returned unchanged, "
        "|full / (first half + second half) - 1| <= 0.1 and |2 x full / (first + second) - 1| > 0.3",
        "T13 P13",
        "use reduction='mean' (the default of torch losses) so gradients are averaged over the batch (T13)",
    ),
    _entry(
        "output-activation", "check", "an activation on the output layer feeding a loss that expects logits",
        """The model's output passes through ReLU, Softmax, LogSoftmax or Sigmoid before a loss that
        expects raw logits (cross-entropy, BCE-with-logits). The loss then optimises the wrong
        thing and gradients shrink (P3). Sigmoid followed by `BCELoss` is legitimate. Noise model:
        none — one traced step on the real batch; the evidence is structural (which function
        produced the tensor) or exact value patterns that a logit layer cannot produce.""",
        "the loss input is a Softmax/Sigmoid/ReLU output (traced activation call, last module, values: "
        "rows summing to 1, all in (0, 1), all >= 0 with > 5% exact zeros mixed with positive values; "
        "all-zero logits of a zero-initialised head are not evidence) and the loss expects logits; "
        "LogSoftmax before cross-entropy is info; non-finite loss inputs: skipped",
        "P3 P13",
        "remove the activation after the last layer; the loss applies its own (P3)",
    ),
    _entry(
        "batch-mixing", "check", "sample i's output depends on sample j's input",
        """Backpropagating from one sample's output gives a non-zero gradient on other samples'
        inputs: some operation mixes the batch dimension (a wrong reshape/permute/view, a
        `batch_first` mistake). This silently corrupts training (R2.12, P12). Normalisation layers
        run in eval mode for the check so BatchNorm is not a false alarm. Only per-sample tensors
        are evidence: a tensor broadcast over the batch (leading dimension 1, e.g. a (1, S, D)
        position embedding) is shared like a parameter and ignored, and so is an embedding whose
        index does not come from the batch's samples (`pos(arange(S))`, a token-type buffer: the
        index is not a batch field or a view/copy of one, and does not move when the batch's
        samples are rolled); all-zero weights (a
        zero-initialised head) get small noise on the check's copy so gradients can flow. Noise
        model: none — an
        independent sample's gradient is exactly zero; the threshold only absorbs float round-off.""",
        "any input-gradient on samples other than i with |g| > 1e-7 x max |g|, over the float inputs and "
        "the nn.Embedding outputs indexed by the batch's samples (batch of 1, non-finite gradients: skipped)",
        "R2.12 P12",
        "check the operations that reshape and permute tensor dimensions (view, transpose, "
        "batch_first of RNNs) (P12)",
    ),
    _entry(
        "input-independent", "check", "the output ignores the input, or the labels do not follow the inputs",
        """Either the forward ignores its input (a wrong variable, an input multiplied by 0), or the
        model learns nothing from the inputs that carries over to validation data (labels shuffled
        apart from their inputs) (R2.7). Pre-flight proves only what one batch can: the output is
        exactly unchanged when the inputs are zeroed and replaced by noise, and no layer explains it
        — either no layer's output depends on the inputs, or layers do but the dependence ends
        outside every module (a body computed and its result not used) and the output stays
        unchanged once every all-zero parameter is filled with noise (exact, no noise; a
        zero-initialised head, also one applied functionally, is silent; a layer whose units are
        all dead or constant is an info naming it). During training the validation loss is compared
        with the exact loss of the best constant prediction on the same validation labels; noise
        model: any model that uses the inputs goes below that exact baseline, and the minimum over
        checks is used, so noise can only hide the finding, never raise it.""",
        "pre-flight: output change <= 1e-6 x its scale under zeroed and random inputs, with no layer "
        "depending on them or with the dependence ending outside every module (also with all-zero "
        "parameters filled with noise); training: after `steps` (default 100) steps, >= 3 validation checks and >= 30 "
        "validation samples, best val loss >= the best constant prediction's loss (the class entropy of "
        "the validation labels; CE/NLL classification only) while the training loss < 0.8 x that baseline",
        "R2.7",
        "check that the forward uses its input and that labels stay aligned with inputs (R2.7)",
    ),
    _entry(
        "not-learning", "check", "the loss does not go down; one batch cannot be overfitted",
        """On a copy with a fresh optimizer of the user's type, one batch could not be overfitted
        in a bounded number of steps (R2.8, P9), or the real training loss did not fall in the first
        epochs (R2.9, T10). Noise model of the one-batch part: deterministic (one fixed batch, dropout
        off, full-batch steps), so the wide thresholds guard against slow-but-healthy models, not
        noise: a loss that halves passes, one that falls by less than 10% (or rises) is flagged.""",
        "overfit one batch (16 samples, 50 steps, at the peak lr the user's schedule reaches in its first "
        "2000 planned steps): final/initial loss > 0.9, a detached loss, or no parameter changed "
        "(0.5 < ratio <= 0.9 is info 'learns, slowly'; info naming the root cause when the output does not "
        "depend on the input at all — input-independent or dead units —, when the copy's loss went non-finite "
        "(the lr, or non-finite gradients at the first backward), when it trained at an lr above its "
        "optimizer's usual range, or when its first-to-last layer gradient-norm ratio is < 1e-4 at the first "
        "and the last backward (vanishing gradients); skipped when the loss is non-finite before any step); "
        "training: no epoch loss below 0.98 x the first within 3 epochs nor a "
        "fall of more than 0.5% and 3x the check-to-check noise (a fall beyond that but under 2%: info, "
        "'learns, slowly'); never after a NaN/Inf loss (reported as nonfinite-loss)",
        "R2.8 R2.9 P9 T10 T2",
        "check the loss, the labels and the optimizer wiring; raise or lower the lr (P10); overfit "
        "~10 samples first (T10)",
    ),
    _entry(
        "lr-decay", "check", "the learning rate reaches ~0 long before training ends",
        """A scheduler drives the learning rate below a small fraction of its initial value long
        before training ends (e.g. a per-epoch schedule stepped per batch). Training then stops
        making progress (R3.4, P7, P15).""",
        "lr < `min_ratio` (default 1e-3) x its running peak before `by_fraction` (default 0.5) of the "
        "planned steps (schedulers replayed on a copy before training, re-checked every `every_n_steps`)",
        "R3.4 P7 P15",
        "check the scheduler's interval ('step' vs 'epoch') and T_max/step_size; with Adam usually no "
        "decay (P7)",
    ),
    _entry(
        "optimizer-defaults", "check", "an unusual optimizer or learning rate at the start",
        """The optimizer or its learning rate is far from the safe starting point of the recipe
        (Adam with lr 3e-4, R3.2). Informational: it may be deliberate.""",
        "Adam-family lr outside [1e-5, 1e-2], SGD lr outside [1e-4, 1.0]",
        "R3.2 P1",
        "start from Adam with lr 3e-4 and change one thing at a time (R3.2, R3.3)",
    ),
    # --- data (R1, T6, T12, T16, P6) -----------------------------------------------------------
    _entry(
        "unnormalized-input", "check", "inputs far from zero-mean/unit-scale, or a huge dynamic range",
        """Floating-point input features are far from zero-mean, unit-variance (per feature or
        channel), or span a huge dynamic range. Unnormalised inputs slow training and can cause
        NaN (T9, T12, P6).""",
        "on the features/channels that vary (constant ones, and those with std < 1% of the median "
        "feature's, ignored): RMS magnitude sqrt(mean(x^2)) outside [0.01, 4], or features with RMS > 4 "
        "or |mean| > max(1, 3 x std) carrying >= 1% of the second moment; "
        "dynamic range (max |x| / median of non-zero |x|) > 1e4",
        "T12 P6 T9",
        "standardise inputs (subtract mean, divide by std), whiten (T12, P6); squash huge ranges "
        "with tanh(x/C) (P6)",
    ),
    _entry(
        "class-imbalance", "check", "skewed labels with no prior-bias init and no balancing",
        """The class distribution is skewed and neither the output bias matches the prior (R2.5)
        nor does the loader balance the classes (T6). Noise model: the labels are a sample of the
        training set; conditional on the labels of the largest and smallest class, the largest
        class's count is binomial, and under "max/min <= 3" its share is at most 3/4. A warning
        needs the one-sided binomial tail P(X >= n_max) times the number of ordered class pairs
        k(k-1) (Bonferroni) below 1e-3, from at least 30 sampled labels; a sampled ratio above 3
        that chance could give (20 labels of 4 balanced classes coming out 7/6/5/2) is an info.""",
        "max / min class frequency > 3 over >= 30 sampled labels, significantly so (binomial test of "
        "max vs min against a 3:1 split, Bonferroni over class pairs, p < 1e-3), the output bias not "
        "within 0.5 of the log prior, and no WeightedRandomSampler",
        "R2.5 T6",
        "initialise the output bias to the log prior (R2.5, `OutputBiasInit`) or balance batches (T6, "
        "`balanced_sampler`)",
    ),
    _entry(
        "duplicate-data", "check", "duplicated samples in train, or samples shared by train and val",
        """Samples appear more than once in the training data, or the same sample is in both the
        training and the validation data (by content hash), inflating validation scores (R1).""",
        "duplicate fraction within train > 1%; any train/val overlap",
        "R1",
        "deduplicate the data and split train/val after deduplication (R1)",
    ),
    _entry(
        "unshuffled-data", "check", "the training loader does not shuffle",
        """The training dataloader iterates in a fixed order: batches are correlated (often sorted by
        class), which biases gradient steps (T16).""",
        "the train loader's sampler is a SequentialSampler (or a DistributedSampler with shuffle=False)",
        "T16",
        "pass shuffle=True to the training DataLoader (T16)",
    ),
    _entry(
        "no-seed", "check", "no global seed was set",
        """No global random seed was set before fit (R2.1): runs cannot be reproduced and
        comparisons between them are noisy.""",
        "the PL_GLOBAL_SEED environment variable is unset (lightning.seed_everything sets it)",
        "R2.1",
        "call lightning.seed_everything(seed) before building the model (R2.1)",
    ),
    _entry(
        "missing-bias", "check", "a layer without bias that no normalisation follows",
        """A linear/conv layer has no bias and is not followed by a normalisation layer (which would
        supply one). A bias in every layer is the rule of thumb (P4).""",
        "bias=None on nn.Linear/nn.ConvNd whose next module is not a norm layer",
        "P4",
        "add a bias to the layer (P4)",
    ),
    _entry(
        "overfitting", "check", "val loss rises while train loss falls",
        """The validation loss has stayed above its best for `patience` consecutive checks while the
        training loss kept falling, by a rise that is beyond the curve's own noise and material: the
        model is overfitting (T2, R4.9). Validation accuracy that did not fall is counter-evidence for a
        moderate rise. Noise model: the check-to-check std of the validation curve, estimated from its
        median absolute second difference (robust to the trend).""",
        "warning: val loss above its best for `patience` checks (default 3) while train loss decreased, the "
        "rise > 3x the check-to-check noise and >= 10% of the best, and (below a 25% rise) val accuracy, when "
        "logged, fell; info: the same with val accuracy not falling; nothing below that",
        "T2 R4.7 R4.8 R4.9",
        "add dropout (R4.7) or weight decay (R4.8), get more data (R4.1), stop early (R4.9, `EarlyStopping`)",
    ),
    # --- fixes report what they did -------------------------------------------------------------
    _entry(
        "output-bias", "fix", "the output bias was set to the data's prior",
        """`OutputBiasInit` set the output layer's bias so that the untrained model predicts the
        data's prior (log p for softmax, log-odds for a single logit, target mean for regression).""",
        "always reported when applied (info)",
        "R2.5",
        "none needed: the loss at init should now be the prior's entropy (R2.4)",
    ),
    _entry(
        "forget-gate-bias", "fix", "LSTM forget-gate biases were set",
        """`ForgetGateBias` set the forget-gate bias of every LSTM layer and direction (T17).""",
        "always reported when applied (info)",
        "T17",
        "none needed",
    ),
    _entry(
        "weight-init", "fix", "weights were (re)initialised by scheme",
        """`init_weights_` initialised layers by the activation that follows them: He for ReLU,
        Xavier for tanh/sigmoid, orthogonal for recurrent matrices, LeCun for SELU (T11, P5). Frozen
        layers (`requires_grad=False`) are never touched; layers whose weights are not a plausible draw
        of PyTorch's default init (pretrained, trained or loaded before the fit, or user-initialised)
        are left alone unless `WeightInit(force=True)`; the finding names what was left alone.""",
        "always reported when applied (info); 'not freshly initialised': a weight or bias value outside "
        "PyTorch's default bound 1/sqrt(fan_in), or a weight std more than 5 standard errors (min 2%) from "
        "bound/sqrt(3)",
        "T11 P5 P15",
        "none needed",
    ),
    _entry(
        "gradient-clipping", "fix", "how often gradients were clipped",
        """`GradientClipping` clipped gradients on Lightning's clipping path (after AMP unscaling).
        A clip rate near 100% means the bound is too low or the learning rate too high (T8).""",
        "clip rate > 50% of steps is reported as a warning; otherwise info",
        "T8 T5",
        "if almost every step is clipped, raise max_norm or lower the learning rate (T8, P10)",
    ),
    _entry(
        "snapshot-ensemble", "fix", "validation metric of the snapshot ensemble vs the single model",
        """`SnapshotEnsemble` averaged the predictions of the last k snapshots and reports its
        validation metric next to the single model's (R6.1, T19).""",
        "reported after each evaluation once k snapshots exist (info)",
        "R6.1 T19",
        "if the ensemble is better, evaluate and ship the ensemble (R6.1)",
    ),
    _entry(
        "view-skipped", "view", "a view could not be produced for this model",
        """A view (filter grid, fixed-batch predictions, curves, …) could not apply to this model or
        data, e.g. no conv layer, dict outputs; the message says which and why.""",
        "reported once per view (info)",
        "R4.11 R2.10 R2.11",
        "none needed; see the message for what the view would need",
    ),
]

CODES: dict[str, CodeInfo] = {e.code: e for e in _ENTRIES}
"""Every finding code, in documentation order. The codes are the project's public contract."""


def explain(code: str) -> str:
    """The full registry entry of ``code``, with its place in :data:`ROOT_CAUSES`.

    Raises:
        ValueError: ``code`` is not a known finding code.
    """
    text = _info(code).render()
    explains = sorted({c for row in ROOT_CAUSES if row.root == code for c in row.explains})
    by = [row.root + (f" (when {row.figure} >= {row.at_least:g})" if row.figure else "")
          + (" (a warning or error)" if row.verdict_only else "")
          for row in ROOT_CAUSES if code in row.explains]
    if explains:
        text += f"\nRoot cause of (reported later, they become 'consequence of' infos): {', '.join(explains)}"
    if by:
        text += f"\nExplained by (when reported earlier in the fit): {', '.join(by)}"
    return text


def _info(code: str) -> CodeInfo:
    try:
        return CODES[code]
    except KeyError:
        raise ValueError(
            f"Unknown finding code {code!r}. Expected one of: {', '.join(CODES)}."
        ) from None


@dataclass(frozen=True)
class Finding:
    """One verdict.

    Args:
        code: a key of :data:`CODES`.
        severity: ``"info"``, ``"warning"`` or ``"error"`` (or a :class:`Severity`).
        message: what was measured, with the figures.
        advice: what to try, citing tip ids; defaults to the code's registry advice.
        step: the global step it refers to, if any.
        module: the module path (or parameter name / batch field) it refers to, if any.
        figures: the measured numbers; a repeat of the same finding is reported again only when
            these change materially.
        tips: tip ids; default to the code's registry entry.
        skipped: the check behind ``code`` could not apply (an ``info`` that says why): it carries no
            verdict and no remedy advice, and the summary and logger tables mark it ``skipped``.
        cause: the code of the root cause this finding was attributed to (see :func:`root_cause`):
            it is then an ``info`` kept as evidence of that root, not a warning of its own. A repeat
            of a code already warned this fit (:func:`repeat_of`) carries its own code here.
    """

    code: str
    severity: Severity
    message: str
    advice: str = ""
    step: int | None = None
    module: str | None = None
    figures: Mapping[str, float] = field(default_factory=dict)
    tips: tuple[str, ...] = ()
    skipped: bool = False
    cause: str | None = None

    def __post_init__(self) -> None:
        info = _info(self.code)
        try:
            severity = Severity(self.severity)
        except ValueError:
            raise ValueError(
                f"Expected severity to be one of 'info', 'warning', 'error' but got {self.severity!r}."
            ) from None
        object.__setattr__(self, "severity", severity)
        if self.skipped and severity is not Severity.INFO:
            raise ValueError(f"Expected a skipped finding to be 'info' but got {severity.value!r}.")
        if self.cause is not None:
            _info(self.cause)
        if not self.advice and not self.skipped and self.cause is None:
            object.__setattr__(self, "advice", info.advice)
        if not self.tips:
            object.__setattr__(self, "tips", info.tips)
        object.__setattr__(self, "figures", {k: float(v) for k, v in self.figures.items()})

    def format(self) -> str:
        """``[code] severity: message — advice``, the exact form of the warning (no ``— advice`` when
        there is none, as for a skipped check)."""
        head = f"[{self.code}] {self.severity.value}: {self.message}"
        return f"{head} — {self.advice}" if self.advice else head

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "advice": self.advice,
            "step": self.step,
            "module": self.module,
            "figures": dict(self.figures),
            "tips": list(self.tips),
            "skipped": self.skipped,
            "cause": self.cause,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        return cls(
            code=d["code"],
            severity=d["severity"],
            message=d["message"],
            advice=d.get("advice", ""),
            step=d.get("step"),
            module=d.get("module"),
            figures=d.get("figures", {}),
            tips=tuple(d.get("tips", ())),
            skipped=bool(d.get("skipped", False)),
            cause=d.get("cause"),
        )


def _material_change(old: Mapping[str, float], new: Mapping[str, float], rel: float) -> bool:
    """True when a shared figure moved by more than ``rel`` (relative), or the set of figures changed."""
    if set(old) != set(new):
        return True
    for k, a in old.items():
        b = new[k]
        if math.isnan(a) != math.isnan(b):
            return True
        if math.isnan(a) or a == b:
            continue
        scale = max(abs(a), abs(b))
        if math.isinf(scale) or abs(a - b) > rel * scale:
            return True
    return False


class FindingsLog:
    """The findings one callback reported this fit, with the de-duplication memory.

    A finding with the same ``(code, module)`` as an earlier one is dropped unless its severity is
    higher or one of its figures changed by more than ``rel_change`` (default 50%).
    """

    def __init__(self, rel_change: float = 0.5) -> None:
        self.rel_change = rel_change
        self.findings: list[Finding] = []
        self._last: dict[tuple[str, str | None], Finding] = {}

    def admit(self, finding: Finding) -> bool:
        """Record ``finding`` if it is new or changed materially; return whether it was recorded."""
        key = (finding.code, finding.module)
        prev = self._last.get(key)
        if (
            prev is not None
            and finding.severity.rank <= prev.severity.rank
            and not _material_change(prev.figures, finding.figures, self.rel_change)
        ):
            return False
        self._last[key] = finding
        self.findings.append(finding)
        return True

    def clear(self) -> None:
        self.findings.clear()
        self._last.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"findings": [f.to_dict() for f in self.findings]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.clear()
        for d in state.get("findings", []):
            self.admit(Finding.from_dict(d))


# --- root causes --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RootCause:
    """One row of the precedence table: a finding of ``root`` explains later findings of the codes
    in ``explains`` — when ``figure`` is given, only while the root's figure is ``>= at_least``; when
    ``verdict_only``, only a root of severity ``warning`` or ``error`` (an ``info`` of that code, e.g. a
    remark, explains nothing)."""

    root: str
    explains: tuple[str, ...]
    why: str
    figure: str | None = None
    at_least: float = 0.0
    verdict_only: bool = False


_AFTER_NONFINITE = (
    "dead-activation", "saturated-activation", "not-learning", "init-loss", "vanishing-gradient",
    "exploding-gradient", "input-independent", "overfitting",
)  # fmt: skip

ROOT_CAUSES: tuple[RootCause, ...] = (
    RootCause("nonfinite-input", ("nonfinite-loss", "nonfinite-gradient", *_AFTER_NONFINITE),
              "NaN/Inf in the data make the loss, the gradients and every statistic computed from them non-finite"),
    RootCause("nonfinite-loss", ("nonfinite-gradient", *_AFTER_NONFINITE),
              "a NaN/Inf loss gives NaN gradients and weights; statistics computed from them are meaningless"),
    RootCause("nonfinite-gradient", ("nonfinite-loss", *_AFTER_NONFINITE),
              "a NaN/Inf gradient makes the weights, then the loss and every statistic non-finite"),
    RootCause("dead-activation", ("input-independent", "vanishing-gradient", "not-learning"),
              "when every unit of a layer is dead, nothing of the input reaches the output and no gradient "
              "reaches the layers before it: the early layers get none and the loss cannot fall",
              figure="dead_fraction", at_least=1.0),
    RootCause("input-independent", ("not-learning",),
              "an output that does not depend on the input can do no better than a constant: the loss stops "
              "at the constant prediction's", verdict_only=True),
    RootCause("batch-mixing", ("not-learning",),
              "a model that mixes samples across the batch dimension fits each sample against the others' data: "
              "even one batch cannot be fitted", verdict_only=True),
    RootCause("unnormalized-input", ("init-loss", "dead-activation", "saturated-activation", "exploding-gradient"),
              "inputs far from unit scale make the first layer's pre-activations huge: large initial logits, "
              "units pushed into their dead or saturated range, large gradients"),
    RootCause("exploding-gradient", ("dead-activation", "saturated-activation"),
              "huge updates throw the pre-activations far out: units die (ReLU) or saturate (tanh/sigmoid) after them"),
    RootCause("output-bias", ("init-loss", "loss-reduction"),
              "the pack set the output bias itself: the initial loss reflects that fix"),
    RootCause("weight-init", ("init-loss", "loss-reduction"),
              "the pack re-initialised the weights itself: the initial loss reflects that fix"),
)  # fmt: skip
"""The precedence table, in one place: which finding codes explain which others. When a consequence
is reported after one of its root causes in the same fit, it is demoted (:func:`demote`)."""


def root_cause(finding: Finding, earlier: Iterable[Finding]) -> Finding | None:
    """The first of the ``earlier`` findings (this fit's, in order) that explains ``finding`` by
    :data:`ROOT_CAUSES`, or ``None``. Only findings that are neither skipped nor demoted themselves
    are roots, and a skipped finding is never a consequence.

    Example:
        >>> nan = Finding("nonfinite-loss", "error", "loss is nan at step 12")
        >>> dead = Finding("dead-activation", "warning", "100% of net.1 never fired", figures={"dead_fraction": 1.0})
        >>> root_cause(dead, [nan]).code
        'nonfinite-loss'
        >>> root_cause(Finding("input-independent", "warning", "output unchanged"), [dead]).code
        'dead-activation'
        >>> root_cause(nan, [dead]) is None
        True
    """
    if finding.skipped:
        return None
    for root in earlier:
        if root.skipped or root.cause is not None or root.code == finding.code:
            continue
        for row in ROOT_CAUSES:
            if row.root != root.code or finding.code not in row.explains:
                continue
            if row.figure is not None and not root.figures.get(row.figure, -math.inf) >= row.at_least:
                continue
            if row.verdict_only and root.severity is Severity.INFO:
                continue
            return root
    return None


def demote(finding: Finding, root: Finding) -> Finding:
    """``finding`` as evidence of ``root``: an ``info`` whose message starts ``consequence of
    [root-code]:``, with no advice of its own (the root's advice applies).

    Example:
        >>> root = Finding("nonfinite-loss", "error", "loss is nan at step 12")
        >>> demote(Finding("not-learning", "warning", "loss 2.3 -> nan"), root).format()
        '[not-learning] info: consequence of [nonfinite-loss]: loss 2.3 -> nan'
    """
    return replace(finding, severity=Severity.INFO, message=f"consequence of [{root.code}]: {finding.message}",
                   advice="", skipped=False, cause=root.code)


def repeat_of(finding: Finding, earlier: Iterable[Finding]) -> Finding | None:
    """The first of the ``earlier`` findings (this fit's, in order) that already *warned* about
    ``finding``'s code — severity ``warning``/``error``, not demoted, not skipped — at a severity no
    lower than ``finding``'s; ``None`` when ``finding`` is no warning or is the first of its code.
    One problem, one warning: a later warning of the same code (another callback's view of it, the
    same symptom at a later step) is evidence, kept as an ``info`` (:func:`repeat`).

    Example:
        >>> first = Finding("exploding-gradient", "warning", "norm 7.9e8 at step 0")
        >>> again = Finding("exploding-gradient", "warning", "norm 9.3e6 at step 1")
        >>> repeat_of(again, [first]) is first, repeat_of(first, []) is None
        (True, True)
        >>> repeat_of(Finding("exploding-gradient", "error", "norm 1e12"), [first]) is None  # escalation
        True
    """
    if finding.severity.rank < Severity.WARNING.rank:
        return None
    for prev in earlier:
        if (prev.code == finding.code and prev.cause is None and not prev.skipped
                and prev.severity.rank >= finding.severity.rank):
            return prev
    return None


def repeat(finding: Finding, first: Finding) -> Finding:
    """``finding`` as evidence of the warning ``first`` of the same code already gave: an ``info``
    whose message starts ``again:`` (with the first warning's step when known), no advice of its own.

    Example:
        >>> first = Finding("not-learning", "warning", "overfit one batch: ratio 0.99")
        >>> repeat(Finding("not-learning", "warning", "the training loss did not go down"), first).format()
        '[not-learning] info: again (already warned): the training loss did not go down'
    """
    when = f"warned at step {first.step}" if first.step is not None else "already warned"
    return replace(finding, severity=Severity.INFO, message=f"again ({when}): {finding.message}", advice="",
                   skipped=False, cause=first.code)
