"""The healthy gallery (issue #11): typical, correct set-ups where ``lt.Recipe()`` at defaults must
report no warning and no error (infos are fine). Each case is a small real ``Trainer.fit``; the
cases and the known gaps (xfail) are in tests/helpers/gallery_cases.py."""

from __future__ import annotations

import pytest

from tests.helpers.gallery_cases import HEALTHY
from tests.helpers.gallery_core import Case, run_healthy

pytestmark = pytest.mark.slow  # ~2 min together: out of the fast subset, in CI


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in HEALTHY])
def test_healthy_setup_gets_no_warning(case: Case) -> None:
    run_healthy(case)


def test_gallery_is_big_enough_and_named_uniquely() -> None:
    names = [c.name for c in HEALTHY]
    assert len(names) >= 30 and len(set(names)) == len(names)
    assert all(c.expected_code is None for c in HEALTHY)
