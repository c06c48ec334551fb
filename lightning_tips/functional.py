"""The pure functions behind the callbacks, in one namespace (torchmetrics' ``functional`` shape):
measurements on a model, a batch or a history, and the verdicts the callbacks report. Each takes
plain tensors, modules or lists and returns figures or a verdict; none needs a ``Trainer``. Every
``*_verdict`` function returns one :class:`~lightning_tips.functional.Verdict` (code, severity,
message, figures, module, advice) or ``None`` when the check passes; :func:`activation_verdicts` returns
a list of them, one per flagged layer.

Example:
    >>> import torch
    >>> from lightning_tips import functional as LF
    >>> LF.exploding_verdict([0.4, 0.6, 0.5, 0.45, 80.0]).figures["growth"]  # 160x its early median (T8)
    160.0
    >>> LF.imbalance_ratio(torch.tensor([90, 10]))  # max / min class count (T6)
    9.0
"""

from __future__ import annotations

from lightning_tips.checks._curves import curve_noise, flat_loss_verdict, overfitting_verdict
from lightning_tips.checks._verdicts import Verdict
from lightning_tips.checks.activations import (
    activation_findings,
    activation_stats,
    activation_verdicts,
    activations_over_time,
)
from lightning_tips.checks.batch_mixing import batch_mixing, batch_mixing_verdict
from lightning_tips.checks.data import (
    find_duplicates,
    imbalance_pvalue,
    imbalance_ratio,
    normalization_verdict,
    prior_bias_gap,
    sample_hashes,
    sampler_shuffles,
)
from lightning_tips.checks.gradients import exploding_verdict, grad_norms, layer_grad_norms, vanishing_verdict
from lightning_tips.checks.init_loss import expected_initial_loss, init_loss_verdict, reduction_verdict
from lightning_tips.checks.input_independence import (
    constant_baseline,
    input_independence,
    input_independence_verdict,
    learned_verdict,
)
from lightning_tips.checks.lr_decay import decay_verdict, optimizer_defaults_verdict, simulate_lrs
from lightning_tips.checks.missing_bias import layers_without_bias
from lightning_tips.checks.nonfinite import first_nonfinite_module, nonfinite_parameters
from lightning_tips.checks.output_activation import output_activation, output_kind
from lightning_tips.checks.overfit_batch import fit_batch, overfit_batch
from lightning_tips.fixes.clipping import clip_gradients_
from lightning_tips.fixes.forget_gate import set_forget_gate_bias_
from lightning_tips.fixes.init import init_weights_
from lightning_tips.fixes.output_bias import infer_task, init_output_bias_, target_stats
from lightning_tips.fixes.sampler import balanced_sampler, class_weights
from lightning_tips.fixes.snapshot import evaluate_snapshots
from lightning_tips.views.filters import filter_grid, first_layer_weights

__all__ = [
    "Verdict",
    "activation_findings",
    "activation_stats",
    "activation_verdicts",
    "activations_over_time",
    "balanced_sampler",
    "batch_mixing",
    "batch_mixing_verdict",
    "class_weights",
    "clip_gradients_",
    "constant_baseline",
    "curve_noise",
    "decay_verdict",
    "evaluate_snapshots",
    "expected_initial_loss",
    "exploding_verdict",
    "filter_grid",
    "find_duplicates",
    "first_layer_weights",
    "first_nonfinite_module",
    "fit_batch",
    "flat_loss_verdict",
    "grad_norms",
    "imbalance_pvalue",
    "imbalance_ratio",
    "infer_task",
    "init_loss_verdict",
    "init_output_bias_",
    "init_weights_",
    "input_independence",
    "input_independence_verdict",
    "layer_grad_norms",
    "layers_without_bias",
    "learned_verdict",
    "nonfinite_parameters",
    "normalization_verdict",
    "optimizer_defaults_verdict",
    "output_activation",
    "output_kind",
    "overfit_batch",
    "overfitting_verdict",
    "prior_bias_gap",
    "reduction_verdict",
    "sample_hashes",
    "sampler_shuffles",
    "set_forget_gate_bias_",
    "simulate_lrs",
    "target_stats",
    "vanishing_verdict",
]
