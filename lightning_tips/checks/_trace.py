"""The tracing kit of the pre-flight checks: re-run the user's own ``training_step`` on a copy of the
model and record what it did — the loss calls (which torch loss, fed what, produced by which
activation), the module's output and the loss. Used by the initial-loss, output-activation,
batch-mixing, input-independence and overfit-one-batch checks.

Example:
    >>> import torch
    >>> from torch import nn
    >>> import lightning.pytorch as pl
    >>> class M(pl.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
    ...     def training_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         return nn.functional.cross_entropy(self.net(x), y)
    >>> trace = trace_training_step(M(), (torch.randn(8, 4), torch.randint(0, 3, (8,))))
    >>> [(c.name, c.producer, c.reduction) for c in trace.calls]
    [('cross_entropy', 'softmax', 'mean')]
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_tips._utils import find_output_layer, first_tensor, model_copy, step_loss
from lightning_tips.checks._preflight import CheckSkipped

__all__ = [
    "LOGIT_LOSSES",
    "LOSS_FUNCTIONS",
    "LossCall",
    "StepTrace",
    "eval_dropout",
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


class _LossRecorder(TorchFunctionMode):
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
    recorder = _LossRecorder()
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
