"""DDP (2 CPU processes, gloo): a NaN loss on rank 1 only, at global step 3.

Run by ``tests/test_ddp_nonfinite.py``; each rank writes ``<out>/rank<r>.json`` with its final
global step, its guard's findings, and how many ``TipWarning``s it emitted.

    python tests/scripts/ddp_nonfinite.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_tips import TipWarning
from lightning_tips.checks.nonfinite import NonFiniteGuard
from tests.helpers.data import digits_tensors
from tests.helpers.models import mlp
from tests.helpers.runtime_models import NaNAtStep


def main(out: Path) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    x, y = digits_tensors(image=False)
    loader = DataLoader(TensorDataset(x[:512], y[:512]), batch_size=32, shuffle=False)
    guard = NonFiniteGuard(action="stop")
    trainer = pl.Trainer(
        strategy="ddp", accelerator="cpu", devices=2, max_steps=8, callbacks=[guard], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(out),
    )
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        trainer.fit(NaNAtStep(mlp(), bad_step=3, bad_rank=1), loader)
    tips = [str(m.message) for m in w if issubclass(m.category, TipWarning)]
    result = {
        "rank": trainer.global_rank,
        "global_step": trainer.global_step,
        "findings": [f.to_dict() for f in guard.findings],
        "tip_warnings": tips,
        "finite_weights": all(bool(torch.isfinite(p).all()) for p in trainer.lightning_module.parameters()),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
