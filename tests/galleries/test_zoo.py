"""The galleries on real architectures (torchvision, timm, Hugging Face transformers built from tiny
configs, never downloaded). Marked ``zoo``; skipped unless the ``zoo`` extra is installed. CI runs them
in a second venv: ``python -m pytest -q -m zoo tests/galleries``."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers.gallery_core import Case, run_faulty, run_healthy

_MISSING = [m for m in ("torchvision", "timm", "transformers") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.zoo,
    pytest.mark.skipif(bool(_MISSING), reason=f"the zoo extra is not installed (missing: {', '.join(_MISSING)})"),
]

if _MISSING:
    ZOO_HEALTHY: list[Case] = []
    ZOO_FAULTY: list[Case] = []
else:
    from tests.helpers.gallery_zoo import ZOO_FAULTY, ZOO_HEALTHY


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in ZOO_HEALTHY])
def test_real_architecture_gets_no_warning(case: Case) -> None:
    run_healthy(case)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in ZOO_FAULTY])
def test_planted_bug_in_real_architecture_is_named_first(case: Case) -> None:
    run_faulty(case)


def test_zoo_gallery_covers_the_three_libraries() -> None:
    names = " ".join(c.name for c in ZOO_HEALTHY)
    assert all(lib in names for lib in ("tv-", "timm-", "hf-"))
