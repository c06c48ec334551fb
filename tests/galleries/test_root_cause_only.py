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


def test_units_killed_by_exploding_updates_are_evidence_of_the_explosion() -> None:
    """SGD lr 5: the gradients explode at step 5, then 73% of a ReLU layer is dead — a consequence."""
    result = run_case(_CASES["sgd-lr-5"])
    assert result.crash is None, result.crash
    assert result.warnings[0].code == "exploding-gradient", result.describe()
    assert "dead-activation" not in {f.code for f in result.warnings}, result.describe()
    assert any(f.code == "dead-activation" and f.cause == "exploding-gradient" for f in result.findings)


# case -> what the pre-flight `not-learning` info must name (the copy's loss went non-finite or did not move
# for a reason the runtime reports itself: it is evidence, not a warning before the root cause)
PREFLIGHT_NAMES: dict[str, str] = {
    "sgd-lr-1e6": "the likely root cause is the learning rate: lr 1e+06 is 1e+06x the top",
    "nan-backward": "the first backward already made non-finite gradients",
    "sgd-lr-5": "the likely root cause is the learning rate, lr 5 is 5x the top",
    "deep-sigmoid": "the gradients vanish",
}


@pytest.mark.parametrize("name", sorted(PREFLIGHT_NAMES))
def test_preflight_not_learning_is_evidence_of_the_runtime_root_cause(name: str) -> None:
    case = _CASES[name]
    result = run_case(case)
    assert result.crash is None, result.crash
    assert result.root_cause_first, result.describe()
    assert "not-learning" not in {f.code for f in result.warnings}, result.describe()
    pre = [f for f in result.findings if f.code == "not-learning" and f.message.startswith("overfit one batch")]
    assert len(pre) == 1 and pre[0].severity.value == "info", pre
    assert PREFLIGHT_NAMES[name] in pre[0].message, pre[0].message


@pytest.mark.parametrize("name", ["frozen-model", "detached-body", "lr-zero"])
def test_preflight_not_learning_stays_a_warning_when_it_is_the_root_cause(name: str) -> None:
    result = run_case(_CASES[name])
    assert result.crash is None, result.crash
    first = result.warnings[0]
    assert first.code == "not-learning" and first.message.startswith("overfit one batch"), result.describe()
