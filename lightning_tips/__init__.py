"""lightning_tips: the advice for training neural networks, as Lightning callbacks.

Checks give findings (stable codes, :class:`TipWarning`), fixes change the model or the loop
when asked, views show the training in W&B, TensorBoard or files. ``Recipe`` composes them all.

Example:
    >>> import lightning_tips as lt
    >>> "nonfinite-loss" in lt.CODES
    True
"""

from lightning_tips._callback import TipCallback
from lightning_tips.findings import CODES, Finding, Severity, TipError, TipWarning, explain, report

__version__ = "0.1.0"

__all__ = [
    "CODES",
    "Finding",
    "Severity",
    "TipCallback",
    "TipError",
    "TipWarning",
    "explain",
    "report",
]
