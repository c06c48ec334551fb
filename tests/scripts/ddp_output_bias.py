"""2-process gloo DDP run of WeightInit + ForgetGateBias + OutputBiasInit over a balanced_sampler loader.

Usage: ``python tests/scripts/ddp_output_bias.py OUT_DIR`` (run by tests/fixes/test_output_bias.py).
Each rank writes ``OUT_DIR/rank<r>.json``: the targets its OutputBiasInit scan saw, the output bias
and forget-gate biases and the weights at train start (each rank seeded differently), the sample indices it trained on, and the wrapper's settings.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_tips.fixes.forget_gate import ForgetGateBias
from lightning_tips.fixes.init import WeightInit
from lightning_tips.fixes.output_bias import OutputBiasInit
from lightning_tips.fixes.sampler import balanced_sampler
from tests.helpers.fixes_models import synthetic_9_to_1

N, BATCH, SCAN_BATCHES, SEED = 800, 40, 4, 3


class IndexedData(Dataset):
    def __init__(self) -> None:
        self.x, self.y = synthetic_9_to_1(n=N, features=8)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        return {"x": self.x[i], "y": self.y[i], "idx": i}


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 8, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 2)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(len(x), 2, 4))
        return self.head(out[:, -1])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen += batch["idx"].tolist()
        return F.cross_entropy(self(batch["x"]), batch["y"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class ScanProbe(pl.Callback):
    """Before OutputBiasInit: read the batches its scan will read, then rewind the sampler's generator."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        wrapper = loader.sampler
        gen = wrapper.dataset._sampler.generator  # the BalancedSampler inside Lightning's wrapper
        state = gen.get_state()
        self.targets: list[int] = []
        for i, batch in enumerate(loader):
            if i >= SCAN_BATCHES:
                break
            self.targets += batch["y"].tolist()
        gen.set_state(state)
        self.wrapper = {"type": type(wrapper).__name__, "shuffle": wrapper.shuffle, "seed": wrapper.seed}


class After(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.bias = pl_module.head.bias.tolist()
        self.weights = {k: v.flatten()[:6].tolist() for k, v in pl_module.state_dict().items() if "weight" in k}
        r = pl_module.rnn
        self.forget = [
            (getattr(r, f"bias_ih_l0{d}")[8:16] + getattr(r, f"bias_hh_l0{d}")[8:16]).tolist() for d in ("", "_reverse")
        ]


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(100 + int(os.environ.get("LOCAL_RANK", 0)))  # ranks disagree: WeightInit must not
    warnings.simplefilter("ignore")
    data = IndexedData()
    loader = DataLoader(data, batch_size=BATCH, sampler=balanced_sampler(data.y, seed=SEED))
    probe, bias_cb, after = ScanProbe(), OutputBiasInit(max_batches=SCAN_BATCHES), After()
    model = Model()
    trainer = pl.Trainer(
        strategy="ddp", accelerator="cpu", devices=2, max_steps=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out_dir),  # not the repo
        callbacks=[WeightInit(), ForgetGateBias(), probe, bias_cb, after],
    )
    trainer.fit(model, train_dataloaders=loader)
    result = {
        "rank": trainer.global_rank,
        "scanned_targets": probe.targets,
        "bias": after.bias,
        "forget": after.forget,
        "weights": after.weights,
        "seen": model.seen,
        "wrapper": probe.wrapper,
        "findings": [f.to_dict() for f in bias_cb.findings],
    }
    (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
