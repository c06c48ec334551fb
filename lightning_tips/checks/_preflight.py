"""The pre-flight machinery: checks that run once, before the first real step, on one batch.

Each pre-flight check is a :class:`PreflightCheck` (a :class:`~lightning_tips.TipCallback`) whose
:meth:`PreflightCheck.run_check` looks at the model and one training batch — on copies, inside
:func:`~lightning_tips._utils.preserved_rng` — reports its findings and returns one
:class:`CardLine` of the report card. Used alone, a check runs itself in ``on_train_start`` and
prints a one-line card; composed (``Preflight`` / ``Recipe``), the composite runs them all on the
same batch and prints one card.

The card is the same on a fast and on a loaded machine: the work each check does is counted in
steps and samples, decided once per card by a :class:`WorkPlan` from the model's size (its forward
FLOPs per sample, counted on a two-sample slice of the batch — never from timing). A check that
trains a copy asks :meth:`PreflightCheck.allowance` how many steps on how many samples it may use.
The time budget (``budget_s``; ``preflight_budget_s`` in ``Recipe``) is only a safety net: a check
starts only while it is not spent, and when it is hit one ``info`` finding (``skipped``) says so,
naming that argument and the checks it stopped.

Pre-flight does not run again when the fit resumes from a checkpoint (the model is trained by then).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_tips import _ddp
from lightning_tips._batch import peek_batches, stream_reason
from lightning_tips._callback import TipCallback
from lightning_tips._console import render_table
from lightning_tips._loggers import log_table
from lightning_tips._utils import (
    any_rank,
    apply_to_tensors,
    batch_size,
    model_copy,
    preserved_rng,
    step_loss,
)
from lightning_tips._validate import check_float
from lightning_tips.checks._verdicts import Verdict, report_verdict
from lightning_tips.findings import Finding

__all__ = [
    "CardLine",
    "CheckSkipped",
    "PreflightCheck",
    "Verdict",
    "WorkPlan",
    "first_train_batch",
    "forward_flops_per_sample",
    "print_card",
    "run_preflight",
    "settle",
    "slice_batch",
]

CARD_COLUMNS = ["check", "result", "figures", "seconds"]

#: The default time budget of a card: a safety net, far above what the planned work takes.
DEFAULT_BUDGET_S = 60.0


@dataclass
class CardLine:
    """One line of the report card."""

    check: str
    status: Literal["pass", "finding", "skipped"]
    detail: str = ""
    seconds: float = 0.0

    def row(self) -> list[Any]:
        return [self.check, self.status, self.detail, f"{self.seconds:.2f}"]


def first_train_batch(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any | None:
    """The first batch of the training dataloader, on the module's device, read without touching the
    user's data stream: the global RNGs are restored, and a map-style loader is read through an
    independent copy of its dataset, sampler and ``collate_fn`` (see :mod:`lightning_tips._batch`), so
    a dataset's own generators and counters do not move.

    ``None`` when there is no loader, it is empty, or it is a stream (an ``IterableDataset``, a
    generator): reading a stream would consume samples training never sees; use the batch the
    training loop hands over instead (``stream_reason`` in :mod:`lightning_tips._batch` says why).
    """
    loader = trainer.train_dataloader
    if loader is None:
        return None
    # several loaders (a dict or list): a batch of the same layout, as Lightning's default mode gives
    several = isinstance(loader, (Mapping, list, tuple))
    loaders = (dict(loader) if isinstance(loader, Mapping) else dict(enumerate(loader))) if several else {None: loader}
    if any(stream_reason(v) is not None for v in loaders.values()):
        return None
    firsts: dict[Any, Any] = {}
    with preserved_rng([pl_module.device]):
        for k, v in loaders.items():
            with closing(peek_batches(v)) as batches:
                first = next(batches, None)
            if first is None:
                return None
            firsts[k] = first[0]
    batch: Any = firsts[None] if not several else (
        firsts if isinstance(loader, Mapping) else type(loader)(firsts[i] for i in range(len(loader)))
    )
    batch = trainer.precision_plugin.convert_input(batch)  # as the training loop does (e.g. float64 for 64-true)
    return trainer.strategy.batch_to_device(batch, pl_module.device)


def slice_batch(batch: Any, samples: int) -> Any:
    """The first ``samples`` samples of ``batch`` (every tensor whose first dimension is the batch
    size is sliced; other values pass through).

    Example:
        >>> x, y = slice_batch((torch.zeros(8, 3), torch.arange(8)), 2)
        >>> tuple(x.shape), y.tolist()
        ((2, 3), [0, 1])
    """
    n = batch_size(batch) or 0
    if samples >= n:
        return batch
    return apply_to_tensors(batch, lambda t: t[:samples] if t.dim() > 0 and t.shape[0] == n else t)


def forward_flops_per_sample(module: pl.LightningModule, batch: Any, samples: int = 2) -> float:
    """Forward FLOPs per sample of ``module``'s own ``training_step``, counted (not timed) with
    :class:`torch.utils.flop_counter.FlopCounterMode` on a copy, without grad, on the first
    ``samples`` samples of ``batch``. Matrix products and convolutions only; ``nan`` when the step
    cannot run on the slice.

    Example:
        >>> from lightning_tips._utils import model_copy
        >>> class Tiny(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Linear(10, 5)
        ...     def training_step(self, batch, batch_idx):
        ...         return self.net(batch[0]).sum()
        >>> forward_flops_per_sample(Tiny(), (torch.zeros(8, 10),))  # 2 x 10 x 5 multiply-adds
        100.0
    """
    from torch.utils.flop_counter import FlopCounterMode

    n = batch_size(batch) or 0
    k = max(1, min(samples, n))
    try:
        copy = model_copy(module)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = step_loss(copy, slice_batch(batch, k))  # type: ignore[arg-type]
        if isinstance(out, str):
            return float("nan")
        return float(counter.get_total_flops()) / k
    except Exception:  # counting must never break the card: the plan falls back to the parameter count
        return float("nan")


#: Training FLOPs (forward + backward ~ 3 x forward) one training check may spend: 10^10,
#: a few seconds on two CPU cores. A reference small CNN needs 1000x less and keeps every step.
TRAIN_FLOPS = 1e10


@dataclass(frozen=True)
class WorkPlan:
    """How much work the pre-flight checks may do, decided once per card from the model's size —
    never from the clock, so the same model and batch give the same card on any machine at any load.

    ``flops_per_sample`` is the counted forward cost (:func:`forward_flops_per_sample`; when it cannot
    be counted, ``2 x parameters``). A training check asks :meth:`allowance` for its steps and samples.

    Example:
        >>> WorkPlan(parameters=10_000, flops_per_sample=2e5, batch=64).allowance(50, 16)
        (50, 16)
        >>> big = WorkPlan(parameters=11_000_000, flops_per_sample=7.4e7, batch=64)  # ResNet-18 at 32x32
        >>> big.allowance(50, 16)  # fewer samples first, then fewer steps
        (11, 4)
    """

    parameters: int
    flops_per_sample: float
    batch: int
    train_flops: float = TRAIN_FLOPS

    @classmethod
    def for_model(cls, module: nn.Module, batch: Any) -> WorkPlan:
        """Count ``module``'s parameters and forward FLOPs per sample on ``batch``."""
        # lazy modules' parameters are uninitialised before the first forward: they count as none
        params = sum(p.numel() for p in module.parameters() if not isinstance(p, nn.parameter.UninitializedParameter))
        flops = forward_flops_per_sample(module, batch) if isinstance(module, pl.LightningModule) else float("nan")
        if not math.isfinite(flops) or flops <= 0:
            flops = 2.0 * params
        return cls(params, flops, batch_size(batch) or 0)

    def allowance(self, steps: int, samples: int, copies: int = 1, min_steps: int = 10,
                  min_samples: int = 4) -> tuple[int, int]:
        """``(steps, samples)`` for ``copies`` copies each trained ``steps`` steps on ``samples``
        samples, within :attr:`train_flops`: the requested figures when they fit, else fewer samples
        (not below ``min_samples``), then fewer steps (not below ``min_steps``)."""
        step_cost = 3.0 * self.flops_per_sample * copies  # forward + backward, per sample and step
        if steps * samples * step_cost <= self.train_flops:
            return steps, samples
        fit_samples = int(self.train_flops // (steps * step_cost))
        samples = max(min(samples, min_samples), min(samples, fit_samples))
        if steps * samples * step_cost > self.train_flops:
            steps = max(min(steps, min_steps), int(self.train_flops // (samples * step_cost)))
        return steps, samples

    def describe(self) -> dict[str, float]:
        """The plan's figures (for the benchmark and the notes)."""
        return {"parameters": float(self.parameters), "flops_per_sample": self.flops_per_sample,
                "batch": float(self.batch)}


def print_card(trainer: pl.Trainer, lines: Sequence[CardLine], title: str = "lightning_tips pre-flight") -> None:
    """Print the report card on rank zero (sized to the terminal) and log it to every logger as a
    table, one row per check (``tips/preflight``)."""
    if not trainer.is_global_zero or not lines:
        return
    rows = [line.row() for line in lines]
    print(render_table(title, CARD_COLUMNS, rows), flush=True)
    log_table(trainer, "tips/preflight", CARD_COLUMNS, rows, step=0)


_LIMIT = "the pre-flight time limit"


def _limit_message(budget_arg: str, budget_s: float, stopped: str | None, not_run: Sequence[str]) -> str:
    parts = [f"{_LIMIT} (`{budget_arg}`={budget_s:g}s) was reached"]
    if stopped:
        parts.append(f"{stopped} was stopped")
    if not_run:
        parts.append(f"not run: {', '.join(not_run)}")
    return "; ".join(parts)


def run_preflight(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    checks: Sequence[PreflightCheck],
    budget_s: float,
    batch: Any | None = None,
    budget_arg: str = "budget_s",
    plan: WorkPlan | None = None,
) -> list[CardLine]:
    """Run ``checks`` in order on one batch, each with the work ``plan`` allows (default: a
    :class:`WorkPlan` for ``pl_module`` and ``batch``).

    ``budget_s`` is a safety net, not a schedule: a check starts only while the budget is not
    spent. When it is hit, one ``info`` finding (``skipped``) says so, naming ``budget_arg`` (the
    argument the user has) and the checks stopped or not run; their card lines read ``skipped``.
    A check that fails unexpectedly is skipped with an ``info``.
    """
    if batch is None:
        batch = first_train_batch(trainer, pl_module)
    start = time.perf_counter()
    lines: list[CardLine] = []
    # every rank takes the same branch (a check's collectives must run on all ranks or none)
    no_batch = any_rank(trainer, batch is None)
    if plan is None and not no_batch:
        with preserved_rng([pl_module.device]):
            plan = WorkPlan.for_model(pl_module, batch)
    limit_hit = False
    for i, check in enumerate(checks):
        t0 = time.perf_counter()
        check._deadline = start + budget_s
        check._plan = plan
        check._budget_arg = budget_arg
        check._budget_s = budget_s
        check._not_run = [c.title for c in checks[i + 1:]]
        check._limit_hit = False
        if no_batch:
            check.report(trainer, check.code, "info", f"{check.title}: skipped, the training dataloader gave no batch",
                         skipped=True)
            line = CardLine(check.title, "skipped", "no training batch")
        elif limit_hit or any_rank(trainer, t0 - start > budget_s):
            if not limit_hit:  # the one line that says so
                check.report(trainer, check.code, "info",
                             _limit_message(budget_arg, budget_s, None, [c.title for c in checks[i:]]), skipped=True)
            limit_hit = True
            line = CardLine(check.title, "skipped", f"not run: time limit `{budget_arg}`={budget_s:g}s")
        else:
            try:
                with preserved_rng([pl_module.device]):
                    line = check.run_check(trainer, pl_module, batch)
            except Exception as err:  # a check must never crash training
                check.report(
                    trainer, check.code, "info",
                    f"{check.title}: skipped, the check could not run on this model "
                    f"({type(err).__name__}: {err})", skipped=True,
                )
                line = CardLine(check.title, "skipped", f"{type(err).__name__}: {err}")
            limit_hit = check._limit_hit  # agreed on every rank by settle()
        line.seconds = time.perf_counter() - t0
        lines.append(line)
        check._done = True
    return lines


class CheckSkipped(Exception):
    """Raised by a check's measurement when the check cannot apply; the message says why."""


_RANK = {"info": 0, "warning": 1, "error": 2}


def _agreed(trainer: pl.Trainer, mine: Verdict | None) -> tuple[Verdict, int] | None:
    """The verdict of the lowest rank that has one, and that rank, on every rank; ``None`` on every
    rank when no rank has one. One ``all_gather`` of a flag, plus one broadcast when some rank has one."""
    if trainer.world_size == 1:
        return None if mine is None else (mine, 0)
    flags = _ddp.gather(trainer, {"has_verdict": torch.tensor(mine is not None)}, site="Preflight verdict")
    ranks = [i for i, f in enumerate(flags["has_verdict"].tolist()) if f]
    if not ranks:
        return None
    src = ranks[0]
    chosen = _ddp.broadcast_object(trainer, mine if trainer.global_rank == src else None, src, site="Preflight verdict")
    assert isinstance(chosen, Verdict)
    if src != 0:
        chosen = replace(chosen, message=f"{chosen.message} (rank {src}'s data)")
    return chosen, src


def settle(
    check: PreflightCheck,
    trainer: pl.Trainer,
    measure: Callable[[], tuple[list[Verdict], str]],
    *,
    agreed: bool = False,
) -> CardLine:
    """Run ``measure`` (local work, no collectives) and turn its verdicts into findings and a card line.

    ``measure`` returns ``(verdicts, card detail)``; a :class:`CheckSkipped` it raises becomes an
    ``info`` finding with the reason, any other exception an ``info`` finding naming it. Then, for each
    of the check's codes, the ranks agree on one verdict — the warning/error of the lowest rank that
    has one, else its info — and every rank reports that same verdict with its figures (rank zero
    speaks; a verdict from another rank's data says which rank).

    ``agreed=True``: the verdicts are already the same on every rank — ``measure`` computed them from
    figures it reduced across ranks itself (its collectives then run on every rank, in the same order)
    — so there is nothing to agree on and ``settle`` makes no collective. Every verdict is reported
    as it is, several per code if there are several, in the order of the check's codes; the line reads
    ``finding`` when a warning or error was reported anew (an ``info``, such as a part of the scan that
    could not run, leaves it ``pass``), and ``skipped`` when ``measure`` raised.
    """
    failed = True
    try:
        verdicts, detail = measure()
        failed = False
    except CheckSkipped as err:
        if check._deadline is not None and time.perf_counter() > check._deadline:  # stopped by the safety net
            message = _limit_message(check._budget_arg, check._budget_s, check.title, check._not_run)
            verdicts, detail = [Verdict(check.code, "info", message, skipped=True)], (
                f"stopped: time limit `{check._budget_arg}`={check._budget_s:g}s")
        else:
            verdicts, detail = [Verdict(check.code, "info", f"{check.title}: skipped, {err}", skipped=True)], str(err)
    except Exception as err:  # a check must never crash training
        reason = f"{type(err).__name__}: {err}"
        verdicts = [Verdict(check.code, "info", f"{check.title}: skipped, the check could not run on this model "
                            f"({reason})", skipped=True)]
        detail = reason
    codes = check.codes or (check.code,)
    if agreed:
        return CardLine(check.title, _report_global(check, trainer, verdicts, codes, failed), detail)
    flagged = skipped = reported = False
    for code in codes:
        mine = [v for v in verdicts if v.code == code and v.severity is not None]
        worst = max(mine, key=lambda v: _RANK[v.severity or "info"], default=None)
        bad = worst if worst is not None and worst.severity != "info" else None
        common = _agreed(trainer, bad)
        if common is None:
            common = _agreed(trainer, worst)  # no rank has a warning/error: any rank's info
        if common is None:
            continue
        chosen, src = common
        if src != trainer.global_rank:
            detail += f"; rank {src}: `{code}`"
        _report(check, trainer, chosen)
        reported = True
        flagged = flagged or not chosen.skipped
        skipped = skipped or chosen.skipped
    status: Literal["pass", "finding", "skipped"] = (
        "finding" if flagged else "skipped" if skipped and reported else "pass"
    )
    return CardLine(check.title, status, detail)


def _report_global(check: PreflightCheck, trainer: pl.Trainer, verdicts: Sequence[Verdict],
                   codes: Sequence[str], failed: bool) -> Literal["pass", "finding", "skipped"]:
    """Report verdicts that are already the same on every rank (see :func:`settle`'s ``agreed``), in
    the order of ``codes`` (a code not listed last); the card line's status."""
    order = {code: i for i, code in enumerate(codes)}
    flagged = False
    for v in sorted(verdicts, key=lambda v: order.get(v.code, len(order))):
        if v.severity is None:
            continue
        f = _report(check, trainer, v)
        flagged = flagged or (f is not None and v.severity != "info")
    return "skipped" if failed else "finding" if flagged else "pass"


def _report(check: PreflightCheck, trainer: pl.Trainer, verdict: Verdict) -> Finding | None:
    """Report one settled verdict (noting when it is the safety net's "time limit" line)."""
    check._limit_hit = check._limit_hit or verdict.message.startswith(_LIMIT)
    return report_verdict(check, trainer, verdict)


class _OncePerFit(TipCallback):
    """Runs its card once per fit at ``on_train_start`` — not when a composite runs it, not again
    after it ran, not when resuming from a checkpoint — and keeps that "done" in its state."""

    def __init__(self, *args: Any) -> None:  # args: a composite's children
        super().__init__(*args)
        self._composed = False  # True when a composite (Preflight, Recipe) runs this itself
        self._done = False

    def _run_card(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[CardLine]:
        raise NotImplementedError

    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._done = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._composed or self._done or trainer.ckpt_path is not None:
            return
        print_card(trainer, self._run_card(trainer, pl_module))

    def _extra_state(self) -> dict[str, Any]:
        return {"done": self._done}

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        self._done = bool(state_dict.get("done", False))


class PreflightCheck(_OncePerFit):
    """Base class of the pre-flight checks. Subclasses set ``title`` and ``code`` and implement
    :meth:`run_check`; findings go through ``self.report`` as usual."""

    title: ClassVar[str] = "pre-flight check"
    code: ClassVar[str] = "view-skipped"
    codes: ClassVar[tuple[str, ...]] = ()  # every code the check reports (default: ``(code,)``)

    def __init__(self, budget_s: float = DEFAULT_BUDGET_S) -> None:
        super().__init__()
        check_float("budget_s", budget_s, low=0.0, low_open=True)
        self.budget_s = float(budget_s)
        # set by run_preflight for each card
        self._deadline: float | None = None  # perf_counter() time the safety net trips
        self._plan: WorkPlan | None = None
        self._budget_arg = "budget_s"
        self._budget_s = self.budget_s
        self._not_run: list[str] = []
        self._limit_hit = False

    def allowance(self, steps: int, samples: int, copies: int = 1, min_steps: int = 10,
                  min_samples: int = 4) -> tuple[int, int]:
        """``(steps, samples)`` this check may train a copy for, from the card's :class:`WorkPlan`
        (the requested figures when there is no plan); see :meth:`WorkPlan.allowance`."""
        if self._plan is None:
            return steps, samples
        return self._plan.allowance(steps, samples, copies, min_steps, min_samples)

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CardLine:
        """Look at the model and one batch; report findings; return the card line."""
        raise NotImplementedError

    def _run_card(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[CardLine]:
        return run_preflight(trainer, pl_module, [self], self.budget_s)
