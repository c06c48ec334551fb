"""``report``: the one function every callback reports a finding through.

It lives apart from :mod:`lightning_tips.findings` (pure data) because it talks to the loggers:
the layering reads bottom-up, findings → report → loggers, with no import loop.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lightning_tips._loggers import log_finding
from lightning_tips.findings import Finding, FindingsLog, TipWarning, demote, repeat, repeat_of, root_cause

if TYPE_CHECKING:  # pragma: no cover
    import lightning.pytorch as pl

__all__ = ["report", "warn_finding"]

#: The module name every TipWarning is issued under: ``python -W "ignore:::lightning_tips"`` or
#: ``warnings.filterwarnings("ignore", module="lightning_tips")`` silences them all.
WARNING_MODULE = "lightning_tips"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _library_dirs() -> tuple[str, ...]:
    dirs = [_PACKAGE_DIR, os.path.dirname(os.__file__)]
    for name in ("lightning", "lightning_fabric", "pytorch_lightning", "torch", "_pytest", "pluggy", "jsonargparse"):
        path = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(path, str):
            dirs.append(os.path.dirname(os.path.abspath(path)))
    return tuple(dirs)


def _user_frame() -> tuple[str, int]:
    """File and line of the innermost frame outside the pack, Lightning, torch and the standard
    library: the user's line that started the fit (``trainer.fit(...)``). ``("lightning_tips", 0)``
    when there is none (an interactive session with no file)."""
    skip = _library_dirs()
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(skip) and not frame.f_code.co_filename.startswith("<"):
            return frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return WARNING_MODULE, 0


def warn_finding(finding: Finding) -> None:
    """Emit ``finding`` as a :class:`TipWarning`, located at the user's line that started the fit
    (not at a library file), under the module name ``lightning_tips``."""
    filename, lineno = _user_frame()
    warnings.warn_explicit(finding.format(), TipWarning, filename, lineno, module=WARNING_MODULE)


def _earlier(trainer: pl.Trainer | None, log: FindingsLog | None) -> Iterator[Finding]:
    """This fit's findings so far: ``log``'s, then every other lightning_tips callback's."""
    seen: set[int] = set()
    logs = [log] if log is not None else []
    for cb in getattr(trainer, "callbacks", None) or []:
        other = getattr(cb, "_findings_log", None)
        if isinstance(other, FindingsLog):
            logs.append(other)
    for lg in logs:
        if id(lg) in seen:
            continue
        seen.add(id(lg))
        yield from lg.findings


def report(
    finding: Finding, trainer: pl.Trainer | None = None, log: FindingsLog | None = None, stacklevel: Any = None
) -> bool:
    """Report ``finding``: the one function every callback calls.

    When one of this fit's earlier findings (in ``log`` or any lightning_tips callback of ``trainer``)
    is its root cause by :data:`~lightning_tips.findings.ROOT_CAUSES`, the finding is demoted to an
    ``info`` "consequence of [root]: …" (:func:`~lightning_tips.findings.demote`): kept in the log and
    the summary as evidence of the root, not warned. Likewise a warning of a code this fit already
    warned about at the same or a higher severity (another callback's view of the same problem, the
    same symptom at a later step) is kept as an ``info`` "again (…): …" (:func:`~lightning_tips.
    findings.repeat_of`), not warned a second time. Then de-duplicates against ``log`` (and keeps the
    finding there), and on rank zero emits a :class:`TipWarning` ``[code] severity: message — advice``
    (located at the user's line that started the fit) and logs the finding to every logger attached
    to ``trainer``. Returns whether the finding was new (and so recorded). ``stacklevel`` is accepted
    for compatibility and ignored.

    Example:
        >>> import warnings
        >>> log = FindingsLog()
        >>> f = Finding("no-seed", "info", "no global seed was set")
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     report(f, log=log), report(f, log=log)
        (True, False)
        >>> str(w[0].message)
        '[no-seed] info: no global seed was set — call lightning.seed_everything(seed) before building the model (R2.1)'
    """
    root = root_cause(finding, _earlier(trainer, log))
    if root is not None:
        finding = demote(finding, root)
    else:
        root = repeat_of(finding, _earlier(trainer, log))
        if root is not None:  # one problem, one warning: a later warning of the same code is evidence
            finding = repeat(finding, root)
    if log is not None and not log.admit(finding):
        return False
    if trainer is None or trainer.is_global_zero:
        if root is None:
            warn_finding(finding)
        if trainer is not None:
            log_finding(trainer, finding)
    return True
