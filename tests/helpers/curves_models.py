"""Planted-bug models and healthy twins for the learning-curve check and the fixed-batch view."""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers.data import digits_tensors
from tests.helpers.models import Classifier, mlp


def noisy_digits_loaders(
    n_train: int = 40, n_val: int = 200, noise: float = 0.4, batch_size: int = 8, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """A tiny digits training subset with a fraction ``noise`` of its labels replaced at random
    (an overfitting recipe), and a clean validation set."""
    x, y = digits_tensors(image=False)
    g = torch.Generator().manual_seed(seed)
    ytr = y[:n_train].clone()
    flip = torch.rand(n_train, generator=g) < noise
    ytr[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    train = DataLoader(TensorDataset(x[:n_train], ytr), batch_size=batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x[1500 : 1500 + n_val], y[1500 : 1500 + n_val]), batch_size=100)
    return train, val


def big_mlp() -> nn.Module:
    """Far more capacity than 40 samples need, no dropout, no weight decay."""
    return mlp(64, 10, hidden=256, depth=2)


class DetachedClassifier(Classifier):
    """Planted bug: the network's output is detached (``.detach()`` left in ``forward``), so only a
    per-class bias gets gradients — the training loss barely moves (R2.9, T10)."""

    def __init__(self, net: nn.Module, lr: float = 1e-3) -> None:
        super().__init__(net, lr=lr)
        self.bias_only = nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).detach() + self.bias_only


class LogitsClassifier(Classifier):
    """Returns ``{"loss", "logits"}`` from both steps (accuracy way 1) and logs nothing for
    validation except ``val_acc_logged``/``val_loss_logged`` (so the curve must compute its own)."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return {"loss": loss, "logits": logits}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("val_loss_logged", loss)
        self.log("val_acc_logged", (logits.argmax(1) == y).float().mean())
        return {"loss": loss, "logits": logits}


class NoValLossClassifier(Classifier):
    """validation_step logs nothing and returns nothing: no validation loss can be seen."""

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self(batch[0])


def bn_dropout_cnn(num_classes: int = 10) -> nn.Module:
    """A small CNN with BatchNorm and Dropout: an eval-mode forward must change neither."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(32, num_classes),
    )


class Regressor(pl.LightningModule):
    """MSE regression of ``(N, F)`` float features to ``(N,)`` float targets."""

    def __init__(self, in_features: int, lr: float = 1e-2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, 1))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class DictBatchModel(Classifier):
    """Batches are dicts with keys the pack cannot map to (inputs, targets)."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch["pixels"]), batch["digit"])


class TupleOutputModel(Classifier):
    """forward returns ``(logits, features)``: not one tensor."""

    def forward(self, x: torch.Tensor) -> Any:  # type: ignore[override]
        logits = self.net(x)
        return logits, x.flatten(1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x)[0], y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        return None


class DictDataset(torch.utils.data.Dataset):
    """Digits as dicts ``{"pixels", "digit"}``."""

    def __init__(self, n: int = 64) -> None:
        self.x, self.y = digits_tensors(image=False)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixels": self.x[i], "digit": self.y[i]}


def ddp_main(out: str) -> None:
    """A 2-process CPU DDP fit with LearningCurves and FixedBatchPredictions; each rank writes what it
    saw to ``<out>/rank<r>.json``. Run as ``python -m tests.helpers.curves_models <out>``."""
    import json

    from lightning_tips.checks.curves import LearningCurves
    from lightning_tips.views.predictions import FixedBatchPredictions
    from tests.helpers.data import DigitsDataModule

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    pl.seed_everything(0)
    curves = LearningCurves()
    preds = FixedBatchPredictions(every_n_steps=2, num_samples=6)
    trainer = pl.Trainer(
        strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, limit_train_batches=4, limit_val_batches=2,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=out, callbacks=[curves, preds],
    )
    # 1500 train / 256 val samples: 750 / 128 per rank, batches of 64 — equal sizes on both ranks
    trainer.fit(LogitsClassifier(mlp(64, 10, hidden=32), lr=1e-2), datamodule=DigitsDataModule(image=False, val_limit=256))
    m = trainer.callback_metrics  # logged without sync_dist: this rank's own values
    result = {
        "history": curves.history,
        "codes": [f.code for f in curves.findings + preds.findings],
        "indices": preds.indices,
        "local": {k: m[k].item() for k in ("train_loss", "val_loss_logged", "val_acc_logged")},
    }
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    import sys

    ddp_main(sys.argv[1])
