"""The findings contract: codes, severities, the warning's exact form, de-duplication, state."""

from __future__ import annotations

import re
import warnings

import pytest

import lightning_tips as lt
from lightning_tips.findings import CODES, Finding, FindingsLog, Severity, TipError, TipWarning, explain, report
from tests.helpers.data import DigitsDataModule
from tests.helpers.models import Classifier, small_cnn
from tests.helpers.reporting import Scripted

DESIGN_CODES = [
    "nonfinite-loss", "nonfinite-gradient", "nonfinite-input", "exploding-gradient", "vanishing-gradient",
    "dead-activation", "saturated-activation", "init-loss", "output-activation", "unnormalized-input",
    "batch-mixing", "input-independent", "not-learning", "lr-decay", "class-imbalance", "duplicate-data",
    "overfitting",
]


def test_every_design_code_is_registered_and_documented() -> None:
    for code in DESIGN_CODES:
        assert code in CODES, code
    for code, info in CODES.items():
        assert info.code == code
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", code)
        assert info.kind in {"check", "fix", "view"}
        assert len(info.explanation) > 60 and info.thresholds and info.advice and info.title
        assert info.tips and all(re.fullmatch(r"(R\d(\.\d+)?|T\d+|P\d+)", t) for t in info.tips), info.tips
        text = explain(code)
        assert text.startswith(f"{code} ({info.kind}): {info.title}")
        assert "Thresholds:" in text and "Tips:" in text


def test_unknown_code_and_bad_severity_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"Unknown finding code 'nan-loss'\. Expected one of: nonfinite-loss"):
        Finding("nan-loss", "error", "x")
    with pytest.raises(ValueError, match=r"Expected severity to be one of 'info', 'warning', 'error' but got 'fatal'"):
        Finding("nonfinite-loss", "fatal", "x")
    with pytest.raises(ValueError, match="Unknown finding code"):
        explain("nope")


def test_finding_defaults_and_exact_warning_form() -> None:
    f = Finding("dead-activation", Severity.WARNING, "72% of units never fire", module="net.1", step=40)
    assert f.severity is Severity.WARNING and f.tips == CODES["dead-activation"].tips
    assert f.advice == CODES["dead-activation"].advice
    assert f.format() == f"[dead-activation] warning: 72% of units never fire — {f.advice}"
    with pytest.warns(TipWarning) as rec:
        assert report(f)
    assert str(rec[0].message) == f.format()
    assert issubclass(TipWarning, UserWarning)


def test_tip_error_carries_the_code() -> None:
    err = TipError("nonfinite-loss", "loss is nan")
    assert isinstance(err, RuntimeError) and err.code == "nonfinite-loss" and str(err) == "loss is nan"


def test_deduplication_reports_once_unless_figures_change_materially_or_severity_rises() -> None:
    log = FindingsLog()
    base = dict(code="exploding-gradient", message="norm grew", module="rnn")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert report(Finding(severity="warning", figures={"norm": 100.0}, **base), log=log)
        assert not report(Finding(severity="warning", figures={"norm": 120.0}, **base), log=log)  # +20%: same
        assert report(Finding(severity="warning", figures={"norm": 1000.0}, **base), log=log)  # 10x: material
        assert report(Finding(severity="error", figures={"norm": 1000.0}, **base), log=log)  # escalation
        assert not report(Finding(severity="info", figures={"norm": 1000.0}, **base), log=log)
        assert report(Finding(severity="warning", figures={"norm": 100.0}, **{**base, "module": "fc"}), log=log)
    assert len(rec) == 4 and len(log.findings) == 4


def test_findings_log_state_round_trip() -> None:
    log = FindingsLog()
    log.admit(Finding("no-seed", "info", "no seed", step=0))
    log.admit(Finding("init-loss", "warning", "9.2 vs 2.3", figures={"loss": 9.2}))
    restored = FindingsLog()
    restored.load_state_dict(log.state_dict())
    assert restored.findings == log.findings
    assert not restored.admit(Finding("init-loss", "warning", "9.3 vs 2.3", figures={"loss": 9.3}))


def test_filtering_by_code_silences_one_code_and_escalates_another(make_trainer) -> None:
    cb = Scripted({1: [("no-seed", "info", "no seed", {})], 2: [("dead-activation", "warning", "dead", {})]})
    trainer = make_trainer(callbacks=[cb], limit_train_batches=4, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=r"\[no-seed\]", category=TipWarning)
        warnings.filterwarnings("error", message=r"\[dead-activation\]", category=TipWarning)
        with pytest.raises(TipWarning, match=r"^\[dead-activation\] warning: dead"):
            trainer.fit(Classifier(small_cnn()), DigitsDataModule())
    assert not [w for w in rec if "[no-seed]" in str(w.message)]


def test_findings_reach_callback_and_are_reported_once_per_fit(make_trainer) -> None:
    cb = Scripted({1: [("init-loss", "warning", "high", {"loss": 9.0})], 2: [("init-loss", "warning", "high", {"loss": 9.1})]})
    with pytest.warns(TipWarning) as rec:
        make_trainer(callbacks=[cb], limit_train_batches=4, limit_val_batches=0).fit(
            Classifier(small_cnn()), DigitsDataModule()
        )
    assert [str(w.message) for w in rec if issubclass(w.category, TipWarning)] == [cb.findings[0].format()]
    assert len(cb.findings) == 1 and cb.findings[0].step == 2 and cb.findings[0].module == "net.0"
    # a second fit with the same callback starts afresh: reported again
    with pytest.warns(TipWarning):
        make_trainer(callbacks=[cb], limit_train_batches=4, limit_val_batches=0).fit(
            Classifier(small_cnn()), DigitsDataModule()
        )
    assert len(cb.findings) == 1


def test_public_surface_exports_the_finding_types() -> None:
    for name in ("Finding", "TipWarning", "TipError", "Severity", "CODES", "report", "explain"):
        assert name in lt.__all__ and hasattr(lt, name)
