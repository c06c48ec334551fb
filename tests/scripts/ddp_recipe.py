"""DDP (2 CPU processes, gloo): ``Recipe`` on the digits, with a bug in rank 1's data only.

Rank 1's training shard is unnormalised (x * 100 + 500); rank 0's is standardised. Every rank writes
``<out>/rank<r>.json`` from inside the fit (``on_fit_end``; under ``ddp_spawn`` the parent's trainer
never trains) with its finding codes, global step, ``should_stop``, the TipWarnings it emitted and the
pre-flight card. Run by ``tests/test_ddp_recipe.py``:

    python tests/scripts/ddp_recipe.py {ddp,ddp_spawn} OUT_DIR
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

import lightning_tips as lt
from lightning_tips.findings import TipWarning
from tests.helpers.data import digits_tensors
from tests.helpers.models import Classifier, small_cnn


class RankData(pl.LightningDataModule):
    """512 training digits (sharded by Lightning's DistributedSampler); rank 1 sees them unnormalised."""

    def train_dataloader(self) -> DataLoader:
        x, y = digits_tensors()
        x, y = x[:512], y[:512]
        if self.trainer is not None and self.trainer.global_rank == 1:
            x = x * 100.0 + 500.0  # the planted bug: rank 1's inputs far from zero-mean/unit-scale (T12)
        return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        x, y = digits_tensors()
        return DataLoader(TensorDataset(x[1500:1628], y[1500:1628]), batch_size=32)


class Reporter(Callback):
    """Records this rank's TipWarnings during the fit and writes the rank's JSON at ``on_fit_end``."""

    def __init__(self, out: str) -> None:
        self.out = out
        self._cm: Any = None
        self._caught: list[warnings.WarningMessage] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._cm = warnings.catch_warnings(record=True)
        self._caught = self._cm.__enter__()
        warnings.simplefilter("always")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        recipe = next(cb for cb in trainer.callbacks if isinstance(cb, lt.Recipe))  # type: ignore[attr-defined]
        preflight = recipe.child(lt.Preflight)
        tips = [str(w.message) for w in self._caught if issubclass(w.category, TipWarning)]
        self._cm.__exit__(None, None, None)
        result = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "global_step": trainer.global_step,
            "should_stop": trainer.should_stop,
            "findings": [f.to_dict() for f in recipe.findings],
            "tip_warnings": tips,
            "card": [[line.check, line.status, line.detail] for line in getattr(preflight, "card", [])],
            "finite_weights": all(bool(torch.isfinite(p).all()) for p in pl_module.parameters()),
        }
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(result, default=str))


def main(strategy: str, out: Path) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        strategy=strategy, accelerator="cpu", devices=2, max_epochs=2, limit_train_batches=6, limit_val_batches=2,
        callbacks=[lt.Recipe(every_n_steps=2, view_every_n_steps=4), Reporter(str(out))], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out),
    )
    trainer.fit(Classifier(small_cnn()), datamodule=RankData())


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
