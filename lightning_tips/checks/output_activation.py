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

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_tips._utils import find_output_layer, first_tensor, model_copy, step_loss
from lightning_tips.checks._preflight import CardLine, CheckSkipped, PreflightCheck, Verdict, settle

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

# the torch loss functions the pre-flight checks understand (nn.*Loss modules call these)
LOSS_FUNCTIONS: dict[Callable[..., Any], str] = {
    F.cross_entropy: "cross_entropy",
    F.nll_loss: "nll_loss",
    F.binary_cross_entropy: "binary_cross_entropy",
    F.binary_cross_entropy_with_logits: "binary_cross_entropy_with_logits",
    F.mse_loss: "mse_loss",
    F.l1_loss: "l1_loss",
    F.smooth_l1_loss: "smooth_l1_loss",
    F.huber_loss: "huber_loss",
}
LOGIT_LOSSES = ("cross_entropy", "binary_cross_entropy_with_logits")

# activation functions whose output may feed a loss (nn.Softmax → F.softmax, nn.Sigmoid → torch.sigmoid, …)
_ACTIVATIONS: dict[Any, str] = {}
for _fn, _name in (
    (F.softmax, "softmax"), (torch.softmax, "softmax"), (torch.Tensor.softmax, "softmax"),
    (F.log_softmax, "log_softmax"), (torch.log_softmax, "log_softmax"), (torch.Tensor.log_softmax, "log_softmax"),
    (torch.sigmoid, "sigmoid"), (F.sigmoid, "sigmoid"), (torch.Tensor.sigmoid, "sigmoid"),
    (F.hardsigmoid, "sigmoid"),
    (F.relu, "relu"), (torch.relu, "relu"), (torch.Tensor.relu, "relu"), (F.relu6, "relu"),
    (F.softplus, "relu"),
):  # fmt: skip
    _ACTIVATIONS[_fn] = _name
_ACTIVATION_MODULES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Softmax, "softmax"), (nn.Softmax2d, "softmax"), (nn.LogSoftmax, "log_softmax"),
    (nn.Sigmoid, "sigmoid"), (nn.Hardsigmoid, "sigmoid"),
    (nn.ReLU, "relu"), (nn.ReLU6, "relu"), (nn.Softplus, "relu"),
)  # fmt: skip

Kind = Literal["probabilities", "log-probabilities", "unit-interval", "non-negative", "logits"]


@dataclass
class LossCall:
    """One call of a torch loss function during ``training_step``: what was fed to it."""

    name: str
    input: torch.Tensor  # detached
    target: torch.Tensor | None  # detached
    reduction: str
    value: torch.Tensor  # detached result
    producer: str | None = None  # the activation function that produced ``input``, if any


@dataclass
class StepTrace:
    """What one ``training_step`` did: its loss (or why there is none), the loss calls, the model's output."""

    loss: torch.Tensor | str
    calls: list[LossCall] = field(default_factory=list)
    output: torch.Tensor | None = None  # the module's forward output (first tensor), with its graph


def _storage(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().data_ptr())
    except Exception:  # tensors without storage (e.g. some wrapper subclasses)
        return -1


class _Recorder(TorchFunctionMode):
    """Records loss-function calls and which activation produced each tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[LossCall] = []
        self._produced: dict[int, str] = {}
        self._alive: list[torch.Tensor] = []  # keeps recorded storages from being reused during the step

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        act = _ACTIVATIONS.get(func)
        if act is not None and isinstance(out, torch.Tensor):
            self._produced[_storage(out)] = act
            self._alive.append(out)
        name = LOSS_FUNCTIONS.get(func)
        if name is not None and isinstance(out, torch.Tensor):
            try:
                bound = inspect.signature(func).bind(*args, **kwargs).arguments
            except TypeError:
                bound = {}
            inp, tgt = bound.get("input"), bound.get("target")
            if isinstance(inp, torch.Tensor):
                self.calls.append(LossCall(
                    name, inp.detach(), tgt.detach() if isinstance(tgt, torch.Tensor) else None,
                    str(bound.get("reduction", "mean")), out.detach(), self._produced.get(_storage(inp)),
                ))
        return out


def eval_dropout(model: nn.Module) -> nn.Module:
    """Put every dropout module of ``model`` (a copy) in eval mode, leaving the rest as it is; returns it."""
    for m in model.modules():
        if isinstance(m, (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)):
            m.eval()
    return model


def training_step_skip_reason(pl_module: pl.LightningModule) -> str | None:
    """Why the module's ``training_step`` cannot be re-run on a copy, or ``None``."""
    if not getattr(pl_module, "automatic_optimization", True):
        return "manual optimization: training_step steps the optimizer itself, so it is not re-run on a copy"
    return None


def traced_copy(pl_module: pl.LightningModule, batch: Any, dropout: bool) -> tuple[pl.LightningModule, StepTrace]:
    """A copy of the module (dropout in eval mode unless ``dropout``) and the trace of its
    ``training_step`` on ``batch`` under ``no_grad``; :class:`CheckSkipped` when it cannot run."""
    reason = training_step_skip_reason(pl_module)
    if reason:
        raise CheckSkipped(reason)
    copy = model_copy(pl_module)
    if not dropout:
        copy = eval_dropout(copy)
    assert isinstance(copy, pl.LightningModule)
    with torch.no_grad():
        trace = trace_training_step(copy, batch)
    if isinstance(trace.loss, str):
        raise CheckSkipped(trace.loss)
    return copy, trace


def trace_training_step(module: nn.Module, batch: Any, batch_idx: int = 0) -> StepTrace:
    """Run ``module``'s own ``training_step`` on ``batch`` (pass a copy), recording the torch loss
    calls and the output of the module's forward (or of its output layer when ``training_step``
    calls a submodule directly). Grad mode is left as the caller set it.
    """
    outputs: list[Any] = []
    layer_outputs: list[Any] = []
    handles = [module.register_forward_hook(lambda _m, _i, out: outputs.append(out))]
    layer = find_output_layer(module)
    if layer is not None:
        handles.append(layer[1].register_forward_hook(lambda _m, _i, out: layer_outputs.append(out)))
    recorder = _Recorder()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with recorder:
                if isinstance(module, pl.LightningModule):
                    loss: torch.Tensor | str = step_loss(module, batch, batch_idx)
                else:
                    raise TypeError(f"Expected a LightningModule but got {type(module).__name__}.")
    finally:
        for h in handles:
            h.remove()
    output = first_tensor(outputs[-1]) if outputs else first_tensor(layer_outputs[-1]) if layer_outputs else None
    return StepTrace(loss, recorder.calls, output)


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
        budget_s: the pre-flight time budget when this check runs alone.

    Example:
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
