"""The base class of every lightning_tips callback: findings, state, and the end-of-fit summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_tips._console import render_table
from lightning_tips._loggers import log_table, log_text
from lightning_tips.findings import Finding, FindingsLog, Severity, report

__all__ = ["TipCallback", "summary_rows"]

SUMMARY_COLUMNS = ["code", "severity", "step", "where", "message", "advice"]


def summary_rows(findings: list[Finding]) -> list[list[Any]]:
    """Rows of the summary table, errors first."""
    ordered = sorted(findings, key=lambda f: -f.severity.rank)
    return [[f.code, f.severity.value, f.step, f.module or "", f.message, f.advice] for f in ordered]


class TipCallback(Callback):
    """Base class: keeps this callback's findings, de-duplicates them, checkpoints them, and — when
    it is the first lightning_tips callback of the Trainer — prints the end-of-fit summary of every
    lightning_tips callback's findings (a rich table in a terminal, plain text otherwise; also
    logged as a table to every logger).

    Subclasses call :meth:`report`; when overriding ``setup``, ``state_dict`` or
    ``load_state_dict`` they call ``super()``.
    """

    def __init__(self) -> None:
        self._findings_log = FindingsLog()
        self._summarised = False

    @property
    def findings(self) -> list[Finding]:
        """The findings reported this fit, in order."""
        return list(self._findings_log.findings)

    def report(
        self,
        trainer: pl.Trainer | None,
        code: str,
        severity: Severity | str,
        message: str,
        *,
        advice: str = "",
        module: str | None = None,
        figures: Mapping[str, float] | None = None,
        step: int | None = None,
    ) -> Finding | None:
        """Build and :func:`~lightning_tips.findings.report` a finding; return it if it was new."""
        if step is None and trainer is not None:
            step = trainer.global_step
        finding = Finding(code, Severity(severity), message, advice, step, module, figures or {})
        return finding if report(finding, trainer, self._findings_log) else None

    # --- lifecycle -------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._findings_log.clear()
            self._summarised = False

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._summarise(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._summarise(trainer)

    def _summarise(self, trainer: pl.Trainer) -> None:
        owners = [cb for cb in trainer.callbacks if isinstance(cb, TipCallback)]  # type: ignore[attr-defined]
        if not owners or owners[0] is not self or self._summarised:
            return
        self._summarised = True
        findings = [f for cb in owners for f in cb.findings]
        if not trainer.is_global_zero:
            return
        rows = summary_rows(findings)
        title = f"lightning_tips: {len(findings)} finding(s)"
        if rows:
            print(render_table(title, SUMMARY_COLUMNS, rows), flush=True)
            log_table(trainer, "tips/summary", SUMMARY_COLUMNS, rows)
        else:
            print(f"{title} — nothing to report.", flush=True)
        log_text(trainer, "tips/summary_text", render_table(title, SUMMARY_COLUMNS, rows, color=False))

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self._findings_log.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._findings_log.load_state_dict(state_dict)
