"""Pre-flight: one small batch must be overfittable (tips R2.8, P9, T10).

On a copy of the model, with a fresh optimizer of the user's type and learning rate, the user's own
``training_step`` is fitted to the first ``max_batch`` samples of one batch for ``steps`` steps.
A model, loss and optimizer that are wired correctly drive that loss down fast; when
``final / initial > 0.5`` the check reports ``not-learning`` (warning) with the figures, and names
the likely cause: a loss that does not require grad (a detached output), no parameter that changed
(learning rate 0, everything frozen), or simply a loss that does not fall.

The module also holds the helpers shared with the input-independence check:
:func:`fresh_optimizer` (the user's optimizer rebuilt on a copy) and :func:`fit_batch` (a bounded
training loop on one batch).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_tips._utils import apply_to_tensors, batch_size, model_copy, step_loss
from lightning_tips._validate import check_int
from lightning_tips.checks._preflight import CardLine, CheckSkipped, PreflightCheck, Verdict, settle
from lightning_tips.checks.output_activation import eval_dropout, training_step_skip_reason

__all__ = ["OverfitBatchCheck", "fit_batch", "fresh_optimizer", "optimizer_factory", "overfit_batch"]

OVERFIT_RATIO = 0.5

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


def fresh_optimizer(optimizer: torch.optim.Optimizer, source: nn.Module, target: nn.Module) -> torch.optim.Optimizer:
    """A new optimizer of ``optimizer``'s type over ``target``'s parameters (a copy of ``source``),
    with the same param groups and hyper-parameters and each group's base learning rate
    (``initial_lr`` when a scheduler set one, else ``lr``). No state is copied.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
        >>> new = fresh_optimizer(opt, net, model_copy(net))
        >>> type(new).__name__, new.param_groups[0]["lr"], new.param_groups[0]["momentum"]
        ('SGD', 0.5, 0.9)
    """
    names = {id(p): n for n, p in source.named_parameters()}
    params = dict(target.named_parameters())
    accepted = set(inspect.signature(type(optimizer).__init__).parameters) - {"self", "params"}
    groups: list[dict[str, Any]] = []
    for g in optimizer.param_groups:
        ps = [params[names[id(p)]] for p in g["params"] if id(p) in names and names[id(p)] in params]
        opts = {k: v for k, v in g.items() if k in accepted}
        if "initial_lr" in g and "lr" in accepted:
            opts["lr"] = g["initial_lr"]
        if ps:
            groups.append({"params": ps, **opts})
    if not groups:
        raise CheckSkipped("the optimizer holds none of the model's parameters (no optimizer configured?)")
    return type(optimizer)(groups)  # type: ignore[call-arg]


def optimizer_factory(trainer: pl.Trainer, pl_module: pl.LightningModule) -> OptimizerFactory:
    """``copy -> fresh optimizer`` rebuilding the Trainer's single optimizer on a copy of ``pl_module``.

    Raises:
        CheckSkipped: manual optimization, or not exactly one optimizer.
    """
    reason = training_step_skip_reason(pl_module)
    if reason:
        raise CheckSkipped(reason)
    optimizers = list(trainer.optimizers)
    if len(optimizers) != 1:
        raise CheckSkipped(f"needs exactly one optimizer, the Trainer has {len(optimizers)}")
    return lambda copy: fresh_optimizer(optimizers[0], pl_module, copy)


def _lr(opt: torch.optim.Optimizer) -> float:
    return float(opt.param_groups[0].get("lr", float("nan")))


def fit_batch(
    model: nn.Module,
    batch: Any,
    optimizer: torch.optim.Optimizer,
    steps: int,
    deadline: float | None = None,
) -> dict[str, float]:
    """Fit ``model`` (a LightningModule copy) to ``batch`` with its own ``training_step`` for at most
    ``steps`` optimizer steps (fewer once ``time.perf_counter()`` passes ``deadline``).

    Returns ``{"start", "end", "steps", "changed", "requires_grad"}``: the loss before the first step
    and after the last (``end`` evaluated without grad), the steps taken, whether any parameter
    changed, and whether the loss required grad at all (if not, nothing was stepped). One host sync.

    Raises:
        CheckSkipped: ``training_step`` returned no loss tensor.
    """
    if not isinstance(model, pl.LightningModule):
        raise TypeError(f"Expected a LightningModule but got {type(model).__name__}.")
    before = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]
    losses: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = step_loss(model, batch)
        if isinstance(loss, str):
            raise CheckSkipped(loss)
        losses.append(loss.detach().float())
        if loss.requires_grad:
            loss.backward()
        return loss

    taken = 0
    with torch.enable_grad():
        first = closure()
        if not first.requires_grad:
            return {"start": float(first), "end": float(first), "steps": 0.0, "changed": 0.0, "requires_grad": 0.0}
        optimizer.step()
        taken = 1
        while taken < steps and (deadline is None or time.perf_counter() < deadline):
            optimizer.step(closure)  # type: ignore[arg-type]
            taken += 1
    with torch.no_grad():
        end = step_loss(model, batch)
    assert isinstance(end, torch.Tensor)
    after = [p.detach() for g in optimizer.param_groups for p in g["params"]]
    changed = torch.stack([(a != b).any() for a, b in zip(after, before)]).any() if after else torch.tensor(False)
    start_v, end_v, changed_v = torch.stack([losses[0], end.detach().float(), changed.float()]).tolist()
    return {"start": start_v, "end": end_v, "steps": float(taken), "changed": changed_v, "requires_grad": 1.0}


def overfit_batch(
    module: pl.LightningModule,
    batch: Any,
    make_optimizer: OptimizerFactory,
    steps: int = 50,
    max_batch: int = 16,
    deadline: float | None = None,
) -> dict[str, float]:
    """Fit a copy of ``module`` (dropout off) to the first ``max_batch`` samples of ``batch``; the
    figures of :func:`fit_batch` plus ``lr``, ``samples`` and ``ratio = end / start``."""
    n = batch_size(batch) or 0
    k = min(n, max_batch)
    small = apply_to_tensors(batch, lambda t: t[:k] if t.dim() > 0 and t.shape[0] == n else t)
    copy = eval_dropout(model_copy(module))
    assert isinstance(copy, pl.LightningModule)
    opt = make_optimizer(copy)
    fig = fit_batch(copy, small, opt, steps, deadline)
    fig["lr"] = _lr(opt)
    fig["samples"] = float(k)
    fig["ratio"] = fig["end"] / fig["start"] if fig["start"] > 0 else float("nan")
    return fig


def overfit_verdict(fig: dict[str, float], steps: int, ratio: float = OVERFIT_RATIO) -> Verdict:
    """``not-learning`` when ``end / start > ratio``, with the cause when it is visible.

    Example:
        >>> overfit_verdict({"start": 2.3, "end": 2.2, "steps": 50, "changed": 1, "requires_grad": 1,
        ...                  "lr": 1e-3, "samples": 16, "ratio": 2.2 / 2.3}, 50).severity
        'warning'
    """
    code = "not-learning"
    start, end, taken = fig["start"], fig["end"], int(fig["steps"])
    text = f"loss {start:.4g} -> {end:.4g} in {taken} steps on {int(fig['samples'])} samples (lr {fig['lr']:.3g})"
    figures = dict(fig)
    if not fig["requires_grad"]:
        return Verdict(code, "warning", f"overfit one batch: the loss {start:.4g} does not require grad: the output "
                       "is detached from the parameters (a .detach(), .item(), torch.no_grad() or .data in the "
                       "forward/loss) or every parameter is frozen", figures)
    if not fig["changed"]:
        return Verdict(code, "warning", f"overfit one batch: {text}: no parameter changed — the learning rate is "
                       "0, the parameters are frozen, or the optimizer holds other parameters", figures)
    if start <= 1e-8:
        raise CheckSkipped(f"the loss is already {start:.3g} before training")
    if not math.isfinite(end) or fig["ratio"] > ratio:
        cut = f" (stopped by the time budget after {taken} of {steps})" if taken < steps else ""
        if taken < steps and math.isfinite(end):
            raise CheckSkipped(f"only {taken} of {steps} steps fit in the pre-flight budget{cut}; {text}; "
                               "raise `budget_s` to judge it")
        return Verdict(code, "warning", f"overfit one batch: {text}: ratio {fig['ratio']:.2f} > {ratio}: the model "
                       "cannot fit even this small batch", figures)
    return Verdict(code, None, f"{text}: ratio {fig['ratio']:.2f}", figures)


class OverfitBatchCheck(PreflightCheck):
    """Pre-flight check ``not-learning`` by overfitting one batch (tips R2.8, P9, T10).

    On a copy with a fresh optimizer of the user's type and learning rate (dropout off), the user's
    ``training_step`` is fitted to ``max_batch`` samples for ``steps`` steps; flagged when
    ``final / initial loss > 0.5``, or when the loss does not require grad / no parameter changed.
    Skipped (``info``) with manual optimization or several optimizers.

    Args:
        steps: optimizer steps on the batch.
        max_batch: samples of the first batch to fit.
        budget_s: the pre-flight time budget when this check runs alone.

    Example:
        >>> OverfitBatchCheck(steps=50, max_batch=16).code
        'not-learning'
    """

    title: ClassVar[str] = "overfit one batch"
    code: ClassVar[str] = "not-learning"

    def __init__(self, steps: int = 50, max_batch: int = 16, budget_s: float = 3.0) -> None:
        super().__init__(budget_s=budget_s)
        check_int("steps", steps, low=1)
        check_int("max_batch", max_batch, low=1)
        self.steps = steps
        self.max_batch = max_batch

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CardLine:
        def measure() -> tuple[list[Verdict], str]:
            fig = overfit_batch(pl_module, batch, optimizer_factory(trainer, pl_module), self.steps,
                                self.max_batch, self._deadline)
            v = overfit_verdict(fig, self.steps)
            detail = (f"loss {fig['start']:.3g} -> {fig['end']:.3g} in {int(fig['steps'])} steps "
                      f"(ratio {fig['ratio']:.2f})")
            return [v], detail

        return settle(self, trainer, measure)
