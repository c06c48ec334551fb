"""The pre-flight machinery: checks that run once, before the first real step, on one batch.

Each pre-flight check is a :class:`PreflightCheck` (a :class:`~lightning_tips.TipCallback`) whose
:meth:`PreflightCheck.run_check` looks at the model and one training batch — on copies, inside
:func:`~lightning_tips._utils.preserved_rng` — reports its findings and returns one
:class:`CardLine` of the report card. Used alone, a check runs itself in ``on_train_start`` and
prints a one-line card; composed (``Preflight`` / ``Recipe``), the composite runs them all on the
same batch within one time budget and prints one card.

Pre-flight does not run again when the fit resumes from a checkpoint (the model is trained by then).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch

from lightning_tips._callback import TipCallback
from lightning_tips._console import render_table
from lightning_tips._loggers import log_text
from lightning_tips._utils import any_rank, preserved_loader_rng, preserved_rng
from lightning_tips._validate import check_float

__all__ = [
    "CardLine",
    "CheckSkipped",
    "PreflightCheck",
    "Verdict",
    "first_train_batch",
    "print_card",
    "run_preflight",
    "settle",
]

CARD_COLUMNS = ["check", "result", "figures", "seconds"]


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
    """The first batch of the training dataloader, on the module's device, without touching the
    user's RNG (the sampler's seed draw and the loader's own generators are restored). ``None`` when there is no loader or it is empty."""
    loader = trainer.train_dataloader
    if loader is None:
        return None
    with preserved_loader_rng(loader, [pl_module.device]):
        batch: Any
        try:  # several loaders (a dict or list): a batch of the same layout, as Lightning's default mode gives
            if isinstance(loader, Mapping):
                batch = {k: next(iter(v)) for k, v in loader.items()}
            elif isinstance(loader, (list, tuple)):
                batch = [next(iter(v)) for v in loader]
            else:
                batch = next(iter(loader))
        except StopIteration:
            return None
    batch = trainer.precision_plugin.convert_input(batch)  # as the training loop does (e.g. float64 for 64-true)
    return trainer.strategy.batch_to_device(batch, pl_module.device)


def print_card(trainer: pl.Trainer, lines: Sequence[CardLine], title: str = "lightning_tips pre-flight") -> None:
    """Print the report card on rank zero and log it as text to every logger."""
    if not trainer.is_global_zero or not lines:
        return
    rows = [line.row() for line in lines]
    print(render_table(title, CARD_COLUMNS, rows), flush=True)
    log_text(trainer, "tips/preflight", render_table(title, CARD_COLUMNS, rows, color=False), step=0)


def run_preflight(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    checks: Sequence[PreflightCheck],
    budget_s: float,
    batch: Any | None = None,
) -> list[CardLine]:
    """Run ``checks`` in order on one batch within ``budget_s`` seconds; a check that would start
    after the budget is spent, or that fails unexpectedly, is skipped with an ``info`` finding."""
    if batch is None:
        batch = first_train_batch(trainer, pl_module)
    start = time.perf_counter()
    lines: list[CardLine] = []
    # every rank takes the same branch (a check's collectives must run on all ranks or none)
    no_batch = any_rank(trainer, batch is None)
    for check in checks:
        t0 = time.perf_counter()
        check._deadline = start + budget_s
        if no_batch:
            check.report(trainer, check.code, "info", f"{check.title}: skipped, the training dataloader gave no batch")
            line = CardLine(check.title, "skipped", "no training batch")
        elif any_rank(trainer, t0 - start > budget_s):
            check.report(
                trainer, check.code, "info",
                f"{check.title}: skipped, the pre-flight budget of {budget_s:g}s was spent "
                f"(raise `budget_s` to run it)",
            )
            line = CardLine(check.title, "skipped", f"budget {budget_s:g}s spent")
        else:
            try:
                with preserved_rng([pl_module.device]):
                    line = check.run_check(trainer, pl_module, batch)
            except Exception as err:  # a check must never crash training
                check.report(
                    trainer, check.code, "info",
                    f"{check.title}: skipped, the check could not run on this model "
                    f"({type(err).__name__}: {err})",
                )
                line = CardLine(check.title, "skipped", f"{type(err).__name__}: {err}")
        line.seconds = time.perf_counter() - t0
        lines.append(line)
        check._done = True
    return lines


class CheckSkipped(Exception):
    """Raised by a check's measurement when the check cannot apply; the message says why."""


@dataclass
class Verdict:
    """One rank's conclusion for one finding code, before the ranks agree (see :func:`settle`).

    ``severity=None`` means the check passed for this code; ``skipped`` marks an ``info`` saying
    the check could not apply.
    """

    code: str
    severity: Literal["info", "warning", "error"] | None = None
    message: str = ""
    figures: dict[str, float] = field(default_factory=dict)
    module: str | None = None
    advice: str = ""
    skipped: bool = False


_RANK = {"info": 0, "warning": 1, "error": 2}
_SKIP_ADVICE = "none needed: the check could not apply to this model or batch (see the message)"


def _agreed(trainer: pl.Trainer, mine: Verdict | None) -> tuple[Verdict, int] | None:
    """The verdict of the lowest rank that has one, and that rank, on every rank; ``None`` on every
    rank when no rank has one. One ``all_gather`` of a flag, plus one broadcast when some rank has one."""
    if trainer.world_size == 1:
        return None if mine is None else (mine, 0)
    flag = torch.tensor([float(mine is not None)], device=trainer.strategy.root_device)
    ranks = [i for i, f in enumerate(trainer.strategy.all_gather(flag).flatten().tolist()) if f]
    if not ranks:
        return None
    src = ranks[0]
    chosen = trainer.strategy.broadcast(mine if trainer.global_rank == src else None, src=src)
    assert isinstance(chosen, Verdict)
    if src != 0:
        chosen = replace(chosen, message=f"{chosen.message} (rank {src}'s data)")
    return chosen, src


def settle(
    check: PreflightCheck,
    trainer: pl.Trainer,
    measure: Callable[[], tuple[list[Verdict], str]],
) -> CardLine:
    """Run ``measure`` (local work, no collectives) and turn its verdicts into findings and a card line.

    ``measure`` returns ``(verdicts, card detail)``; a :class:`CheckSkipped` it raises becomes an
    ``info`` finding with the reason, any other exception an ``info`` finding naming it. Then, for each
    of the check's codes, the ranks agree on one verdict — the warning/error of the lowest rank that
    has one, else its info — and every rank reports that same verdict with its figures (rank zero
    speaks; a verdict from another rank's data says which rank).
    """
    try:
        verdicts, detail = measure()
    except CheckSkipped as err:
        verdicts, detail = [Verdict(check.code, "info", f"{check.title}: skipped, {err}", skipped=True)], str(err)
    except Exception as err:  # a check must never crash training
        reason = f"{type(err).__name__}: {err}"
        verdicts = [Verdict(check.code, "info", f"{check.title}: skipped, the check could not run on this model "
                            f"({reason})", skipped=True)]
        detail = reason
    codes = check.codes or (check.code,)
    flagged = skipped = reported = False
    for code in codes:
        mine = [v for v in verdicts if v.code == code and v.severity is not None]
        worst = max(mine, key=lambda v: _RANK[v.severity or "info"], default=None)
        bad = worst if worst is not None and worst.severity != "info" else None
        agreed = _agreed(trainer, bad)
        if agreed is None:
            agreed = _agreed(trainer, worst)  # no rank has a warning/error: any rank's info
        if agreed is None:
            continue
        chosen, src = agreed
        if src != trainer.global_rank:
            detail += f"; rank {src}: `{code}`"
        assert chosen.severity is not None
        advice = chosen.advice or (_SKIP_ADVICE if chosen.skipped else "")
        check.report(trainer, code, chosen.severity, chosen.message, advice=advice,
                     module=chosen.module, figures=chosen.figures)
        reported = True
        flagged = flagged or not chosen.skipped
        skipped = skipped or chosen.skipped
    status: Literal["pass", "finding", "skipped"] = (
        "finding" if flagged else "skipped" if skipped and reported else "pass"
    )
    return CardLine(check.title, status, detail)


class _OncePerFit(TipCallback):
    """Runs its card once per fit at ``on_train_start`` — not when a composite runs it, not again
    after it ran, not when resuming from a checkpoint — and keeps that "done" in its state."""

    def __init__(self, *args: Any) -> None:  # args: a composite's children
        super().__init__(*args)
        self._composed = False  # True when a composite (Preflight, Recipe) runs this itself
        self._done = False

    def _run_card(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[CardLine]:
        raise NotImplementedError

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._done = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._composed or self._done or trainer.ckpt_path is not None:
            return
        print_card(trainer, self._run_card(trainer, pl_module))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "done": self._done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._done = bool(state_dict.get("done", False))


class PreflightCheck(_OncePerFit):
    """Base class of the pre-flight checks. Subclasses set ``title`` and ``code`` and implement
    :meth:`run_check`; findings go through ``self.report`` as usual."""

    title: ClassVar[str] = "pre-flight check"
    code: ClassVar[str] = "view-skipped"
    codes: ClassVar[tuple[str, ...]] = ()  # every code the check reports (default: ``(code,)``)

    def __init__(self, budget_s: float = 3.0) -> None:
        super().__init__()
        check_float("budget_s", budget_s, low=0.0, low_open=True)
        self.budget_s = budget_s
        self._deadline: float | None = None  # perf_counter() time the pre-flight budget ends (set by run_preflight)

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CardLine:
        """Look at the model and one batch; report findings; return the card line."""
        raise NotImplementedError

    def _run_card(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[CardLine]:
        return run_preflight(trainer, pl_module, [self], self.budget_s)
