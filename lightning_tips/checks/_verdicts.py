"""The one verdict type of every check, and reporting it from a callback.

Every check's decision is a pure ``*_verdict`` function returning a :class:`Verdict` (``None`` or a
``severity=None`` verdict for a pass): the figures, the message and the advice are built there. A
callback's hook only measures, hands the measurements over, and reports what comes back
(:func:`report_verdict`; the pre-flight checks go through :func:`~lightning_tips.checks._preflight.settle`,
which also makes the ranks agree).

Example:
    >>> v = Verdict("init-loss", "warning", "initial loss 9.2, expected 2.3 (log 10)", figures={"loss": 9.2})
    >>> v.severity, v.figures["loss"]
    ('warning', 9.2)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import lightning.pytorch as pl

from lightning_tips._callback import TipCallback
from lightning_tips.findings import Finding

__all__ = ["Verdict", "report_verdict"]


@dataclass
class Verdict:
    """A check's conclusion for one finding code: the outcome (``severity``: ``None`` for a pass; an
    ``info`` for weak or inconclusive evidence, saying what would settle it; a ``warning``/``error`` only
    for a significant, material effect), the measured ``figures``, the message and the advice.
    ``skipped`` marks an ``info`` saying the check could not apply. In pre-flight it is one rank's
    conclusion before the ranks agree (:func:`~lightning_tips.checks._preflight.settle`)."""

    code: str
    severity: Literal["info", "warning", "error"] | None = None
    message: str = ""
    figures: dict[str, float] = field(default_factory=dict)
    module: str | None = None
    advice: str = ""
    skipped: bool = False


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
