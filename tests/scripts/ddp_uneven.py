"""DDP (2 CPU processes, gloo) with uneven training data: rank 0 has 64 samples, rank 1 has 96 (batch 16).

``use_distributed_sampler=False``, so rank 0 runs 4 batches per epoch and rank 1 runs 6. Plain
Lightning fails fast here (a gloo collective loses its peer); with the pack attached the run must
still end — training completes or every rank exits with an error — never hang. Each rank writes
``<out>/rank<r>.json`` when its ``fit`` returns (or raises). Run by ``tests/test_ddp_uneven.py``:

    python tests/scripts/ddp_uneven.py {plain,recipe,curves} OUT_DIR [EVERY_N_STEPS]
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_tips as lt
from tests.helpers.data import digits_tensors
from tests.helpers.models import Classifier, small_cnn


class UnevenData(pl.LightningDataModule):
    """Rank 0: 64 training digits (4 batches); rank 1: 96 (6 batches). No distributed sampler."""

    def train_dataloader(self) -> DataLoader:
        x, y = digits_tensors()
        n = 64 if self.trainer is None or self.trainer.global_rank == 0 else 96
        return DataLoader(TensorDataset(x[:n], y[:n]), batch_size=16, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        x, y = digits_tensors()
        return DataLoader(TensorDataset(x[1500:1564], y[1500:1564]), batch_size=16)


def main(mode: str, out: Path, every_n_steps: int = 2) -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test dumps the stacks before it kills a hang
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    callbacks = {
        "plain": [],
        "recipe": [lt.Recipe(every_n_steps=every_n_steps)],
        "curves": [lt.LearningCurves()],  # alone: its first collective would come at an epoch end
    }[mode]
    trainer = pl.Trainer(
        strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, use_distributed_sampler=False,
        callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(out),
    )
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    start = time.perf_counter()
    result: dict[str, object] = {"rank": rank}
    try:
        trainer.fit(Classifier(small_cnn()), datamodule=UnevenData())
        result.update(outcome="completed", global_step=trainer.global_step)
    except BaseException as e:  # record how this rank ended, then re-raise
        result.update(outcome="error", error=f"{type(e).__name__}: {e}"[:500])
        raise
    finally:
        result["seconds"] = time.perf_counter() - start
        Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 2)
