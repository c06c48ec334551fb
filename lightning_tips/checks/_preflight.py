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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl

from lightning_tips._callback import TipCallback
from lightning_tips._console import render_table
from lightning_tips._loggers import log_text
from lightning_tips._utils import preserved_rng

__all__ = ["CardLine", "PreflightCheck", "first_train_batch", "print_card", "run_preflight"]

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
    user's RNG (the sampler's seed draw is undone). ``None`` when there is no loader or it is empty."""
    loader = trainer.train_dataloader
    if loader is None:
        return None
    with preserved_rng([pl_module.device]):
        try:
            batch = next(iter(loader))
        except StopIteration:
            return None
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
    for check in checks:
        t0 = time.perf_counter()
        if batch is None:
            check.report(trainer, check.code, "info", f"{check.title}: skipped, the training dataloader gave no batch")
            line = CardLine(check.title, "skipped", "no training batch")
        elif t0 - start > budget_s:
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


class PreflightCheck(TipCallback):
    """Base class of the pre-flight checks. Subclasses set ``title`` and ``code`` and implement
    :meth:`run_check`; findings go through ``self.report`` as usual."""

    title: ClassVar[str] = "pre-flight check"
    code: ClassVar[str] = "view-skipped"

    def __init__(self, budget_s: float = 3.0) -> None:
        super().__init__()
        if budget_s <= 0:
            raise ValueError(f"Expected budget_s > 0 but got {budget_s}.")
        self.budget_s = budget_s
        self._composed = False  # True when a composite (Preflight, Recipe) runs this check
        self._done = False

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CardLine:
        """Look at the model and one batch; report findings; return the card line."""
        raise NotImplementedError

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._done = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._composed or self._done or trainer.ckpt_path is not None:
            return
        print_card(trainer, run_preflight(trainer, pl_module, [self], self.budget_s))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "done": self._done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._done = bool(state_dict.get("done", False))
