"""The README's verdict table is computed from the recorded gallery outcomes (``outcomes.json``); every
gallery test checks its case against that record, so the table cannot drift from what the pack does.
The known gaps (xfail) are exactly the recorded cases that miss their target."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.gallery_cases import FAULTY, HEALTHY, KNOWN_GAPS
from tests.helpers.gallery_core import RECORD_COMMAND, load_outcomes, markdown_table, recorded_results, score

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_table_is_the_recorded_outcomes_scored() -> None:
    section = README.split("<!-- verdicts:start -->\n")[1].split("<!-- verdicts:end -->")[0]
    assert section.strip() == markdown_table(score(recorded_results(load_outcomes()))).strip(), (
        "regenerate with `python -m tests.benchmarks.verdicts --recorded`"
    )


def test_every_plain_case_is_recorded_with_its_expectation() -> None:
    recorded = load_outcomes()
    for case in HEALTHY + FAULTY:
        assert case.name in recorded, f"{case.name} has no recorded outcome: {RECORD_COMMAND}"
        assert recorded[case.name]["expected"] == case.expected_code, case.name


def test_known_gaps_are_exactly_the_recorded_misses() -> None:
    by_name = {r.case.name: r for r in recorded_results(load_outcomes())}
    misses = {c.name for c in HEALTHY + FAULTY if not by_name[c.name].ok}
    assert misses == set(KNOWN_GAPS), "KNOWN_GAPS in tests/helpers/gallery_cases.py must list the recorded misses"
