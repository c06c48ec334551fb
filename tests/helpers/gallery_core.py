"""The galleries' harness: a case as data, one runner, the scores.

A :class:`Case` is a small real training set-up: how to build the LightningModule, how to build the
loaders, the Trainer arguments, and the root-cause code it must get (``None``: a healthy set-up that
must get no ``warning``/``error`` at all; ``info`` is allowed). :func:`run_case` fits it with
``lt.Recipe()`` at its defaults after ``lightning.seed_everything`` and returns a :class:`CaseResult`.
:func:`score` turns a list of results into per-code precision/recall and the gallery figures that
``tests/benchmarks/verdicts.py`` prints and the README quotes (:func:`markdown_table`).

Definitions (also printed by the benchmark):

- a *warning* is a finding of severity ``warning`` or ``error``, in the order the pack reported them;
- a faulty case is *caught* when one of its warnings has the expected code (or one of ``also``, the
  codes that name the same root cause as well); *root cause first* when its first warning does;
- *extra* warnings of a run: its warnings whose code is not an accepted one (for a healthy case, all);
- precision of code X: warnings of code X that were correct / all warnings of code X, over both
  galleries (a warning of X is correct on a faulty case that accepts X); recall of code X: faulty
  cases expecting X that were caught / faulty cases expecting X.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import lightning_tips as lt
from lightning_tips import Finding

Loaders = tuple[DataLoader, DataLoader | None]


@dataclass(frozen=True)
class Case:
    """One gallery set-up.

    Args:
        name: a short id (the pytest id).
        build_model: returns the LightningModule (called after the seed is set).
        build_data: returns ``(train_loader, val_loader or None)``.
        trainer_kwargs: Trainer arguments on top of :data:`TRAINER_DEFAULTS`.
        expected_code: the root-cause code a faulty case must get; ``None`` for a healthy case.
        marks: pytest marks for the case's test (``xfail`` for a known gap, with the reason).
        also: further codes that name the same root cause (accepted as correct).
        seed: the global seed (``None``: no seed — the user forgot it).
        note: what the case plants or shows, for the tables.
    """

    name: str
    build_model: Callable[[], pl.LightningModule]
    build_data: Callable[[], Loaders]
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    expected_code: str | None = None
    marks: tuple[Any, ...] = ()
    also: tuple[str, ...] = ()
    seed: int | None = 0
    note: str = ""

    @property
    def accepted(self) -> frozenset[str]:
        return frozenset(() if self.expected_code is None else (self.expected_code, *self.also))


@dataclass
class CaseResult:
    """What one run of a case gave."""

    case: Case
    findings: list[Finding]
    crash: str | None = None
    seconds: float = 0.0
    global_step: int = 0

    @property
    def warnings(self) -> list[Finding]:
        """The findings of severity warning or error, in report order."""
        return [f for f in self.findings if f.severity.value in ("warning", "error")]

    @property
    def caught(self) -> bool:
        return any(f.code in self.case.accepted for f in self.warnings)

    @property
    def root_cause_first(self) -> bool:
        ws = self.warnings
        return bool(ws) and ws[0].code in self.case.accepted

    @property
    def extra(self) -> list[Finding]:
        return [f for f in self.warnings if f.code not in self.case.accepted]

    @property
    def ok(self) -> bool:
        """Healthy: no warnings and no crash. Faulty: caught with the root cause first."""
        if self.crash is not None:
            return False
        if self.case.expected_code is None:
            return not self.warnings
        return self.caught and self.root_cause_first

    def describe(self) -> str:
        """One line per warning: ``code severity: message``, for assertion messages and notes."""
        lines = [f"{f.code} {f.severity.value}: {f.message}" for f in self.warnings]
        if self.crash:
            lines.append(f"CRASH: {self.crash}")
        return "\n".join(lines) or "(no warnings)"


TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 3,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


@contextlib.contextmanager
def _quiet_lightning() -> Any:
    """Lightning's own info lines ("GPU available", "max_epochs reached") off for the duration."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def run_case(case: Case, root_dir: str | None = None, quiet: bool = True) -> CaseResult:
    """Fit ``case`` with ``lt.Recipe()`` at defaults (after ``seed_everything(case.seed)``); never raises."""
    torch.set_num_threads(1)
    saved_seed = os.environ.pop("PL_GLOBAL_SEED", None)
    recipe = lt.Recipe()
    crash: str | None = None
    trainer: pl.Trainer | None = None
    start = time.perf_counter()
    out = io.StringIO()
    with contextlib.ExitStack() as stack:
        tmp = root_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="lt-gallery-"))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        if quiet:
            stack.enter_context(_quiet_lightning())
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(out))
        try:
            if case.seed is not None:
                pl.seed_everything(case.seed, verbose=False)
            model = case.build_model()
            train, val = case.build_data()
            kwargs = {**TRAINER_DEFAULTS, "default_root_dir": tmp, **case.trainer_kwargs}
            if val is None:
                kwargs.setdefault("limit_val_batches", 0)
            trainer = pl.Trainer(callbacks=[recipe], **kwargs)
            trainer.fit(model, train, val)
        except Exception as exc:  # a crash is a result too (reported, never raised)
            crash = f"{type(exc).__name__}: {exc}"
            if not quiet:
                traceback.print_exc()
        finally:
            os.environ.pop("PL_GLOBAL_SEED", None)
            if saved_seed is not None:
                os.environ["PL_GLOBAL_SEED"] = saved_seed
    return CaseResult(
        case=case,
        findings=list(recipe.findings),
        crash=crash,
        seconds=time.perf_counter() - start,
        global_step=trainer.global_step if trainer is not None else 0,
    )


def with_known_gaps(cases: list[Case], gaps: dict[str, str]) -> list[Case]:
    """``cases`` with ``xfail(strict=False, reason=gaps[name])`` added to the ones named in ``gaps``
    (for an ``AssertionError`` only: an :class:`OutcomeChanged` is never hidden by a known gap)."""
    import dataclasses

    import pytest

    return [
        dataclasses.replace(
            c, marks=(*c.marks, pytest.mark.xfail(strict=False, raises=AssertionError, reason=gaps[c.name]))
        )
        if c.name in gaps else c
        for c in cases
    ]


# --- recorded outcomes: what the README's table is computed from -----------------------------------
OUTCOMES_PATH = Path(__file__).resolve().parents[1] / "galleries" / "outcomes.json"
RECORD_COMMAND = "python -m tests.benchmarks.verdicts --zoo --record  (in the zoo venv; then --markdown for the README)"


class OutcomeChanged(Exception):
    """A case's warnings differ from its recorded outcome (``tests/galleries/outcomes.json``), from which
    the README's precision/recall table is computed: re-record, and regenerate the table."""


def outcome(result: CaseResult) -> dict[str, Any]:
    """The recorded form of a result: the case's expectation and its warnings (code, severity) in order."""
    return {
        "expected": result.case.expected_code,
        "also": list(result.case.also),
        "warnings": [[f.code, f.severity.value] for f in result.warnings],
        "crash": result.crash is not None,
    }


def load_outcomes(path: Path = OUTCOMES_PATH) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else {}


def check_recorded(result: CaseResult) -> None:
    """Raise :class:`OutcomeChanged` unless ``result`` is what ``outcomes.json`` records for its case."""
    recorded = load_outcomes().get(result.case.name)
    got = outcome(result)
    if recorded != got:
        raise OutcomeChanged(
            f"{result.case.name}: recorded {recorded}, got {got}:\n{result.describe()}\nre-record with `{RECORD_COMMAND}`"
        )


def recorded_results(outcomes: dict[str, dict[str, Any]]) -> list[CaseResult]:
    """Results rebuilt from recorded outcomes (enough for :func:`score`), in the file's order."""

    def never() -> Any:
        raise RuntimeError("a recorded case is not run")

    return [
        CaseResult(
            Case(name, never, never, expected_code=o["expected"], also=tuple(o.get("also", ()))),
            [Finding(code, severity, "(recorded)") for code, severity in o["warnings"]],
            crash="(recorded crash)" if o["crash"] else None,
        )
        for name, o in outcomes.items()
    ]


def run_healthy(case: Case) -> None:
    """The healthy galleries' test: the run matches its record and gives no warning and no error."""
    result = run_case(case)
    check_recorded(result)  # the README's table is computed from the recorded outcomes
    assert result.crash is None, result.crash
    assert result.global_step > 0
    assert result.warnings == [], f"{case.name} ({case.note}):\n{result.describe()}"


def run_faulty(case: Case) -> None:
    """The faulty galleries' test: the run matches its record and names the planted root cause first."""
    result = run_case(case)
    check_recorded(result)
    assert result.crash is None, result.crash
    assert result.caught, f"{case.name} ({case.note}): {case.expected_code} missed; got:\n{result.describe()}"
    assert result.root_cause_first, (
        f"{case.name} ({case.note}): {case.expected_code} is not the first warning:\n{result.describe()}"
    )


# --- scores ----------------------------------------------------------------------------------------
@dataclass
class CodeScore:
    code: str
    warned: int = 0  # warnings of this code (over both galleries)
    correct: int = 0  # ... on a faulty case that accepts this code
    expected: int = 0  # faulty cases expecting this code
    caught: int = 0  # ... that were caught

    @property
    def precision(self) -> float:
        return self.correct / self.warned if self.warned else math.nan

    @property
    def recall(self) -> float:
        return self.caught / self.expected if self.expected else math.nan


@dataclass
class Scores:
    codes: dict[str, CodeScore]
    healthy_runs: int
    healthy_clean: int  # healthy runs with zero warnings
    healthy_warnings: int  # warnings over all healthy runs
    faulty_runs: int
    caught: int
    root_cause_first: int
    extra_total: int  # extra warnings over all faulty runs
    crashes: int

    @property
    def caught_pct(self) -> float:
        return 100.0 * self.caught / self.faulty_runs if self.faulty_runs else math.nan

    @property
    def first_pct(self) -> float:
        return 100.0 * self.root_cause_first / self.faulty_runs if self.faulty_runs else math.nan

    @property
    def mean_extra(self) -> float:
        return self.extra_total / self.faulty_runs if self.faulty_runs else math.nan


def score(results: Sequence[CaseResult]) -> Scores:
    """Per-code precision/recall and the gallery figures (definitions in the module docstring)."""
    codes: dict[str, CodeScore] = {}

    def entry(code: str) -> CodeScore:
        return codes.setdefault(code, CodeScore(code))

    healthy = [r for r in results if r.case.expected_code is None]
    faulty = [r for r in results if r.case.expected_code is not None]
    for r in results:
        for f in r.warnings:
            e = entry(f.code)
            e.warned += 1
            e.correct += f.code in r.case.accepted
    for r in faulty:
        assert r.case.expected_code is not None
        e = entry(r.case.expected_code)
        e.expected += 1
        e.caught += r.caught
    return Scores(
        codes=dict(sorted(codes.items())),
        healthy_runs=len(healthy),
        healthy_clean=sum(not r.warnings and r.crash is None for r in healthy),
        healthy_warnings=sum(len(r.warnings) for r in healthy),
        faulty_runs=len(faulty),
        caught=sum(r.caught for r in faulty),
        root_cause_first=sum(r.root_cause_first for r in faulty),
        extra_total=sum(len(r.extra) for r in faulty),
        crashes=sum(r.crash is not None for r in results),
    )


def done_when(s: Scores) -> list[tuple[str, bool]]:
    """Issue #11's "Done when" criteria on these scores: ``[(criterion with the figure, met), ...]``."""
    return [
        (f"healthy gallery: 0 warnings (got {s.healthy_warnings} in {s.healthy_runs - s.healthy_clean} runs)",
         s.healthy_warnings == 0 and s.healthy_clean == s.healthy_runs),
        (f"faulty gallery: >= 95% caught (got {s.caught_pct:.1f}%)", s.caught_pct >= 95.0),
        (f"faulty gallery: root cause first in >= 90% (got {s.first_pct:.1f}%)", s.first_pct >= 90.0),
        (f"faulty gallery: <= 1 extra warning per run on average (got {_fmt(s.mean_extra)})", s.mean_extra <= 1.0),
    ]


def _fmt(x: float, pct: bool = False) -> str:
    if math.isnan(x):
        return "—"
    return f"{x:.0f}%" if pct else f"{x:.2f}"


def markdown_table(s: Scores) -> str:
    """The README's table: one row per code, then the gallery figures. Deterministic for given results."""
    lines = [
        "| code | warnings | correct | precision | faulty cases | caught | recall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in s.codes.values():
        row = [f"`{c.code}`", c.warned, c.correct, _fmt(c.precision), c.expected, c.caught, _fmt(c.recall)]
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    lines += [
        "",
        f"Healthy gallery: {s.healthy_clean}/{s.healthy_runs} runs without a warning "
        f"({s.healthy_warnings} warnings in all). Faulty gallery: {s.faulty_runs} planted bugs, "
        f"caught {_fmt(s.caught_pct, pct=True)}, root cause named first {_fmt(s.first_pct, pct=True)}, "
        f"{_fmt(s.mean_extra)} extra warnings per run on average.",
    ]
    return "\n".join(lines)


def results_table(results: Sequence[CaseResult]) -> str:
    """Per-case markdown rows: case, expected, outcome, the warnings (code: message)."""
    lines = ["| case | expected | outcome | s | warnings (code: message) |", "|---|---|---|---:|---|"]
    for r in results:
        exp = r.case.expected_code or "—"
        if r.crash:
            outcome = "CRASH"
        elif r.case.expected_code is None:
            outcome = "clean" if not r.warnings else f"{len(r.warnings)} warning(s)"
        elif r.root_cause_first:
            outcome = "first" + (f", +{len(r.extra)} extra" if r.extra else "")
        elif r.caught:
            outcome = "caught, not first" + (f", +{len(r.extra)} extra" if r.extra else "")
        else:
            outcome = "MISSED" + (f", +{len(r.extra)} other" if r.extra else "")
        ws = "; ".join(f"`{f.code}` {f.severity.value}: {f.message}" for f in r.warnings)
        if r.crash:
            ws = (ws + "; " if ws else "") + f"crash: {r.crash}"
        ws = ws.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r.case.name} | {exp} | {outcome} | {r.seconds:.1f} | {ws[:600]} |")
    return "\n".join(lines)


# --- the LightningModule every plain case uses ------------------------------------------------------
OptFactory = Callable[[Any], torch.optim.Optimizer]
SchedFactory = Callable[[torch.optim.Optimizer, int], Any]


class Task(pl.LightningModule):
    """Wraps an ``nn.Module``: ``loss(net(x), y)``, one optimizer, an optional scheduler config.

    Args:
        net: the model.
        loss: ``"ce"`` (cross-entropy), ``"bce"`` (with logits), ``"mse"``, or any callable.
        optimizer: builds the optimizer from the parameters (default Adam 1e-3).
        scheduler: ``(optimizer, total_steps) -> scheduler or Lightning lr_scheduler dict``.
        accuracy: log ``val_acc`` (argmax for ``ce``, ``> 0`` for ``bce``).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "ce",
        optimizer: OptFactory | None = None,
        scheduler: SchedFactory | None = None,
        accuracy: bool = True,
    ) -> None:
        super().__init__()
        self.net = net
        self.loss_name = loss if isinstance(loss, str) else "custom"
        self.loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
        if loss == "ce":
            self.loss_fn = F.cross_entropy
        elif loss == "bce":
            self.loss_fn = F.binary_cross_entropy_with_logits
        elif loss == "mse":
            self.loss_fn = F.mse_loss
        elif callable(loss):
            self.loss_fn = loss
        else:
            raise ValueError(f"unknown loss {loss!r}")
        self.make_optimizer = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.make_scheduler = scheduler
        self.accuracy = accuracy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _xy(self, batch: Any) -> tuple[Any, torch.Tensor]:
        if isinstance(batch, dict):
            return batch["x"], batch["y"]
        if isinstance(batch, (list, tuple)) and len(batch) == 1:  # unlabeled: reconstruct the input
            return batch[0], batch[0]
        return batch[0], batch[1]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = self._xy(batch)
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = self._xy(batch)
        out = self(x)
        self.log("val_loss", self.loss_fn(out, y))
        if self.accuracy and self.loss_name == "ce" and out.dim() == 2:
            self.log("val_acc", (out.argmax(1) == y).float().mean())
        elif self.accuracy and self.loss_name == "bce":
            self.log("val_acc", ((out > 0).float() == y).float().mean())

    def configure_optimizers(self) -> Any:
        opt = self.make_optimizer(self.parameters())
        if self.make_scheduler is None:
            return opt
        total = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": self.make_scheduler(opt, total)}
