"""The faulty gallery (issue #11): one planted bug per case; ``lt.Recipe()`` at defaults must name
the root cause (the expected code) as its first warning. The cases and the known gaps (xfail) are in
tests/helpers/gallery_cases.py; the figures over the whole gallery come from tests/benchmarks/verdicts.py."""

from __future__ import annotations

import pytest

from lightning_tips import CODES
from tests.helpers.gallery_cases import FAULTY, HEALTHY
from tests.helpers.gallery_core import Case, run_faulty

pytestmark = pytest.mark.slow  # ~2 min together: out of the fast subset, in CI


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in FAULTY])
def test_planted_bug_is_named_first(case: Case) -> None:
    run_faulty(case)


def test_gallery_is_big_enough_and_its_codes_exist() -> None:
    names = [c.name for c in FAULTY]
    assert len(names) >= 30 and len(set(names)) == len(names)
    assert not set(names) & {c.name for c in HEALTHY}
    for c in FAULTY:
        assert c.expected_code in CODES and set(c.also) <= set(CODES), c.name
