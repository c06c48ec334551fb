"""The learning-rate decay guard: a schedule must not drive the lr to ~0 long before training ends (R3.4, P7, P15, R3.2).

Before the first step, every scheduler of ``trainer.lr_scheduler_configs`` is replayed on a deep
copy bound to a shadow optimizer (dummy parameters, copied param groups) over the planned run —
``trainer.estimated_stepping_batches`` optimizer steps, epochs of ``trainer.num_training_batches``
batches, each config's ``interval`` ("step"/"epoch") and ``frequency`` honoured as Lightning steps
them. The user's optimizer and schedulers are never stepped. During training the real lr is
re-read on sampled steps against the same rule.

The rule (``lr-decay``, warning): some param group's lr falls below ``min_ratio`` (1e-3) x the
largest lr it had so far before ``by_fraction`` (0.5) of the planned steps. "The largest so far"
keeps warm-ups (which start near 0) and one-cycle schedules silent; a cosine over the whole run
crosses 1e-3 only at ~99% of it. Typical catch: a schedule written in epochs (``StepLR(step_size=30)``,
``CosineAnnealingLR(T_max=max_epochs)``) returned with ``"interval": "step"``.

Also, at fit start, an ``info`` ``optimizer-defaults`` finding when the optimizer's starting lr is
unusual for its family (R3.2): Adam-family outside [1e-5, 1e-2], SGD outside [1e-4, 1.0].

Example:
    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)  # meant: every 30 epochs
    >>> lrs = simulate_lrs(opt, [(sched, "step", 1)], steps=1000, batches_per_epoch=100)  # but stepped per batch
    >>> verdict = decay_verdict([row[0] for row in lrs], planned_steps=1000)
    >>> verdict.figures["crossed_step"], verdict.figures["crossed_fraction"]  # below 1e-3 x 0.1 after 4 drops
    (120.0, 0.12)
    >>> verdict.message
    'the lr of param group 0 is 1e-05, below 0.001 x its peak 0.1, at step 120 of 1000 planned (12% of training)'
    >>> opt.param_groups[0]["lr"], sched.last_epoch  # the real optimizer and scheduler are untouched
    (0.1, 0)
"""

from __future__ import annotations

import copy
import dis
import functools
import math
import types
import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.optim import Optimizer

from lightning_tips._callback import TipCallback
from lightning_tips._utils import is_sampled, preserved_rng
from lightning_tips._validate import check_float, check_int
from lightning_tips.checks._verdicts import Verdict, report_verdict

__all__ = [
    "LRDecayGuard",
    "decay_verdict",
    "optimizer_defaults_verdict",
    "optimizer_family",
    "simulate_lrs",
    "unsimulatable_reason",
]

_MAX_SIMULATED_STEPS = 1_000_000  # ~4 s of scheduler steps at worst; beyond it the runtime re-check covers
_STATEFUL_OPS = {"STORE_DEREF", "STORE_GLOBAL", "STORE_ATTR", "DELETE_DEREF", "DELETE_GLOBAL", "DELETE_ATTR"}
_ADAM_FAMILY: tuple[type[Optimizer], ...] = tuple(
    getattr(torch.optim, n) for n in ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "SparseAdam") if hasattr(torch.optim, n)
)
_LR_RANGES: dict[str, tuple[float, float]] = {"Adam-family": (1e-5, 1e-2), "SGD": (1e-4, 1.0)}

Schedule = tuple[Any, str, int]  # (scheduler, interval "step"/"epoch", frequency)


# --- pure functions ----------------------------------------------------------------------------------
def _lr(group: dict[str, Any]) -> float:
    lr = group["lr"]
    return float(lr.detach().cpu()) if isinstance(lr, torch.Tensor) else float(lr)


def _stateful_callable(fn: Any) -> bool:
    """Whether ``fn`` (a plain function, bound method or partial) assigns nonlocal/global/attribute state."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, types.MethodType):
        fn = fn.__func__
    if not isinstance(fn, types.FunctionType):
        return False  # callable objects are deep-copied with the scheduler: their state is the copy's
    return any(ins.opname in _STATEFUL_OPS for ins in dis.get_instructions(fn))


def unsimulatable_reason(scheduler: Any) -> str | None:
    """Why ``scheduler`` cannot be replayed on a copy, or ``None`` when it can."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return "ReduceLROnPlateau depends on the monitored metric, which cannot be known in advance"
    inner = getattr(scheduler, "_schedulers", None)  # SequentialLR, ChainedScheduler
    for s in inner if isinstance(inner, (list, tuple)) else []:
        reason = unsimulatable_reason(s)
        if reason is not None:
            return reason
    for attr in ("lr_lambdas",):  # LambdaLR, MultiplicativeLR
        for fn in getattr(scheduler, attr, None) or []:
            if _stateful_callable(fn):
                name = getattr(fn, "__qualname__", type(fn).__name__)
                return f"its lr function `{name}` keeps state (assigns nonlocal/global variables or attributes)"
    if not hasattr(scheduler, "step") or not hasattr(scheduler, "optimizer"):
        return f"{type(scheduler).__name__} is not a torch LRScheduler"
    return None


def _shadow_optimizer(optimizer: Optimizer, memo: dict[int, Any]) -> Optimizer:
    """A real ``Optimizer`` over dummy parameters whose param groups copy ``optimizer``'s (lr, momentum,
    betas, initial_lr, ...); ``memo`` learns to map the user's optimizer, groups and params to the shadow's."""
    shadow = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    groups = []
    for group in optimizer.param_groups:
        params = [torch.zeros(1, requires_grad=True)]
        new = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
        new["params"] = params
        groups.append(new)
        memo[id(group)] = new
        for p in group["params"]:
            memo[id(p)] = params[0]
    shadow.param_groups = groups
    shadow.defaults = copy.deepcopy(optimizer.defaults)
    memo[id(optimizer)] = shadow
    memo[id(optimizer.param_groups)] = groups
    return shadow


def simulate_lrs(
    optimizer: Optimizer,
    schedules: Sequence[Schedule],
    steps: int,
    batches_per_epoch: float,
    accumulate_grad_batches: int = 1,
    keep: Sequence[Any] = (),
) -> list[list[float]]:
    """The lr of every param group at each of the next ``steps`` optimizer steps, replaying ``schedules``
    on deep copies bound to a shadow optimizer (the real optimizer and schedulers are not touched).

    ``schedules`` are ``(scheduler, interval, frequency)`` of the same optimizer, replayed together as
    Lightning steps them: a ``"step"`` scheduler after each optimizer step whose batch index in the
    epoch (1-based) is a multiple of ``frequency``; an ``"epoch"`` one after each epoch (1-based)
    that is a multiple of ``frequency``. ``batches_per_epoch`` may be ``inf`` (no epoch ends).
    ``keep`` are objects the copy must share rather than copy (the LightningModule, the Trainer),
    e.g. when an lr function is one of the module's methods. Warnings from the replay are silenced.

    Raises:
        Any exception the scheduler's copy or step raises: the caller decides what to report.
    """
    memo: dict[int, Any] = {id(obj): obj for obj in keep}
    shadow = _shadow_optimizer(optimizer, memo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheds = copy.deepcopy([s for s, _, _ in schedules], memo)
        lrs: list[list[float]] = []
        epoch, batch = 0, 0
        finite_epochs = math.isfinite(batches_per_epoch) and batches_per_epoch >= 1
        while len(lrs) < steps:
            last_batch = finite_epochs and batch == int(batches_per_epoch) - 1
            if (batch + 1) % accumulate_grad_batches == 0 or last_batch:  # an optimizer step
                lrs.append([_lr(g) for g in shadow.param_groups])
                for sched, (_, interval, frequency) in zip(scheds, schedules):
                    if interval == "step" and (batch + 1) % frequency == 0:
                        sched.step()
            batch += 1
            if last_batch:
                epoch, batch = epoch + 1, 0
                for sched, (_, interval, frequency) in zip(scheds, schedules):
                    if interval == "epoch" and epoch % frequency == 0:
                        sched.step()
    return lrs


def decay_verdict(
    lrs: Sequence[float],
    planned_steps: int,
    min_ratio: float = 1e-3,
    by_fraction: float = 0.5,
    start_step: int = 0,
    peak: float = 0.0,
    *,
    optimizer_index: int = 0,
    group: int = 0,
    schedule: str | None = None,
    hint: str = "",
) -> Verdict | None:
    """The ``lr-decay`` warning when the lr (``lrs[t]`` at step ``start_step + t``) falls below ``min_ratio`` x
    its largest value so far (at least ``peak``) before ``by_fraction`` x ``planned_steps``; else ``None``.

    ``optimizer_index`` and ``group`` name the param group (the verdict's ``module``). With ``schedule``
    (the replayed schedulers, e.g. ``"StepLR (interval='step')"``) the message says that schedule drives
    the lr there, followed by ``hint``; without it, it states the lr read at that step.

    Figures: ``crossed_step``, ``crossed_fraction``, ``planned_steps``, ``lr_at_cross``, ``peak_lr``.

    Example:
        >>> decay_verdict([0.0, 0.5, 1.0, 0.5, 0.1], planned_steps=5) is None  # warm-up from 0, mild decay
        True
        >>> v = decay_verdict([1.0, 1.0, 1e-4, 1e-4], planned_steps=8, schedule="StepLR (interval='step')")
        >>> v.severity, v.module, v.figures["crossed_step"]
        ('warning', 'optimizer[0].param_groups[0]', 2.0)
        >>> v.message
        "StepLR (interval='step') drives the lr of param group 0 from 1 to 0.0001 (< 0.001 x peak) at step 2 of 8 planned (25% of training)"
    """
    for t, lr in enumerate(lrs):
        step = start_step + t
        if step >= by_fraction * planned_steps:
            return None
        peak = max(peak, lr)
        if peak > 0 and lr < min_ratio * peak:
            figures = {
                "crossed_step": float(step),
                "crossed_fraction": round(step / planned_steps, 4),
                "planned_steps": float(planned_steps),
                "lr_at_cross": lr,
                "peak_lr": peak,
            }
            if schedule is not None:
                message = (
                    f"{schedule} drives the lr of param group {group} from {peak:.3g} to {lr:.3g} "
                    f"(< {min_ratio:g} x peak) at step {step} of {planned_steps} planned "
                    f"({100 * figures['crossed_fraction']:.0f}% of training){hint}"
                )
            else:
                message = (
                    f"the lr of param group {group} is {lr:.3g}, below {min_ratio:g} x its peak {peak:.3g}, "
                    f"at step {step} of {planned_steps} planned ({100 * step / planned_steps:.0f}% of training)"
                )
            return Verdict(
                "lr-decay", "warning", message, figures=figures, module=f"optimizer[{optimizer_index}].param_groups[{group}]"
            )
    return None


def optimizer_family(optimizer: Optimizer) -> str | None:
    """``"Adam-family"`` or ``"SGD"`` (the families with a usual lr range, R3.2), else ``None``.

    Example:
        >>> optimizer_family(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]))
        'Adam-family'
    """
    if isinstance(optimizer, _ADAM_FAMILY):
        return "Adam-family"
    if isinstance(optimizer, torch.optim.SGD):
        return "SGD"
    return None


def optimizer_defaults_verdict(optimizer: Optimizer, index: int = 0) -> Verdict | None:
    """The ``optimizer-defaults`` info when the optimizer's starting lr (a scheduler's ``initial_lr`` if
    present) is outside its family's usual range (R3.2); ``None`` otherwise or for other optimizers.
    ``index`` is the optimizer's position in ``trainer.optimizers`` (the verdict's ``module``).

    Figures: ``lr`` (the first group's lr outside the range), ``low``, ``high`` (the range).

    Example:
        >>> p = [torch.nn.Parameter(torch.zeros(1))]
        >>> v = optimizer_defaults_verdict(torch.optim.Adam(p, lr=0.1))
        >>> v.severity, v.module, v.figures
        ('info', 'optimizer[0]', {'lr': 0.1, 'low': 1e-05, 'high': 0.01})
        >>> v.message.split(";")[0]
        'Adam starts with lr 0.1, 10x above the usual [1e-05, 0.01] for Adam-family optimizers'
        >>> optimizer_defaults_verdict(torch.optim.Adam(p, lr=3e-4)) is None
        True
    """
    family = optimizer_family(optimizer)
    if family is None:
        return None
    low, high = _LR_RANGES[family]
    for group in optimizer.param_groups:
        lr = group.get("initial_lr", group["lr"])
        lr = float(lr.detach().cpu()) if isinstance(lr, torch.Tensor) else float(lr)
        if not low <= lr <= high:
            # an info at the start: an unusual lr is not yet evidence of harm. When the loss or the
            # gradients blow up in the first steps, GradientStats' `exploding-gradient` warning names
            # this lr as the root cause (it reads the same verdict)
            side = f"{lr / high:.3g}x above" if lr > high else (f"{low / lr:.3g}x below" if lr > 0 else "below")
            return Verdict(
                "optimizer-defaults", "info",
                f"{type(optimizer).__name__} starts with lr {lr:.3g}, {side} the usual [{low:g}, {high:g}] for "
                f"{family} optimizers; if the loss or the gradients blow up in the first steps, `exploding-gradient` "
                "names this lr as the cause",
                figures={"lr": lr, "low": low, "high": high}, module=f"optimizer[{index}]",
            )  # fmt: skip
    return None


def _epoch_unit_hint(scheduler: Any, interval: str, max_epochs: int | None, steps_per_epoch: float) -> str:
    """A hint when a per-batch scheduler's horizon looks like a number of epochs."""
    if interval != "step" or not max_epochs or max_epochs < 1:
        return ""
    for attr in ("step_size", "T_max", "T_0", "total_iters"):
        value = getattr(scheduler, attr, None)
        if isinstance(value, int) and 0 < value <= max_epochs and steps_per_epoch > 1:
            return (
                f"; its {attr}={value} looks like a number of epochs (the run has {max_epochs} epochs of "
                f"{steps_per_epoch:g} steps) but it is stepped every batch (interval='step'): use "
                f"interval='epoch', or scale {attr} by the steps per epoch"
            )
    milestones = getattr(scheduler, "milestones", None)
    if milestones and max(milestones) <= max_epochs and steps_per_epoch > 1:
        return (
            f"; its milestones {sorted(milestones)} look like epochs but it is stepped every batch "
            f"(interval='step'): use interval='epoch'"
        )
    return ""


# --- the callback --------------------------------------------------------------------------------------
class LRDecayGuard(TipCallback):
    """Flag a learning-rate schedule that reaches ~0 long before training ends, before training starts (R3.4, P7).

    At ``on_train_start`` (when ``trainer.estimated_stepping_batches`` is known) every scheduler
    config is replayed on a copy (:func:`simulate_lrs`) over the planned steps; the ``lr-decay``
    warning names the scheduler, the param group, the step and fraction of training where the lr
    crossed ``min_ratio`` x its peak, and the planned steps, with a hint when a per-batch
    scheduler's ``step_size``/``T_max``/milestones look like epochs. On steps sampled by
    ``every_n_steps`` the real lr is checked against the same rule (that catches
    ``ReduceLROnPlateau`` and anything that could not be replayed).

    Silent on constant lr, warm-up + cosine over the run, ``OneCycleLR``. ``info`` ``lr-decay``
    findings say what was not replayed and why: ``ReduceLROnPlateau`` (metric-driven), lr functions
    that keep state, schedulers whose copy or step raised, manual optimization (Lightning does not
    step the schedulers), an unknown number of planned steps. It never raises.

    Also reports ``optimizer-defaults`` (info) at fit start: Adam-family lr outside [1e-5, 1e-2],
    SGD lr outside [1e-4, 1.0] (R3.2: Adam at 3e-4 is the safe start).

    Without ``floor`` it is a pure observer (training is bit-for-bit unchanged). With ``floor`` it is
    a fix: before every batch it clamps each group's lr to at least ``floor`` x its initial lr (the
    scheduler's ``initial_lr``, else the lr at fit start), and reports once (``lr-decay``, info) when
    the floor first engages.

    Args:
        min_ratio: the lr is "~0" below this fraction of its peak so far.
        by_fraction: flag only crossings before this fraction of the planned steps.
        every_n_steps: re-check the real lr every this many optimizer steps (``0``: never).
        floor: clamp the lr at ``floor`` x initial (a fix; ``None``: observe only).

    Example:
        >>> guard = LRDecayGuard()  # a pure observer
        >>> guard.min_ratio, guard.by_fraction, guard.floor
        (0.001, 0.5, None)
        >>> LRDecayGuard(floor=0.01).state_key
        "LRDecayGuard{'floor': 0.01}"
    """

    def __init__(
        self,
        min_ratio: float = 1e-3,
        by_fraction: float = 0.5,
        every_n_steps: int = 100,
        floor: float | None = None,
    ) -> None:
        super().__init__()
        check_float("min_ratio", min_ratio, low=0.0, high=1.0, low_open=True, high_open=True)
        check_float("by_fraction", by_fraction, low=0.0, high=1.0, low_open=True)
        check_int("every_n_steps", every_n_steps, low=0)
        check_float("floor", floor, low=0.0, high=1.0, low_open=True, high_open=True, optional=True)
        self.min_ratio = min_ratio
        self.by_fraction = by_fraction
        self.every_n_steps = every_n_steps
        self.floor = floor
        self._reset()

    def _reset(self) -> None:
        self._planned = 0
        self._peaks: dict[tuple[int, int], float] = {}  # (optimizer, group) -> largest lr seen
        self._initial: dict[tuple[int, int], float] = {}  # (optimizer, group) -> lr at fit start
        self._flagged: set[tuple[int, int]] = set()
        self._floor_reported = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(floor=self.floor)

    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    # --- fit start: optimizer defaults and the replay ---------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for i, opt in enumerate(trainer.optimizers):
            for g, group in enumerate(opt.param_groups):
                lr = _lr(group)
                self._peaks[(i, g)] = max(self._peaks.get((i, g), 0.0), lr)
                initial = group.get("initial_lr", lr)  # a resumed run keeps the initial lr it restored
                initial = float(initial.detach().cpu()) if isinstance(initial, torch.Tensor) else float(initial)
                self._initial.setdefault((i, g), initial)
            bad = optimizer_defaults_verdict(opt, i)
            if bad is not None:
                report_verdict(self, trainer, bad)
        try:
            planned = trainer.estimated_stepping_batches
        except Exception as err:  # a guard never crashes training
            planned, why = math.inf, f"{type(err).__name__}: {err}"
        else:
            why = "max_steps=-1 and max_epochs=-1"
        if not trainer.lr_scheduler_configs:
            return
        if not math.isfinite(planned) or planned < 1:
            self._info(trainer, f"the planned number of steps is unknown ({why}); only the runtime re-check runs")
            return
        self._planned = int(planned)
        if not pl_module.automatic_optimization:
            self._info(trainer, "manual optimization: the schedulers are stepped by your code, not replayed")
            return
        with preserved_rng():
            self._replay(trainer, pl_module)

    def _info(self, trainer: pl.Trainer, why: str, module: str | None = None) -> None:
        self.report(trainer, "lr-decay", "info", f"lr schedule not replayed: {why}", module=module,
                    advice="none needed; the real lr is still re-checked during training")

    def _replay(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = float(trainer.num_training_batches)
        accumulate = int(trainer.accumulate_grad_batches)
        steps_per_epoch = math.ceil(batches / accumulate) if math.isfinite(batches) else math.inf
        remaining = self._planned - trainer.global_step
        horizon = min(remaining, math.ceil(self.by_fraction * self._planned) - trainer.global_step + 1)
        horizon = min(horizon, _MAX_SIMULATED_STEPS)
        if horizon <= 0:
            return
        for i, opt in enumerate(trainer.optimizers):
            schedules: list[Schedule] = []
            for config in trainer.lr_scheduler_configs:
                sched = config.scheduler
                if getattr(sched, "optimizer", None) is not opt:
                    continue
                name = type(sched).__name__
                reason = unsimulatable_reason(sched)
                if reason is not None:
                    self._info(trainer, f"{name}: {reason}", module=f"optimizer[{i}]:{name}")
                    continue
                schedules.append((sched, config.interval, int(config.frequency)))
            if not schedules:
                continue
            names = " + ".join(f"{type(s).__name__} (interval={iv!r})" for s, iv, _ in schedules)
            try:
                lrs = simulate_lrs(opt, schedules, horizon, batches, accumulate, keep=(pl_module, trainer))
            except Exception as err:  # any user scheduler may fail on a copy
                self._info(trainer, f"{names}: replaying a copy raised {type(err).__name__}: {err}",
                           module=f"optimizer[{i}]")
                continue
            for g in range(len(opt.param_groups)):
                if (i, g) in self._flagged:  # already reported (a resumed run restored it)
                    continue
                hint = "".join(
                    _epoch_unit_hint(s, iv, trainer.max_epochs, steps_per_epoch) for s, iv, _ in schedules
                )
                verdict = decay_verdict(
                    [row[g] for row in lrs], self._planned, self.min_ratio, self.by_fraction,
                    start_step=trainer.global_step, peak=self._peaks.get((i, g), 0.0),
                    optimizer_index=i, group=g, schedule=names, hint=hint,
                )
                if verdict is None:
                    continue
                self._flagged.add((i, g))
                report_verdict(self, trainer, verdict)

    # --- during training -------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.floor is None:
            return
        for i, opt in enumerate(trainer.optimizers):
            for g, group in enumerate(opt.param_groups):
                base = self._initial.get((i, g))
                if base is None:
                    continue
                self._clamp(trainer, group, self.floor * base, (i, g))

    def _clamp(self, trainer: pl.Trainer, group: dict[str, Any], low: float, where: tuple[int, int]) -> None:
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            lr.clamp_(min=low)  # in place, no sync; the report below is skipped for tensor lrs
            return
        if lr < low:
            group["lr"] = low
            if not self._floor_reported:
                self._floor_reported = True
                self.report(
                    trainer,
                    "lr-decay",
                    "info",
                    f"lr floor engaged: the lr of param group {where[1]} ({lr:.3g}) was clamped to "
                    f"{low:.3g} (= {self.floor:g} x its initial lr)",
                    module=f"optimizer[{where[0]}].param_groups[{where[1]}]:floor",
                    advice="none needed; the floor keeps training from stalling (R3.4)",
                    figures={"lr_before": lr, "floor_lr": low},
                )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not is_sampled(step, self.every_n_steps) or not self._planned:
            return
        if step >= self.by_fraction * self._planned:
            return
        for i, opt in enumerate(trainer.optimizers):
            for g, group in enumerate(opt.param_groups):
                key = (i, g)
                lr = _lr(group)
                peak = max(self._peaks.get(key, 0.0), lr)
                self._peaks[key] = peak
                if key in self._flagged:
                    continue
                verdict = decay_verdict([lr], self._planned, self.min_ratio, self.by_fraction, start_step=step,
                                        peak=peak, optimizer_index=i, group=g)
                if verdict is None:
                    continue
                self._flagged.add(key)
                report_verdict(self, trainer, verdict)

    # --- state -----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        state.update(
            peaks=[[i, g, v] for (i, g), v in self._peaks.items()],
            initial=[[i, g, v] for (i, g), v in self._initial.items()],
            flagged=[[i, g] for i, g in sorted(self._flagged)],
            floor_reported=self._floor_reported,
        )
        return state

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        self._peaks = {(int(i), int(g)): float(v) for i, g, v in state_dict.get("peaks", [])}
        self._initial = {(int(i), int(g)): float(v) for i, g, v in state_dict.get("initial", [])}
        self._flagged = {(int(i), int(g)) for i, g in state_dict.get("flagged", [])}
        self._floor_reported = bool(state_dict.get("floor_reported", False))

