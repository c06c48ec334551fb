"""Test set-up: one torch thread, W&B off (tests about W&B switch it to offline themselves),
no network, a small-Trainer factory and a clean global seed per test."""

from __future__ import annotations

import importlib.util
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

_WANDB_TMP = tempfile.mkdtemp(prefix="lt-wandb-")
os.environ.setdefault("WANDB_MODE", "disabled")
for _var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
    os.environ[_var] = _WANDB_TMP
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("PL_GLOBAL_SEED", None)

# --- zoo extra only: with torchvision installed (the registry's CUDA wheel beside the CPU torch),
# `import lightning` fails unless torchvision's op schemas exist first (torchmetrics imports
# torchvision). Guarded: without torchvision nothing more is imported; a torchvision whose compiled
# ops load is left alone. Must stay above the first lightning/torch import. See
# tests/helpers/gallery_tvops.py (the one place the workaround lives).
if importlib.util.find_spec("torchvision") is not None:
    from tests.helpers.gallery_tvops import ensure_torchvision_importable

    ensure_torchvision_importable()

import lightning.pytorch as pl  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers.fitting import trainer_factory  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _clean_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`lightning.seed_everything` sets PL_GLOBAL_SEED; keep it from leaking between tests. And start
    every test from the same random state: this torch build seeds itself randomly in each process, so a
    test that builds a model without seeding would otherwise see a different init on every run."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    torch.manual_seed(0)
    random.seed(0)


@pytest.fixture
def make_trainer(tmp_path: Path) -> Callable[..., pl.Trainer]:
    """A small CPU Trainer: no logger, no checkpointing, no progress bar, 1 epoch (override any)."""
    return trainer_factory(tmp_path)
