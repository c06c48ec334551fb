"""The findings contract: codes, severities, the warning's exact form, de-duplication, state."""

from __future__ import annotations

import re
import warnings

import lightning.pytorch as pl
import pytest
import torch

import lightning_tips as lt
from lightning_tips._report import report
from lightning_tips.findings import (
    CODES,
    ROOT_CAUSES,
    Finding,
    FindingsLog,
    Severity,
    TipError,
    TipWarning,
    demote,
    explain,
    root_cause,
)
from tests.helpers.data import DigitsDataModule
from tests.helpers.models import Classifier, small_cnn
from tests.helpers.preflight_models import digits_loader
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
    # one problem, one warning: the material change and the other layer are kept as infos, not warned again
    assert [str(w.message).split(":")[0] for w in rec] == ["[exploding-gradient] warning", "[exploding-gradient] error"]
    assert [(f.severity.value, f.cause) for f in log.findings] == [
        ("warning", None), ("info", "exploding-gradient"), ("error", None), ("info", "exploding-gradient")]
    assert log.findings[1].message == "again (already warned): norm grew"


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


# --- root causes ------------------------------------------------------------------------------------
def test_root_cause_table_is_one_consistent_place() -> None:
    roots = [row.root for row in ROOT_CAUSES]
    assert len(roots) == len(set(roots))
    for row in ROOT_CAUSES:
        assert row.root in CODES and row.why and row.root not in row.explains
        assert all(code in CODES for code in row.explains), row
    table = {row.root: row for row in ROOT_CAUSES}
    for root in ("nonfinite-loss", "nonfinite-input", "nonfinite-gradient"):
        assert {"dead-activation", "saturated-activation", "not-learning", "init-loss", "vanishing-gradient",
                "exploding-gradient", "input-independent", "overfitting"} <= set(table[root].explains)
    assert set(table["dead-activation"].explains) == {"input-independent", "vanishing-gradient", "not-learning"}
    assert table["dead-activation"].at_least == 1.0
    assert set(table["unnormalized-input"].explains) == {"init-loss", "dead-activation", "saturated-activation",
                                                        "exploding-gradient"}
    assert {"init-loss", "loss-reduction"} <= set(table["output-bias"].explains)
    assert set(table["exploding-gradient"].explains) == {"dead-activation", "saturated-activation"}
    assert "Explained by (when reported earlier in the fit): nonfinite-input" in explain("not-learning")
    assert "Root cause of" in explain("nonfinite-loss") and "Root cause of" not in explain("no-seed")


def test_root_cause_needs_the_root_first_and_not_skipped_and_dead_means_all_dead() -> None:
    nan = Finding("nonfinite-loss", "error", "loss is nan")
    partly = Finding("dead-activation", "warning", "60% dead", figures={"dead_fraction": 0.6})
    alldead = Finding("dead-activation", "warning", "100% dead", figures={"dead_fraction": 1.0})
    ind = Finding("input-independent", "warning", "output unchanged")
    assert root_cause(ind, [partly]) is None and root_cause(ind, [alldead]) is alldead
    vanish = Finding("vanishing-gradient", "warning", "first layer gets 0")
    assert root_cause(vanish, [partly]) is None and root_cause(vanish, [alldead]) is alldead
    scale = Finding("unnormalized-input", "warning", "RMS 236")
    assert root_cause(partly, [scale]) is scale and root_cause(scale, [partly]) is None
    assert root_cause(partly, [nan]) is nan and root_cause(nan, [partly, ind]) is None
    assert root_cause(ind, [Finding("nonfinite-loss", "info", "skipped", skipped=True)]) is None
    assert root_cause(ind, [demote(alldead, nan)]) is None  # a demoted finding is no root
    d = demote(partly, nan)
    assert d.severity is Severity.INFO and d.cause == "nonfinite-loss" and not d.advice
    assert d.format() == "[dead-activation] info: consequence of [nonfinite-loss]: 60% dead"
    assert Finding.from_dict(d.to_dict()) == d


class _NaNAt(Classifier):
    """Healthy until ``step``, where the first layer's weights become NaN."""

    def __init__(self, step: int | None) -> None:
        super().__init__(small_cnn())
        self.nan_step = step

    def on_train_batch_start(self, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if self.global_step == self.nan_step:
            with torch.no_grad():
                self.net[0].weight.fill_(float("nan"))


def _recipe_fit(make_trainer, model: Classifier) -> tuple[lt.Recipe, list[warnings.WarningMessage]]:
    pl.seed_everything(0)
    recipe = lt.Recipe(every_n_steps=2, nonfinite_action="warn", preflight=False)
    trainer = make_trainer(max_steps=20, limit_val_batches=0, callbacks=[recipe])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        trainer.fit(model, train_dataloaders=digits_loader())
    return recipe, [w for w in rec if issubclass(w.category, TipWarning)]


def test_nan_at_step_k_gives_one_warning_and_its_consequences_as_evidence(make_trainer) -> None:
    recipe, warned = _recipe_fit(make_trainer, _NaNAt(6))
    loud = [str(w.message) for w in warned if "] warning:" in str(w.message) or "] error:" in str(w.message)]
    assert len(loud) == 1 and loud[0].startswith("[nonfinite-loss] error: the loss is nan at step 6"), loud
    # the monitors no longer measure from NaN statistics at all; whatever still follows is demoted evidence
    consequences = [f for f in recipe.findings if f.cause == "nonfinite-loss"]
    assert {f.code for f in consequences} <= {"dead-activation", "saturated-activation",
                                                               "not-learning", "vanishing-gradient",
                                                               "exploding-gradient", "nonfinite-gradient"}
    assert all(f.severity is Severity.INFO and f.message.startswith("consequence of [nonfinite-loss]: ")
               for f in consequences)
    assert not [w for w in warned if "consequence of" in str(w.message)]  # kept in the summary, not warned
    assert {w.filename for w in warned} == {__file__}  # located at the user's `trainer.fit(...)` line


def test_healthy_twin_without_nan_reports_dead_units_as_its_own_warning(make_trainer) -> None:
    model = _NaNAt(None)
    with torch.no_grad():
        model.net[0].bias.fill_(-100.0)  # every unit of net.1 dead, no NaN anywhere
    recipe, warned = _recipe_fit(make_trainer, model)
    dead = [f for f in recipe.findings if f.code == "dead-activation" and f.module == "net.1"]
    assert dead and dead[0].severity is Severity.WARNING and dead[0].cause is None
    # no NaN: nothing is attributed to a non-finite root; the dead layer itself explains what follows it
    assert {f.cause for f in recipe.findings if f.cause is not None} <= {"dead-activation"}
    assert any(str(w.message).startswith("[dead-activation] warning") for w in warned)


def test_a_fix_the_pack_applied_explains_the_init_loss_remark_across_callbacks(make_trainer) -> None:
    fix = Scripted({1: [("output-bias", "info", "set the bias of `head` to the log prior", {})]})
    check = Scripted({2: [("init-loss", "warning", "initial loss 0.9 vs prior entropy 0.5", {"loss": 0.9})]})
    trainer = make_trainer(callbacks=[fix, check], limit_train_batches=4, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        trainer.fit(Classifier(small_cnn()), DigitsDataModule())
    assert not [w for w in rec if "[init-loss]" in str(w.message)]
    (f,) = check.findings
    assert f.cause == "output-bias" and f.severity is Severity.INFO


def test_warning_points_at_the_users_line_and_filters_by_module(make_trainer) -> None:
    cb = Scripted({1: [("init-loss", "warning", "high", {"loss": 9.0})]})
    trainer = make_trainer(callbacks=[cb], limit_train_batches=2, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        trainer.fit(Classifier(small_cnn()), DigitsDataModule())  # the line the warning names
    (w,) = [w for w in rec if issubclass(w.category, TipWarning)]
    # the innermost frame outside the pack and Lightning: here the user's own TipCallback (Scripted)
    assert w.filename.endswith("tests/helpers/reporting.py") and "lightning_tips/" not in w.filename
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", module="lightning_tips")
        report(Finding("no-seed", "info", "no seed"))
    assert not rec


def test_summary_and_logger_rows_mark_skipped_findings() -> None:
    from lightning_tips._callback import SUMMARY_COLUMNS, summary_rows
    from lightning_tips._loggers import FINDING_COLUMNS, _finding_row

    f = Finding("not-learning", "info", "overfit one batch: skipped, no optimizer", skipped=True)
    g = Finding("not-learning", "warning", "ratio 0.9")
    col = SUMMARY_COLUMNS.index("skipped")
    assert [r[col] for r in summary_rows([f, g])] == ["", "skipped"]  # warnings first
    assert _finding_row(f)[FINDING_COLUMNS.index("skipped")] == "skipped" and not _finding_row(g)[2]


def test_an_input_independent_remark_explains_nothing_its_warning_explains_not_learning() -> None:
    """The `input-independent` row is verdict-only: a pre-flight info (a saturated or dead representation
    pointing elsewhere) must not swallow a later `not-learning`; a warning (the output ignores the input) does."""
    from lightning_tips.findings import root_cause

    flat = Finding("not-learning", "warning", "the training loss did not go down")
    assert root_cause(flat, [Finding("input-independent", "info", "output constant at init (saturated)")]) is None
    ignores = Finding("input-independent", "warning", "output unchanged by zeroed and random inputs")
    assert root_cause(flat, [ignores]) is ignores
