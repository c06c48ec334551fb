"""Pre-flight: one small batch must be overfittable (tips R2.8, P9, T10).

On a copy of the model, with a fresh optimizer of the user's type and hyper-parameters, the user's
own ``training_step`` is fitted to the first ``max_batch`` samples of one batch for ``steps`` steps.
The lr is one the user's schedule actually reaches: each param group's peak over the first planned
steps (at most 2000) of its schedulers, replayed on copies (a OneCycle run starts at ``max_lr / 25``;
fitting at that lr would judge an lr the run barely uses); the base lr without a scheduler.

The measurement is deterministic (one fixed batch, dropout off, full-batch steps), so its only noise
is the model's own; the thresholds are wide: ``final / initial <= 0.5`` passes; a ratio in
``(0.5, 0.9]`` is ``info`` ("learns, slowly": material only if the real run is slow too, which
``not-learning``'s runtime part judges); ``> 0.9`` (the loss does not move or rises), a loss that
does not require grad (a detached output) or no parameter that changed (lr 0, everything frozen) is a
``not-learning`` warning. A non-finite loss *before* any step is a consequence of non-finite inputs
or weights (their own findings): skipped.

When the loss does not fall for a reason the runtime names itself, the copy's verdict is evidence of
that root cause (an ``info`` naming it), not a ``not-learning`` warning of its own (one root cause,
one warning; the runtime guard warns first):

- the loss went non-finite: the lr is too high, or the backward made non-finite gradients (measured
  at the first backward) — ``nonfinite-loss`` / ``nonfinite-gradient`` / ``exploding-gradient``;
- the copy trained at an lr above its optimizer family's usual range (``LRDecayGuard``'s ranges,
  R3.2) — ``exploding-gradient`` names the lr;
- the first-to-last layer gradient-norm ratio is below ``vanishing-gradient``'s threshold (1e-4)
  at the first *and* the last backward of the copy — ``vanishing-gradient``.

The module also holds the helpers shared with the input-independence check:
:func:`fresh_optimizer` (the user's optimizer rebuilt on a copy) and :func:`fit_batch` (a bounded
training loop on one batch).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_tips._utils import apply_to_tensors, batch_size, model_copy, step_loss
from lightning_tips._validate import check_int
from lightning_tips.checks._preflight import DEFAULT_BUDGET_S, CardLine, CheckSkipped, PreflightCheck, Verdict, settle
from lightning_tips.checks.gradients import MIN_RATIO, grad_norms, layer_grad_norms, vanishing_verdict
from lightning_tips.checks.lr_decay import Schedule, optimizer_defaults_verdict, simulate_lrs, unsimulatable_reason
from lightning_tips.checks.output_activation import eval_dropout, training_step_skip_reason

__all__ = ["OverfitBatchCheck", "fit_batch", "fresh_optimizer", "optimizer_factory", "overfit_batch"]

OVERFIT_RATIO = 0.5  # end/start at or below: the batch is being fitted (pass)
SLOW_RATIO = 0.9  # end/start above: the loss does not move (warning); in between: "learns, slowly" (info)

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


PEAK_HORIZON = 2000  # optimizer steps of the user's schedule replayed to find the lr it reaches


def schedule_peak_lrs(trainer: pl.Trainer, optimizer: torch.optim.Optimizer,
                      pl_module: pl.LightningModule | None = None) -> list[float] | None:
    """The largest lr of each param group over the first planned steps (at most ``PEAK_HORIZON``) of the
    user's lr schedulers, replayed on copies (:func:`~lightning_tips.checks.lr_decay.simulate_lrs`);
    ``None`` when the optimizer has no scheduler or its schedule cannot be replayed.

    A OneCycle schedule starts at ``max_lr / 25``: fitting one batch at that lr says little about
    whether the model can learn at the lr the run actually trains with.
    """
    schedules: list[Schedule] = []
    for config in getattr(trainer, "lr_scheduler_configs", None) or []:
        sched = config.scheduler
        if getattr(sched, "optimizer", None) is not optimizer:
            continue
        if unsimulatable_reason(sched) is not None:
            return None
        schedules.append((sched, config.interval, int(config.frequency)))
    if not schedules:
        return None
    try:
        planned = float(trainer.estimated_stepping_batches)
        horizon = int(min(planned, PEAK_HORIZON)) if math.isfinite(planned) and planned >= 1 else PEAK_HORIZON
        lrs = simulate_lrs(optimizer, schedules, horizon, float(trainer.num_training_batches),
                           int(trainer.accumulate_grad_batches), keep=(pl_module, trainer))
    except Exception:  # any user scheduler may fail on a copy: fall back to the base lr
        return None
    if not lrs:
        return None
    return [max(row[g] for row in lrs) for g in range(len(lrs[0]))]


def optimizer_factory(trainer: pl.Trainer, pl_module: pl.LightningModule) -> OptimizerFactory:
    """``copy -> fresh optimizer`` rebuilding the Trainer's single optimizer on a copy of ``pl_module``,
    each param group at the peak lr its scheduler reaches (:func:`schedule_peak_lrs`; the base lr when
    there is no scheduler).

    Raises:
        CheckSkipped: manual optimization, or not exactly one optimizer.
    """
    reason = training_step_skip_reason(pl_module)
    if reason:
        raise CheckSkipped(reason)
    optimizers = list(trainer.optimizers)
    if len(optimizers) != 1:
        raise CheckSkipped(f"needs exactly one optimizer, the Trainer has {len(optimizers)}")
    return _Factory(optimizers[0], pl_module, schedule_peak_lrs(trainer, optimizers[0], pl_module))


class _Factory:
    """``copy -> fresh optimizer`` at the schedule's peak lrs (``peaks``) when known."""

    def __init__(self, optimizer: torch.optim.Optimizer, source: nn.Module, peaks: list[float] | None) -> None:
        self.optimizer, self.source = optimizer, source
        self.peaks = peaks if peaks is not None and len(peaks) == len(optimizer.param_groups) else None

    def __call__(self, copy: nn.Module) -> torch.optim.Optimizer:
        opt = fresh_optimizer(self.optimizer, self.source, copy)
        if self.peaks is not None and len(self.peaks) == len(opt.param_groups):
            for g, lr in zip(opt.param_groups, self.peaks):
                if isinstance(g["lr"], torch.Tensor):
                    g["lr"].fill_(lr)
                else:
                    g["lr"] = lr
        return opt


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
    changed, and whether the loss required grad at all (if not, nothing was stepped); plus the
    first-to-last layer gradient-norm ratio (weights only, as ``vanishing-gradient`` measures it) at
    the first and the last backward, ``grad_ratio_first`` / ``grad_ratio_last`` (NaN when it cannot be
    judged: one layer, a zero last-layer norm), and ``grads_finite_first`` (whether the first
    backward's gradients were all finite). Three host syncs.

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
        grads_first = _grad_ratio(model)
        optimizer.step()
        taken = 1
        while taken < steps and (deadline is None or time.perf_counter() < deadline):
            optimizer.step(closure)  # type: ignore[arg-type]
            taken += 1
        grads_last = _grad_ratio(model)  # the last closure's gradients (before its step)
    with torch.no_grad():
        end = step_loss(model, batch)
    assert isinstance(end, torch.Tensor)
    after = [p.detach() for g in optimizer.param_groups for p in g["params"]]
    changed = torch.stack([(a != b).any() for a, b in zip(after, before)]).any() if after else torch.tensor(False)
    start_v, end_v, changed_v = torch.stack([losses[0], end.detach().float(), changed.float()]).tolist()
    return {"start": start_v, "end": end_v, "steps": float(taken), "changed": changed_v, "requires_grad": 1.0,
            "grad_ratio_first": grads_first[0], "grad_ratio_last": grads_last[0],
            "grads_finite_first": grads_first[1]}


def _grad_ratio(model: nn.Module) -> tuple[float, float]:
    """``(first-to-last layer gradient-norm ratio, all finite)`` of the gradients ``model`` holds: the
    ratio as :func:`~lightning_tips.checks.gradients.vanishing_verdict` computes it, NaN when it
    cannot be judged (fewer than two layers with a gradient, a zero last-layer norm, non-finite norms)."""
    names, norms_t = layer_grad_norms(model)
    grads = [p.grad for p in model.parameters() if p.grad is not None]  # every parameter, biases and gains too
    total = grad_norms(grads).square().sum() if grads else torch.zeros(())
    *norms, total_v = torch.cat([norms_t.float().flatten().cpu(), total.float().reshape(1).cpu()]).tolist()
    finite = float(math.isfinite(total_v) and all(math.isfinite(n) for n in norms))
    if len(norms) < 2 or not finite or norms[-1] <= 0:
        return math.nan, finite
    v = vanishing_verdict(names, norms, min_ratio=MIN_RATIO)
    return (v.figures["ratio"] if v is not None else norms[0] / norms[-1]), finite


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
    bad = optimizer_defaults_verdict(opt)  # the lr the copy trains at vs its family's usual range (R3.2)
    fig = fit_batch(copy, small, opt, steps, deadline)
    fig["lr"] = _lr(opt)
    # the top of the family's usual range when the copy's lr is above it, else NaN
    fig["lr_range_high"] = (
        bad.figures["high"] if bad is not None and bad.figures["lr"] > bad.figures["high"] else math.nan
    )
    fig["scheduled"] = float(getattr(make_optimizer, "peaks", None) is not None)
    fig["samples"] = float(k)
    fig["ratio"] = fig["end"] / fig["start"] if fig["start"] > 0 else float("nan")
    return fig


def overfit_verdict(fig: dict[str, float], steps: int, ratio: float = OVERFIT_RATIO,
                    slow_ratio: float = SLOW_RATIO) -> Verdict:
    """``not-learning`` from :func:`overfit_batch`'s figures: a warning when the loss does not require grad,
    no parameter changed, or ``end / start > slow_ratio`` (it does not move or rises); ``info`` ("learns,
    slowly") when ``ratio < end / start <= slow_ratio``. When the figures name a root cause the runtime
    reports itself — a loss gone non-finite, an lr above the optimizer family's usual range
    (``lr_range_high``), gradients vanishing at the first and the last backward (``grad_ratio_first`` /
    ``grad_ratio_last`` < 1e-4) — the verdict is an ``info`` naming it, not a warning (:func:`_known_cause`).

    Example:
        >>> fig = {"start": 2.3, "end": 2.2, "steps": 50, "changed": 1, "requires_grad": 1, "lr": 1e-3,
        ...        "samples": 16, "ratio": 2.2 / 2.3}
        >>> overfit_verdict(fig, 50).severity, overfit_verdict({**fig, "end": 1.5, "ratio": 1.5 / 2.3}, 50).severity
        ('warning', 'info')
    """
    code = "not-learning"
    start, end, taken = fig["start"], fig["end"], int(fig["steps"])
    at = "the schedule's peak lr" if fig.get("scheduled") else "lr"
    text = f"loss {start:.4g} -> {end:.4g} in {taken} steps on {int(fig['samples'])} samples ({at} {fig['lr']:.3g})"
    figures = dict(fig)
    if not math.isfinite(start):
        raise CheckSkipped(f"the initial loss is {start} before any step: non-finite inputs, targets or weights "
                           "(see the nonfinite-* findings) — nothing to judge until they are fixed")
    if not fig["requires_grad"]:
        return Verdict(code, "warning", f"overfit one batch: the loss {start:.4g} does not require grad: the output "
                       "is detached from the parameters (a .detach(), .item(), torch.no_grad() or .data in the "
                       "forward/loss) or every parameter is frozen", figures)
    if not fig["changed"]:
        return Verdict(code, "warning", f"overfit one batch: {text}: no parameter changed — the learning rate is "
                       "0, the parameters are frozen, or the optimizer holds other parameters", figures)
    if start <= 1e-8:
        raise CheckSkipped(f"the loss is already {start:.3g} before training")
    if not math.isfinite(end):
        return Verdict(code, "info", f"overfit one batch: {text}: the loss went {end}, "
                       f"{_nonfinite_cause(fig)}", figures, advice="fix the root cause first")
    r = fig["ratio"]
    if r <= ratio:
        return Verdict(code, None, f"{text}: ratio {r:.2f}", figures)
    if taken < steps:
        raise CheckSkipped(f"only {taken} of {steps} steps fit in the pre-flight budget; {text}; raise the "
                           "pre-flight budget (`preflight_budget_s` of Recipe, `budget_s` of Preflight) to judge it")
    if r <= slow_ratio:
        return Verdict(code, "info", f"overfit one batch: {text}: ratio {r:.2f}, it learns, slowly (a well-wired "
                       f"model usually halves the loss of {int(fig['samples'])} samples in {steps} steps)", figures,
                       advice="if the real run also learns slowly: raise the lr (P10) or check the init (T9)")
    moved = "rises" if r > 1 else "barely moves"
    message = f"overfit one batch: {text}: ratio {r:.2f} > {slow_ratio}: the loss {moved}"
    cause = _known_cause(fig)
    if cause:
        return Verdict(code, "info", f"{message}; {cause}", figures, advice="fix the root cause first")
    return Verdict(code, "warning", f"{message}, the model cannot fit even this small batch", figures)


def _lr_note(fig: dict[str, float]) -> str:
    """``"lr X is Nx the top of the usual range (H)"`` when the copy's lr is above its optimizer
    family's usual range (R3.2), else ``""``."""
    high = fig.get("lr_range_high", math.nan)
    if not math.isfinite(high) or high <= 0:
        return ""
    return f"lr {fig['lr']:.3g} is {fig['lr'] / high:.3g}x the top of this optimizer's usual range ({high:g})"


def _nonfinite_cause(fig: dict[str, float]) -> str:
    """The likely root cause of a copy whose loss went non-finite: evidence for the runtime's
    ``nonfinite-*`` / ``exploding-gradient`` findings, not a ``not-learning`` verdict of its own."""
    if not fig.get("grads_finite_first", 1.0):
        return ("yet the first backward already made non-finite gradients from a finite loss: the likely root "
                "cause is the backward (a custom backward, sqrt/norm at 0, an overflow; see nonfinite-gradient)")
    lr = _lr_note(fig)
    if lr:
        return f"the likely root cause is the learning rate: {lr} (see exploding-gradient / nonfinite-loss)"
    return (f"the likely root cause is the learning rate ({fig['lr']:.3g}, too high for this model) or an op "
            "that overflows (see nonfinite-loss / exploding-gradient)")


def _known_cause(fig: dict[str, float]) -> str:
    """The root cause the runtime reports itself when the copy's loss does not move, or ``""``: an lr
    above the usual range (``exploding-gradient`` names it), gradients vanishing at the first and the
    last backward (``vanishing-gradient``)."""
    lr = _lr_note(fig)
    if lr:
        return f"a consequence: the likely root cause is the learning rate, {lr} (see exploding-gradient)"
    first, last = fig.get("grad_ratio_first", math.nan), fig.get("grad_ratio_last", math.nan)
    if first < MIN_RATIO and last < MIN_RATIO:
        return (f"a consequence: the gradients vanish — the first layer gets {first:.2g}x the last layer's gradient "
                f"norm at the first backward, {last:.2g}x at the last (threshold {MIN_RATIO:g}; see vanishing-gradient)")
    return ""


def _root_cause(verdict: Verdict, pl_module: pl.LightningModule, batch: Any) -> Verdict:
    """A loss that barely moves because the output does not depend on the input at all (a forward that
    ignores it, every unit dead) is a consequence: ``info`` pointing at the root cause, not a second warning."""
    from lightning_tips.checks.input_independence import input_independence

    try:
        fig = input_independence(pl_module, batch)
    except Exception:  # the root-cause probe is best effort; the verdict stands
        return verdict
    if fig["ignores_input"]:
        cause = "the forward ignores its input (see input-independent, the root cause)"
    elif fig["explained"] == "dead":
        cause = f"every unit of `{fig['layer']}` outputs 0, so the output is constant (see dead-activation)"
    else:
        return verdict
    return replace(verdict, severity="info", message=f"{verdict.message}; a consequence: {cause}",
                   advice="fix the root cause first")


class OverfitBatchCheck(PreflightCheck):
    """Pre-flight check ``not-learning`` by overfitting one batch (tips R2.8, P9, T10).

    On a copy with a fresh optimizer of the user's type and learning rate (dropout off), the user's
    ``training_step`` is fitted to ``max_batch`` samples for ``steps`` steps; flagged when
    ``final / initial loss > 0.9`` (info "learns, slowly" above 0.5), or when the loss does not require grad /
    no parameter changed; the lr is the peak its scheduler reaches. A loss gone non-finite, an lr above
    the optimizer's usual range or vanishing gradients are an ``info`` naming that root cause (the
    runtime guards warn about it).
    Skipped (``info``) with manual optimization or several optimizers.

    Args:
        steps: optimizer steps on the batch.
        max_batch: samples of the first batch to fit.
        budget_s: the safety net, in seconds, when this check runs alone (the work is planned in steps and samples).

    Example:
        >>> OverfitBatchCheck(steps=50, max_batch=16).code
        'not-learning'
    """

    title: ClassVar[str] = "overfit one batch"
    code: ClassVar[str] = "not-learning"

    def __init__(self, steps: int = 50, max_batch: int = 16, budget_s: float = DEFAULT_BUDGET_S) -> None:
        super().__init__(budget_s=budget_s)
        check_int("steps", steps, low=1)
        check_int("max_batch", max_batch, low=1)
        self.steps = steps
        self.max_batch = max_batch

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CardLine:
        def measure() -> tuple[list[Verdict], str]:
            steps, samples = self.allowance(self.steps, self.max_batch)  # planned from the model's size
            fig = overfit_batch(pl_module, batch, optimizer_factory(trainer, pl_module), steps, samples,
                                self._deadline)
            v = overfit_verdict(fig, steps)
            if v.severity == "warning" and fig["requires_grad"] and fig["changed"]:
                v = _root_cause(v, pl_module, batch)
            detail = (f"loss {fig['start']:.3g} -> {fig['end']:.3g} in {int(fig['steps'])} steps "
                      f"(ratio {fig['ratio']:.2f})")
            return [v], detail

        return settle(self, trainer, measure)
