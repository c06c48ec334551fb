"""``Recipe``: every check and view of lightning_tips as one callback, fixes off unless asked."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.callbacks import Callback

from lightning_tips._callback import TipComposite
from lightning_tips._validate import check_bool, check_choice, check_float, check_int, check_str
from lightning_tips.checks.activations import ActivationStats
from lightning_tips.checks.curves import LearningCurves
from lightning_tips.checks.gradients import GradientStats
from lightning_tips.checks.lr_decay import LRDecayGuard
from lightning_tips.checks.nonfinite import NonFiniteGuard
from lightning_tips.fixes.clipping import GradientClipping
from lightning_tips.fixes.early_stopping import EarlyStopping
from lightning_tips.fixes.forget_gate import ForgetGateBias
from lightning_tips.fixes.init import WeightInit
from lightning_tips.fixes.output_bias import OutputBiasInit
from lightning_tips.fixes.snapshot import SnapshotEnsemble
from lightning_tips.preflight import Preflight
from lightning_tips.views.filters import FirstLayerFilters
from lightning_tips.views.predictions import FixedBatchPredictions

__all__ = ["Recipe"]


class Recipe(TipComposite):
    """The whole recipe in one callback: pre-flight report card, runtime checks, views, and — only
    when you turn them on — the fixes.

    ============================  =========================================================  ==========================
    part                          finding codes                                              tips
    ============================  =========================================================  ==========================
    ``Preflight`` (report card)   nonfinite-input, duplicate-data, class-imbalance,          R1 R2.1 R2.4 R2.7 R2.8
                                  unnormalized-input, unshuffled-data, no-seed, init-loss,   R2.10 R2.12 T13 T16 P3
                                  loss-reduction, output-activation, batch-mixing,           P6 P9 P12
                                  input-independent, not-learning
    ``NonFiniteGuard``            nonfinite-loss, nonfinite-gradient, nonfinite-input        T7 T8 T9
    ``GradientStats``             exploding-gradient, vanishing-gradient                     P11 P15 T8
    ``ActivationStats``           dead-activation, saturated-activation                      R4.12 T15 P2
    ``LRDecayGuard``              lr-decay, optimizer-defaults                               R3.2 R3.4 P7
    ``LearningCurves``            overfitting, not-learning                                  T2 R2.3 R2.9
    ``FixedBatchPredictions``     (view)                                                     R2.11
    ``FirstLayerFilters``         (view)                                                     R4.11 P14
    fixes (off by default)        weight-init, forget-gate-bias, output-bias,                T11 T17 R2.5 T8 R4.9 R6.1
                                  gradient-clipping, overfitting, snapshot-ensemble
    ============================  =========================================================  ==========================

    Checks and views are pure observers: with only them on, training is bit-for-bit what it would
    have been without the pack. Per-step work happens on sampled steps only (``every_n_steps``;
    pictures every ``view_every_n_steps``). The non-finite guard keeps one on-device flag per step
    and reads it on the sampled steps too: a NaN is reported with the step it first appeared at and
    all ranks stop together at the next sampled step. For a stop *before* the bad update, with the
    offending batch re-run to name the first module that went non-finite, pass
    ``nonfinite_every_n_steps=1`` (one scalar host sync per step; ``nonfinite_action="skip"`` implies it). The children share one findings
    log, so two parts that reach the same verdict speak once; the end-of-fit summary lists them all.

    Args:
        every_n_steps: sampling period of the statistics (gradients, activations, lr re-check).
        view_every_n_steps: period of the pictures (first-layer filters, fixed-batch predictions,
            histograms, the learning-curve chart — also drawn at the end of training).
            Every period follows one rule (:func:`~lightning_tips._utils.is_sampled`): ``0`` means no
            periodic work — what is done at the start and the end of training still happens.
        preflight: run the pre-flight report card before the first step.
        preflight_budget_s: the report card's safety net, in seconds (its work is planned in steps and
            samples from the model's size; when this limit is hit, one ``info`` says so).
        nonfinite_action: what the guard does on NaN/Inf: ``"stop"`` all ranks, ``"skip"`` the
            update, ``"warn"``, or ``"raise"`` a :class:`~lightning_tips.TipError`.
        nonfinite_every_n_steps: how often the guard syncs its on-device flags (default: ``every_n_steps``;
            1 to stop before the bad update and locate the module; 0: the guard is off). ``every_n_steps=0``
            turns off every periodic part, the guard included unless this is given.
        gradients: per-layer gradient norms (``GradientStats``).
        activations: activation statistics (``ActivationStats``).
        lr_decay: the learning-rate schedule guard (``LRDecayGuard``).
        learning_curves: train/val curves and their verdicts (``LearningCurves``).
        first_layer_filters: the first layer's filters as a picture (``FirstLayerFilters``).
        fixed_batch_predictions: predictions on a fixed batch (``FixedBatchPredictions``).
        histograms: log activation and gradient histograms (every ``view_every_n_steps``).
        weight_init: fix — re-initialise weights by scheme at fit start (``WeightInit``, T11); frozen layers
            and layers that do not look freshly initialised (pretrained, loaded) are left alone.
        forget_gate_bias: fix — set LSTM forget-gate biases to this value (``ForgetGateBias``, T17).
        output_bias_init: fix — set the output bias to the data's prior (``OutputBiasInit``, R2.5).
        gradient_clip: fix — clip the gradient norm at this value (``GradientClipping``, T8).
        adaptive_clipping: fix — clip at the 10th percentile of recent norms instead (AutoClip).
        lr_floor: fix — never let the lr fall below this fraction of its initial value (R3.4).
        early_stopping: fix — stop on ``monitor`` and restore the best weights (``EarlyStopping``, R4.9).
        monitor: the metric early stopping watches.
        patience: validation checks without improvement before stopping; also the overfitting verdict's.
        snapshot_ensemble: fix-side view — evaluate the ensemble of the last k snapshots (0: off, R6.1).
        input_key: the batch dict's key holding the model input when it is not recognised (e.g. ``"pixels"``;
            a position ``"0"`` for tuple batches); forwarded to the data checks and the fixed-batch view.
        target_key: the same for the targets (e.g. ``"cls"``; ``"1"`` for tuple batches).

    Example:
        >>> import lightning as L
        >>> import lightning_tips as lt
        >>> recipe = lt.Recipe(every_n_steps=50, gradient_clip=1.0)
        >>> [type(c).__name__ for c in recipe.children][:3]
        ['Preflight', 'NonFiniteGuard', 'GradientStats']
        >>> trainer = L.Trainer(callbacks=[recipe], logger=False, enable_progress_bar=False)
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        view_every_n_steps: int = 1000,
        preflight: bool = True,
        preflight_budget_s: float = 60.0,
        nonfinite_action: Literal["stop", "skip", "warn", "raise"] = "stop",
        nonfinite_every_n_steps: int | None = None,
        gradients: bool = True,
        activations: bool = True,
        lr_decay: bool = True,
        learning_curves: bool = True,
        first_layer_filters: bool = True,
        fixed_batch_predictions: bool = True,
        histograms: bool = True,
        weight_init: Literal["auto", "he", "xavier", "orthogonal", "lecun"] | None = None,
        forget_gate_bias: float | None = None,
        output_bias_init: bool = False,
        gradient_clip: float | None = None,
        adaptive_clipping: bool = False,
        lr_floor: float | None = None,
        early_stopping: bool = False,
        monitor: str = "val_loss",
        patience: int = 3,
        snapshot_ensemble: int = 0,
        input_key: str | None = None,
        target_key: str | None = None,
    ) -> None:
        # every argument is checked here, under the name the user passed (the parts' own checks would
        # name their parameters: budget_s for preflight_budget_s, max_norm for gradient_clip, ...)
        check_int("every_n_steps", every_n_steps, low=0)
        check_int("view_every_n_steps", view_every_n_steps, low=0)
        check_float("preflight_budget_s", preflight_budget_s, low=0.0, low_open=True)
        check_choice("nonfinite_action", nonfinite_action, ("stop", "skip", "warn", "raise"))
        check_int("nonfinite_every_n_steps", nonfinite_every_n_steps, low=0, optional=True)
        if nonfinite_action == "skip" and nonfinite_every_n_steps not in (None, 1):
            raise ValueError(
                "Expected nonfinite_every_n_steps to be 1 or None with nonfinite_action='skip' (an update can only "
                f"be skipped on a checked step) but got {nonfinite_every_n_steps!r}."
            )
        for name, flag in (
            ("preflight", preflight), ("gradients", gradients), ("activations", activations), ("lr_decay", lr_decay),
            ("learning_curves", learning_curves), ("first_layer_filters", first_layer_filters),
            ("fixed_batch_predictions", fixed_batch_predictions), ("histograms", histograms),
            ("output_bias_init", output_bias_init), ("adaptive_clipping", adaptive_clipping),
            ("early_stopping", early_stopping),
        ):  # fmt: skip
            check_bool(name, flag)
        check_choice("weight_init", weight_init, ("auto", "he", "xavier", "orthogonal", "lecun"), optional=True)
        check_float("forget_gate_bias", forget_gate_bias, optional=True)
        check_float("gradient_clip", gradient_clip, low=0.0, low_open=True, optional=True)
        check_float("lr_floor", lr_floor, low=0.0, high=1.0, low_open=True, high_open=True, optional=True)
        check_str("monitor", monitor)
        check_int("patience", patience, low=1)
        check_int("snapshot_ensemble", snapshot_ensemble, low=0)
        check_str("input_key", input_key, optional=True)
        check_str("target_key", target_key, optional=True)
        if snapshot_ensemble == 1:
            raise ValueError(f"Expected snapshot_ensemble to be 0 (off) or an int >= 2 but got {snapshot_ensemble!r}.")
        if adaptive_clipping and gradient_clip is not None:
            raise ValueError(
                f"Expected either gradient_clip (a fixed bound) or adaptive_clipping, not both, but got "
                f"gradient_clip={gradient_clip!r} with adaptive_clipping=True."
            )
        # the guard syncs its flags on the sampled steps; "skip" must decide on every step
        guard_every = nonfinite_every_n_steps if nonfinite_every_n_steps is not None else (
            1 if nonfinite_action == "skip" else every_n_steps)
        # only the keys given are forwarded: the parts' defaults stay theirs
        batch_keys: dict[str, Any] = {
            k: v for k, v in (("input_key", input_key), ("target_key", target_key)) if v is not None
        }
        parts: list[Callback] = []
        # fixes that change the initial model run first (WeightInit zeroes biases the next two set)
        if weight_init is not None:
            parts.append(WeightInit(scheme=weight_init))
        if forget_gate_bias is not None:
            parts.append(ForgetGateBias(value=forget_gate_bias))
        if output_bias_init:
            parts.append(OutputBiasInit())
        if preflight:
            card = Preflight(budget_s=preflight_budget_s, **batch_keys)
            card.budget_arg = "preflight_budget_s"  # the time-limit line names the argument the user has
            parts.append(card)
        # gradient observers see the unclipped gradients, then the clipper acts
        parts.append(
            NonFiniteGuard(action=nonfinite_action, every_n_steps=guard_every, full_every_n_steps=every_n_steps)
        )
        if gradients:
            parts.append(
                GradientStats(
                    every_n_steps=every_n_steps, log_histograms=histograms, histogram_every_n_steps=view_every_n_steps
                )
            )
        if gradient_clip is not None or adaptive_clipping:
            parts.append(
                GradientClipping(max_norm=gradient_clip, adaptive=adaptive_clipping, every_n_steps=every_n_steps)
            )
        if activations:
            parts.append(
                ActivationStats(
                    every_n_steps=every_n_steps, log_histograms=histograms, histogram_every_n_steps=view_every_n_steps
                )
            )
        if lr_decay or lr_floor is not None:
            parts.append(LRDecayGuard(every_n_steps=every_n_steps, floor=lr_floor))
        if learning_curves:
            parts.append(LearningCurves(patience=patience, image_every_n_steps=view_every_n_steps))
        if fixed_batch_predictions:
            parts.append(FixedBatchPredictions(every_n_steps=view_every_n_steps, **batch_keys))
        if first_layer_filters:
            parts.append(FirstLayerFilters(every_n_steps=view_every_n_steps))
        if early_stopping:
            stopper = EarlyStopping(monitor=monitor, patience=patience)
            stopper._skip_missing_monitor = True  # no validation loop / monitor never logged: an info, not a crash
            parts.append(stopper)
        if snapshot_ensemble:
            parts.append(SnapshotEnsemble(k=snapshot_ensemble))
        super().__init__(parts)
