"""Reporting a :class:`~lightning_tips.checks._preflight.Verdict` from a runtime callback.

The decision and its message are built by a pure ``*_verdict`` function; the callback's hook only
measures, hands the measurements over, and reports what comes back with :func:`report_verdict`.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl

from lightning_tips._callback import TipCallback
from lightning_tips.checks._preflight import Verdict
from lightning_tips.findings import Finding

__all__ = ["report_verdict"]


def report_verdict(
    callback: TipCallback,
    trainer: pl.Trainer | None,
    verdict: Verdict,
    *,
    step: int | None = None,
    figures: Mapping[str, float] | None = None,
) -> Finding | None:
    """Report ``verdict`` (not a pass: its ``severity`` is set) through ``callback.report``, at ``step``
    (``None``: the trainer's global step), with ``figures`` instead of the verdict's when given (a
    subset that decides when the finding is new again). Returns what ``report`` returns."""
    if verdict.severity is None:
        raise ValueError(f"a passing verdict ({verdict.code!r}) is not a finding")
    return callback.report(
        trainer, verdict.code, verdict.severity, verdict.message, advice=verdict.advice, module=verdict.module,
        figures=verdict.figures if figures is None else figures, step=step, skipped=verdict.skipped,
    )
