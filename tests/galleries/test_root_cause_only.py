"""Planted bugs whose consequences used to be warned as well (issue #11, "one root cause, one
warning"): the root cause must be the *only* warning; its consequences stay in the findings as
``info`` evidence (``consequence of [root]``, or a pre-flight info naming the root).

Each case is a real ``Trainer.fit`` from the faulty gallery (tests/helpers/gallery_cases.py), ~1-3 s.
The healthy twins (no warning at all) are in tests/galleries/test_healthy.py."""

from __future__ import annotations

import pytest

from tests.helpers.gallery_cases import FAULTY
from tests.helpers.gallery_core import run_case

_CASES = {c.name: c for c in FAULTY}

# case -> consequences that must be kept as info evidence (code, and the root they are attributed to)
ONLY_WARNING: dict[str, set[tuple[str, str | None]]] = {
    # ROOT_CAUSES: dead-activation at 100% explains vanishing-gradient and not-learning
    "dead-relu-bias": {("vanishing-gradient", "dead-activation"), ("not-learning", "dead-activation")},
    # ROOT_CAUSES: unnormalized-input explains init-loss and dead-activation
    "unnormalized-cancer": {("init-loss", "unnormalized-input"), ("dead-activation", "unnormalized-input")},
    "unnormalized-pixels-0-255": {("init-loss", "unnormalized-input")},
}


@pytest.mark.parametrize("name", sorted(ONLY_WARNING))
def test_root_cause_is_the_only_warning(name: str) -> None:
    case = _CASES[name]
    result = run_case(case)
    assert result.crash is None, result.crash
    assert [f.code for f in result.warnings] == [case.expected_code], result.describe()
    evidence = {(f.code, f.cause) for f in result.findings if f.severity.value == "info"}
    assert ONLY_WARNING[name] <= evidence, evidence
