"""Test probes shared by several test files: host-sync spying and reading the files sink's scalars."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

SYNC_METHODS = ("item", "tolist", "__bool__", "__float__")


class SyncSpy(pl.Callback):
    """Counts every ``Tensor.item/tolist/__bool__/__float__`` called from ``files``, labelled with the
    global step of the batch it happened in (``"end"`` after training). Put it first in ``callbacks``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, files: Iterable[str]) -> None:
        self.files = {Path(f).resolve() for f in files}
        self.calls: list[Any] = []
        self.now: Any = -1
        for name in SYNC_METHODS:
            original = getattr(torch.Tensor, name)

            def spy(tensor: torch.Tensor, *a: Any, _orig: Any = original, **k: Any) -> Any:
                if Path(sys._getframe(1).f_code.co_filename).resolve() in self.files:
                    self.calls.append(self.now)
                return _orig(tensor, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, spy)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.now = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.now = "end"


def file_scalars(root: Path) -> dict[str, list[float]]:
    """``tips/scalars.csv`` of a run without a logger, as ``{key: [values in order]}``."""
    out: dict[str, list[float]] = {}
    with (root / "tips" / "scalars.csv").open() as f:
        for row in csv.DictReader(f):
            out.setdefault(row["key"], []).append(float(row["value"]))
    return out
