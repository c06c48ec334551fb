"""Pre-flight: no activation on the output layer before a loss that expects logits (tip P3, P13).

``F.cross_entropy`` and ``F.binary_cross_entropy_with_logits`` apply their own (log-)softmax /
sigmoid. A model that already ends in Softmax, Sigmoid or ReLU hands them probabilities or clipped
scores: the loss optimises the wrong thing and its gradients shrink. The check runs the user's own
``training_step`` once, on a copy, under a :class:`~torch.overrides.TorchFunctionMode` that records
every call to a torch loss function (``F.cross_entropy``, ``F.nll_loss``, ``F.binary_cross_entropy``,
``F.binary_cross_entropy_with_logits``, ``F.mse_loss``, …; ``nn.*Loss`` modules call these) with the
tensor fed to it, and which activation function produced that tensor. It then judges the tensor by
its values on the real batch (:func:`output_kind`) together with the producer and the model's last
module:

====================================  =========================================================
loss input → loss                     verdict
====================================  =========================================================
probabilities (Softmax) → CE / BCEwL  ``output-activation`` warning
(0, 1) (Sigmoid) → CE / BCEwL         warning (needs Sigmoid as producer or last module)
≥ 0 (ReLU family) → CE / BCEwL        warning (needs a ReLU producer/last module, or exact zeros
                                      mixed with positive values: all-zero logits are a zero head)
log-probabilities → CE                info: harmless (log_softmax is idempotent) but redundant
anything but log-probs → NLL          warning: ``nll_loss`` expects ``log_softmax`` outputs
Sigmoid → ``BCELoss``                 legitimate, silent
LogSoftmax → ``NLLLoss``              legitimate, silent
anything → MSE / L1 / Huber           silent (a ReLU/Sigmoid can fit the target's range)
====================================  =========================================================

The module also holds the tracing helpers the other model checks share: :func:`trace_training_step`
(loss, loss calls and the model's output from one ``training_step``) and
:func:`training_step_skip_reason`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_tips.checks._preflight import CardLine, CheckSkipped, PreflightCheck, Verdict, settle

# the tracing kit lives in its own module; re-exported here for the checks that imported it from here
from lightning_tips.checks._trace import (
    LOGIT_LOSSES,
    LossCall,
    StepTrace,
    eval_dropout,
    trace_training_step,
    traced_copy,
    training_step_skip_reason,
)

__all__ = [
    "LossCall",
    "OutputActivationCheck",
    "StepTrace",
    "eval_dropout",
    "output_activation",
    "output_kind",
    "trace_training_step",
    "traced_copy",
    "training_step_skip_reason",
]

_ACTIVATION_MODULES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Softmax, "softmax"), (nn.Softmax2d, "softmax"), (nn.LogSoftmax, "log_softmax"),
    (nn.Sigmoid, "sigmoid"), (nn.Hardsigmoid, "sigmoid"),
    (nn.ReLU, "relu"), (nn.ReLU6, "relu"), (nn.Softplus, "relu"),
)  # fmt: skip

Kind = Literal["probabilities", "log-probabilities", "unit-interval", "non-negative", "logits"]


def output_kind(z: torch.Tensor, class_dim: int | None = 1, tol: float = 1e-3) -> Kind:
    """What the values of a loss input look like.

    ``probabilities``: non-negative, summing to 1 along ``class_dim``; ``log-probabilities``:
    non-positive, their ``exp`` summing to 1; ``unit-interval``: all strictly in (0, 1);
    ``non-negative``: all ≥ 0; else ``logits``.

    Example:
        >>> z = torch.randn(4, 3)
        >>> output_kind(z.softmax(1)), output_kind(z.log_softmax(1)), output_kind(z.sigmoid()), output_kind(z)
        ('probabilities', 'log-probabilities', 'unit-interval', 'logits')
    """
    z = z.detach().float()
    if z.numel() == 0:
        return "logits"
    lo, hi = z.min(), z.max()
    if class_dim is not None and z.dim() > class_dim and z.shape[class_dim] > 1:
        if lo >= 0 and (z.sum(class_dim) - 1).abs().max() < tol:
            return "probabilities"
        if hi <= 0 and (z.exp().sum(class_dim) - 1).abs().max() < tol:
            return "log-probabilities"
    if lo > 0 and hi < 1:
        return "unit-interval"
    if lo >= 0:
        return "non-negative"
    return "logits"


def last_activation(model: nn.Module) -> tuple[str, str] | None:
    """``(module path, activation kind)`` when the model's last registered leaf module is an
    output activation (Softmax, LogSoftmax, Sigmoid, ReLU family), else ``None``."""
    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    if not leaves:
        return None
    name, mod = leaves[-1]
    for cls, kind in _ACTIVATION_MODULES:
        if isinstance(mod, cls):
            return name, kind
    return None


def output_activation(call: LossCall, last: tuple[str, str] | None = None) -> Verdict:
    """The ``output-activation`` verdict for one loss call (see the module docstring's table).

    Args:
        call: the recorded loss call.
        last: the model's last module if it is an activation (:func:`last_activation`).

    Example:
        >>> import torch.nn.functional as F
        >>> z, y = torch.randn(8, 3).softmax(1), torch.randint(0, 3, (8,))
        >>> call = LossCall("cross_entropy", z, y, "mean", F.cross_entropy(z, y), producer="softmax")
        >>> v = output_activation(call)
        >>> v.severity, v.message.split(":")[0]
        ('warning', 'cross_entropy is fed probabilities (rows sum to 1, produced by softmax)')
    """
    code = "output-activation"
    class_dim = 1 if call.name in ("cross_entropy", "nll_loss") else None
    kind = output_kind(call.input, class_dim)
    evidence = {call.producer} | ({last[1]} if last else set())
    evidence.discard(None)
    where = last[0] if last and last[1] in evidence else None
    z = call.input.detach().float()
    if not bool(torch.isfinite(z).all()):
        raise CheckSkipped(f"the input of {call.name} is not finite (see the nonfinite-* findings), its values say "
                           "nothing about an output activation")
    figures = {"min": float(z.min()), "max": float(z.max())} if z.numel() else {}
    zeros = float((z == 0).float().mean()) if z.numel() else 0.0
    # exact zeros are evidence of a ReLU only mixed with positive values: a zero-initialised head (all
    # logits exactly 0, e.g. torchvision's ViT) gives nothing but zeros
    relu_values = zeros > 0.05 and figures.get("max", 0.0) > 0
    source = f", produced by {call.producer}" if call.producer else (f", model ends in {last[1]} ({last[0]})" if last else "")
    if call.name in LOGIT_LOSSES:
        described = None
        if kind == "probabilities":
            described = "probabilities (rows sum to 1"
        elif kind == "unit-interval" and "sigmoid" in evidence:
            described = "values in (0, 1) (sigmoid outputs"
        elif kind in ("non-negative", "unit-interval", "probabilities") and ("relu" in evidence or relu_values):
            described = f"non-negative scores ({zeros:.0%} exactly zero"
        elif kind == "log-probabilities" and call.name == "cross_entropy":
            return Verdict(
                code, "info",
                f"cross_entropy is fed log-probabilities (log_softmax before the loss{source}): harmless, "
                "log_softmax is idempotent, but redundant",
                figures, where, "drop the log_softmax, or use nll_loss with it (P3)",
            )
        if described is not None:
            return Verdict(
                code, "warning",
                f"{call.name} is fed {described}{source}): it expects raw logits and applies its own "
                f"{'softmax' if call.name == 'cross_entropy' else 'sigmoid'}; figures min {figures['min']:.3g}, "
                f"max {figures['max']:.3g}",
                figures, where,
            )
        return Verdict(code, None, f"{call.name} is fed logits")
    if call.name == "nll_loss" and kind != "log-probabilities":
        return Verdict(
            code, "warning",
            f"nll_loss is fed {kind.replace('-', ' ')}{source}: it expects log-probabilities (log_softmax outputs); "
            f"figures min {figures.get('min', 0.0):.3g}, max {figures.get('max', 0.0):.3g}",
            figures, where,
            "end the model in log_softmax for nll_loss, or feed raw logits to cross_entropy (P3, P13)",
        )
    return Verdict(code, None, f"{call.name} is fed {kind.replace('-', ' ')} (fine for it)")


class OutputActivationCheck(PreflightCheck):
    """Pre-flight check ``output-activation`` (tips P3, P13): Softmax / Sigmoid / ReLU on the output
    feeding ``cross_entropy`` or ``binary_cross_entropy_with_logits``, or ``nll_loss`` fed anything
    but log-probabilities. Runs the user's ``training_step`` once on a copy, records the loss calls
    and judges the tensor fed to each (see the module docstring's table). Sigmoid → ``BCELoss`` and
    LogSoftmax → ``NLLLoss`` are legitimate and stay silent; LogSoftmax → cross-entropy is an
    ``info`` (harmless, redundant).

    Args:
        budget_s: the safety net, in seconds, when this check runs alone (the work is planned in steps and samples).

    Example:
        >>> import torch.nn.functional as F
        >>> z, y = torch.randn(16, 4), torch.randint(0, 4, (16,))
        >>> call = LossCall("cross_entropy", z.relu(), y, "mean", F.cross_entropy(z.relu(), y), producer="relu")
        >>> output_activation(call).severity
        'warning'
        >>> output_activation(LossCall("cross_entropy", z, y, "mean", F.cross_entropy(z, y))).severity is None
        True
    """

    title: ClassVar[str] = "output activation"
    code: ClassVar[str] = "output-activation"

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CardLine:
        return settle(self, trainer, lambda: self._measure(pl_module, batch))

    def _measure(self, pl_module: pl.LightningModule, batch: Any) -> tuple[list[Verdict], str]:
        copy, trace = traced_copy(pl_module, batch, dropout=True)
        if not trace.calls:
            raise CheckSkipped("training_step called no torch loss function (cross_entropy, nll_loss, BCE, mse_loss, "
                               "…), so what the loss expects is unknown")
        last = last_activation(copy)
        verdicts = [output_activation(c, last) for c in trace.calls]
        flagged = [v for v in verdicts if v.severity is not None]
        shown = flagged[0] if flagged else verdicts[0]
        return flagged, shown.message
