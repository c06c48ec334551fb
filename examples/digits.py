"""The examples' data and model: scikit-learn's bundled 8x8 digits and a small CNN.

Shared by quickstart.py, buggy_model.py, cli.py and optuna_search.py. No download: the digits ship
with scikit-learn.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class DigitsData(pl.LightningDataModule):
    """1797 digits: 1500 for training, the rest for validation; standardised inputs (T12)."""

    def __init__(self, batch_size: int = 64, standardize: bool = True, shuffle: bool = True) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.standardize = standardize
        self.shuffle = shuffle

    def setup(self, stage: str) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8), values 0..16
        if self.standardize:
            x = (x - x[:1500].mean()) / x[:1500].std()
        y = torch.tensor(digits.target, dtype=torch.long)
        self.train_set = TensorDataset(x[:1500], y[:1500])
        self.val_set = TensorDataset(x[1500:], y[1500:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


class DigitsCNN(pl.LightningModule):
    """Two 3x3 convs and a linear head; Adam at 3e-3 (R3.2's 3e-4 is safe but slow for 3 epochs)."""

    def __init__(self, channels: int = 16, lr: float = 3e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 2C, 4, 4)
        )
        self.head = nn.Linear(2 * channels * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        self.log("train_acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)  # T1
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
