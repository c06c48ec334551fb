"""Small healthy models for tests. Planted-bug twins live beside the tests that use them."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn


class Classifier(pl.LightningModule):
    """Wraps any ``nn.Module`` as a classifier: cross-entropy, Adam, logs train/val loss and accuracy."""

    def __init__(
        self,
        net: nn.Module,
        lr: float = 1e-3,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        optimizer: str = "adam",
    ) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.loss_fn = loss_fn or F.cross_entropy
        self.optimizer = optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", self.loss_fn(logits, y))
        if logits.dim() == 2 and logits.shape[1] > 1:
            self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr)
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def small_cnn(num_classes: int = 10, channels: int = 8) -> nn.Module:
    """A small CNN for 1x8x8 digits (also works on 1x28x28)."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(2 * channels * 16, num_classes),
    )


def mlp(in_features: int = 64, num_classes: int = 10, hidden: int = 32, depth: int = 2,
        activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    """A plain MLP: ``depth`` hidden layers of ``hidden`` units with ``activation``."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class ManualClassifier(Classifier):
    """A classifier trained with manual optimization (fixes and checks that need Lightning's loop skip it).

    ``training_step`` returns None (no loss for the curve, nothing for the checks that re-run it) unless
    ``report_loss``, which logs ``train_loss`` and returns the loss."""

    def __init__(self, net: nn.Module, lr: float = 1e-3, report_loss: bool = False) -> None:
        super().__init__(net, lr=lr)
        self.automatic_optimization = False
        self.report_loss = report_loss

    def training_step(  # type: ignore[override]
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int,
    ) -> torch.Tensor | None:
        opt = self.optimizers()
        x, y = batch
        loss = self.loss_fn(self(x), y)
        opt.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        opt.step()  # type: ignore[union-attr]
        if not self.report_loss:
            return None
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss


class TokenClassifier(Classifier):
    """Integer token ids ``(N, T)`` -> class logits (inputs that are not images).

    By default the digits as tokens (vocabulary 17 = the gray levels, ``T = seq_len = 64``): an ``dim``-wide
    embedding per token, flattened, a linear head. ``bag=True``: an ``EmbeddingBag`` averaging the tokens
    straight into ``num_classes`` logits (any ``T``)."""

    def __init__(self, vocab: int = 17, num_classes: int = 10, *, bag: bool = False, seq_len: int = 64,
                 dim: int = 8) -> None:
        net: nn.Module
        if bag:
            net = nn.EmbeddingBag(vocab, num_classes, mode="mean")
        else:
            net = nn.Sequential(nn.Embedding(vocab, dim), nn.Flatten(), nn.Linear(seq_len * dim, num_classes))
        super().__init__(net)
