"""The galleries' scoring: precision/recall per code, caught / root cause first / extra, and the README
table — on hand-made results (no fit), so the definitions are pinned down."""

from __future__ import annotations

from torch.utils.data import DataLoader

from lightning_tips import Finding, Severity
from tests.helpers.gallery_core import Case, CaseResult, done_when, markdown_table, results_table, score


def _case(name: str, expected: str | None, also: tuple[str, ...] = ()) -> Case:
    def no_model() -> None:
        raise AssertionError("not built in this test")

    def no_data() -> tuple[DataLoader, None]:
        raise AssertionError("not built in this test")

    return Case(name, no_model, no_data, expected_code=expected, also=also)  # type: ignore[arg-type]


def _f(code: str, severity: str = "warning") -> Finding:
    return Finding(code, Severity(severity), f"{code} measured")


def test_scores_follow_the_definitions() -> None:
    results = [
        CaseResult(_case("healthy-clean", None), [_f("no-seed", "info")]),
        CaseResult(_case("healthy-noisy", None), [_f("overfitting")]),
        CaseResult(_case("nan", "nonfinite-input"), [_f("nonfinite-input", "error"), _f("not-learning")]),
        CaseResult(_case("lr", "nonfinite-loss", also=("nonfinite-gradient",)),
                   [_f("not-learning"), _f("nonfinite-gradient", "error")]),
        CaseResult(_case("missed", "overfitting"), [_f("init-loss", "info")]),
    ]
    healthy_clean, healthy_noisy, nan, lr, missed = results
    assert healthy_clean.ok and not healthy_noisy.ok
    assert nan.caught and nan.root_cause_first and [f.code for f in nan.extra] == ["not-learning"] and nan.ok
    assert lr.caught and not lr.root_cause_first and not lr.ok  # 'also' counts as the root cause
    assert not missed.caught and not missed.warnings  # infos are not warnings

    s = score(results)
    assert (s.healthy_runs, s.healthy_clean, s.healthy_warnings) == (2, 1, 1)
    assert (s.faulty_runs, s.caught, s.root_cause_first, s.extra_total) == (3, 2, 1, 2)
    assert round(s.caught_pct) == 67 and round(s.first_pct) == 33 and abs(s.mean_extra - 2 / 3) < 1e-9
    # precision over both galleries: overfitting warned once (on a healthy run) and never correctly
    assert (s.codes["overfitting"].warned, s.codes["overfitting"].precision) == (1, 0.0)
    assert (s.codes["overfitting"].expected, s.codes["overfitting"].recall) == (1, 0.0)
    assert s.codes["not-learning"].precision == 0.0 and s.codes["not-learning"].warned == 2
    assert s.codes["nonfinite-gradient"].precision == 1.0  # correct through 'also'
    assert s.codes["nonfinite-loss"].recall == 1.0 and s.codes["nonfinite-loss"].warned == 0

    table = markdown_table(s)
    assert table == markdown_table(score(results))  # deterministic: a README test can compare it
    assert "| `overfitting` | 1 | 0 | 0.00 | 1 | 0 | 0.00 |" in table
    assert "caught 67%, root cause named first 33%, 0.67 extra warnings per run" in table
    met = [ok for _, ok in done_when(s)]
    assert met == [False, False, False, True]  # 1 healthy warning; 67% caught; 33% first; 0.67 extra <= 1
    rows = results_table(results)
    assert "| lr | nonfinite-loss | caught, not first, +1 extra |" in rows and "| missed | overfitting | MISSED |" in rows
