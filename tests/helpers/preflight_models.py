"""Planted-bug models and healthy twins for the model pre-flight checks, and data helpers.

Run as a script (``python tests/helpers/preflight_models.py ddp OUT.json``) it is the 2-process DDP
check of ``Preflight``: rank 1's regression targets are unnormalised, rank 0's are not, and every
rank must report ``init-loss`` (verdicts agree across ranks).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import fitting
from tests.helpers.data import breast_cancer_tensors, digits_tensors
from tests.helpers.models import Classifier, small_cnn

# --- data ---------------------------------------------------------------------------------------


def digits_loader(n: int = 640, batch_size: int = 64, shuffle_labels: bool = False, image: bool = True,
                  shuffle: bool = True) -> DataLoader:
    """The first ``n`` digits; ``shuffle_labels`` permutes the labels apart from the images (a planted bug)."""
    x, y = digits_tensors(image=image)
    x, y = x[:n], y[:n]
    if shuffle_labels:
        y = y[torch.randperm(n, generator=torch.Generator().manual_seed(1))]
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def digit_rows_loader(n: int = 640, batch_size: int = 64) -> DataLoader:
    """Digits as sequences: (N, T=8 rows, 8 features)."""
    x, y = digits_tensors(image=False)
    return DataLoader(TensorDataset(x[:n].reshape(-1, 8, 8), y[:n]), batch_size=batch_size, shuffle=True)


def digit_tokens_loader(n: int = 640, batch_size: int = 64) -> DataLoader:
    """Digits as token ids: the 64 raw pixel intensities 0-16 as a sequence of integers."""
    x, y = digits_tensors(normalize=False, image=False)
    return DataLoader(TensorDataset(x[:n].round().long(), y[:n]), batch_size=batch_size, shuffle=True)


def imbalanced_cancer_loader(batch_size: int = 64) -> tuple[DataLoader, float]:
    """Breast cancer, ~90% class 1 / 10% class 0 (all 357 benign + 40 malignant); and the class-1 rate."""
    x, y = breast_cancer_tensors()
    keep = torch.cat([torch.nonzero(y == 1).flatten(), torch.nonzero(y == 0).flatten()[:40]])
    x, y = x[keep], y[keep]
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True), float((y == 1).float().mean())


def regression_loader(offset: float = 0.0, n: int = 512, batch_size: int = 64) -> DataLoader:
    """Predict the mean pixel of a digit, standardised (``offset=0``) or shifted to mean ``offset``."""
    x, _ = digits_tensors(image=False)
    t = x[:n].mean(1)
    t = (t - t.mean()) / t.std() + offset
    return DataLoader(TensorDataset(x[:n], t), batch_size=batch_size, shuffle=True)


# --- LightningModules ---------------------------------------------------------------------------


class Regressor(pl.LightningModule):
    """MSE regression with one output."""

    def __init__(self, net: nn.Module, lr: float = 1e-3) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class BinaryClassifier(Classifier):
    """One logit (or probability) per sample; ``loss_fn(output, float targets)``."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(self(x).squeeze(-1), y.float())


class NoLossClassifier(Classifier):
    """training_step returns a dict without a loss (a user bug the checks must survive)."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict:  # type: ignore[override]
        return {"logits": self(batch[0])}


# --- nets: planted bugs and twins ---------------------------------------------------------------


def big_init(net: nn.Module, factor: float = 20.0) -> nn.Module:
    """Multiply the last Linear layer's weights by ``factor`` (too-large init, T9)."""
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(factor)
    return net


def set_log_prior_bias(net: nn.Module, prior: list[float]) -> nn.Module:
    """Last Linear bias to ``log p`` (R2.5, by hand) and its weights small."""
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(0.01)
        last.bias.copy_(torch.tensor([math.log(p) for p in prior]))
    return net


def summed_ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(z, y, reduction="sum")


def bn_cnn(dropout: float = 0.0) -> nn.Module:
    """Healthy twin: a small CNN with BatchNorm (and optional dropout)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(dropout), nn.Linear(16 * 16, 10),
    )  # fmt: skip


class ReshapeMixer(nn.Module):
    """Planted bug: flattens the conv features with ``reshape(-1, N).t()`` — the classic view across the
    batch: the shapes are right, the rows are not samples."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x))
        return self.fc(h.reshape(-1, x.shape[0]).t())


class RowsLSTM(nn.Module):
    """Digit rows through an LSTM; ``batch_first=False`` while fed (N, T, C) is the planted bug."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 32, batch_first=batch_first)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])  # "the last time step" — only if dim 1 is time


class RowsTransformer(nn.Module):
    """Digit rows through a transformer encoder; ``batch_first=False`` on (N, T, C) is the planted bug."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.1, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.embed(x)).mean(1))


class TokenBag(nn.Module):
    """Healthy twin with integer inputs: embedding of pixel-intensity tokens, mean over positions."""

    def __init__(self, mix: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(17, 8)
        self.fc = nn.Linear(8, 10)
        self.mix = mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).mean(1)  # (N, 8)
        if self.mix:  # planted bug: centring by hand across the batch
            h = h - h.mean(0, keepdim=True)
        return self.fc(h)


class PositionalTokens(nn.Module):
    """Healthy twin: token + learned position embeddings, the position part of shape (1, S, D) broadcast over
    the batch (as BERT/GPT-2's ``position_embeddings`` / ``wpe``), a transformer layer, mean pooling.
    ``mix=True`` plants a bug: centring the pooled features across the batch by hand. ``flat=True``: the
    positions as an ``(S, D)`` tensor (``positions(arange(S))``, no leading 1) broadcast over the batch; with
    ``S`` equal to the batch size its first dimension has the batch's size but indexes positions, not samples.
    ``offset=True``: the token ids are shifted (``x + 1``, a new tensor) before the token embedding."""

    def __init__(self, seq_len: int = 64, mix: bool = False, flat: bool = False, offset: bool = False) -> None:
        super().__init__()
        self.tokens = nn.Embedding(17, 16)
        self.positions = nn.Embedding(seq_len, 16)
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 10)
        self.mix, self.flat, self.offset = mix, flat, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = torch.arange(x.shape[1], device=x.device)
        pos = self.positions(ids if self.flat else ids.unsqueeze(0))  # (S, D) or (1, S, D)
        h = self.encoder(self.tokens((x + 1) % 17 if self.offset else x) + pos).mean(1)
        if self.mix:
            h = h - h.mean(0, keepdim=True)
        return self.fc(h)


class IgnoresInput(nn.Module):
    """Planted bug: the forward never uses its input (a learned constant per class)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)  # computed by nobody
        self.bias = nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1)


class DiscardsBody(nn.Module):
    """Planted bug (gallery ignores-input): the forward computes a body from its input but returns learned
    constants, zero-initialised (a wrong variable returned)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = small_cnn()
        self.logits = nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _ = self.body(x)
        return self.logits.expand(x.shape[0], -1)


class FunctionalZeroHead(nn.Module):
    """Healthy twin of :class:`DiscardsBody`: a zero-initialised head applied functionally
    (``F.linear(h, self.w, self.b)``, no ``nn.Linear`` module), so the output is constant at init."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten())
        self.w = nn.Parameter(torch.zeros(10, 8 * 6 * 6))
        self.b = nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.body(x), self.w, self.b)


class ZeroedInput(nn.Module):
    """Planted bug: the input is multiplied by 0 before the first layer (a wrong mask, a wrong variable)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 0)


def zero_head(net: nn.Module) -> nn.Module:
    """Healthy twin: the last Linear layer zero-initialised (weight and bias), as torchvision's ViT head."""
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return net


def dead_mlp() -> nn.Module:
    """Every ReLU unit dead at init (a huge negative first-layer bias): the output is constant."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        net[1].bias.fill_(-1e3)
    return net


class RowsGRU(nn.Module):
    """Healthy twin: digit rows (N, T, C) through a batch_first GRU, last time step."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 32, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.fc(out[:, -1])


class DictClassifier(Classifier):
    """A classifier whose batches are dicts ``{"x": inputs, "y": labels}``."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:  # type: ignore[override]
        return super().training_step((batch["x"], batch["y"]), batch_idx)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:  # type: ignore[override]
        super().validation_step((batch["x"], batch["y"]), batch_idx)


def dict_loader(loader: DataLoader) -> DataLoader:
    """``loader``'s (x, y) batches as ``{"x": x, "y": y}`` dicts."""
    ds = loader.dataset
    assert isinstance(ds, TensorDataset)
    x, y = ds.tensors
    data = [{"x": x[i], "y": y[i]} for i in range(len(y))]
    return DataLoader(data, batch_size=loader.batch_size, shuffle=True)  # type: ignore[arg-type]


class DetachedHead(nn.Module):
    """Planted bug: the body's output is detached; only a final bias gets gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.body = small_cnn()
        self.bias = nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).detach() + self.bias


def frozen_cnn() -> nn.Module:
    """Planted bug: every parameter frozen except the last bias."""
    net = small_cnn()
    for p in net.parameters():
        p.requires_grad_(False)
    net[-1].bias.requires_grad_(True)
    return net


def with_output(net: nn.Module, act: nn.Module) -> nn.Module:
    """``net`` followed by an output activation (P3)."""
    return nn.Sequential(net, act)


def cancer_mlp(outputs: int = 2) -> nn.Module:
    return nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, outputs))


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fit(make_trainer: Callable[..., pl.Trainer], model: pl.LightningModule, loader: DataLoader,
        callback: pl.Callback, **trainer_kwargs: object) -> pl.Trainer:
    """A short fit (2 train batches, no validation) with ``callback`` (or ``callbacks=[...]`` instead); no
    seeding, warnings pass."""
    kwargs: dict = {"limit_train_batches": 2, "limit_val_batches": 0, "callbacks": [callback], **trainer_kwargs}
    return fitting.fit(make_trainer, model, loader, seed=None, warns="pass", **kwargs).trainer


def codes(callback: object) -> list[str]:
    """The finding codes a callback reported, with severities: ``["init-loss:warning", ...]``."""
    return [f"{f.code}:{f.severity.value}" for f in callback.findings]  # type: ignore[attr-defined]


# --- the DDP script -----------------------------------------------------------------------------


class _PerRankRegression(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return regression_loader(offset=100.0 if rank == 1 else 0.0, batch_size=32)


def _ddp_main(out_path: str) -> None:
    import json
    import warnings

    from lightning_tips.preflight import Preflight

    torch.set_num_threads(1)
    pl.seed_everything(0)
    pre = Preflight(data=False)
    warnings.simplefilter("ignore")
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=1, limit_train_batches=2,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=f"{out_path}.d", callbacks=[pre])
    trainer.fit(Regressor(nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1))), _PerRankRegression())
    result = {"rank": trainer.global_rank, "codes": sorted({f.code for f in pre.findings}),
              "card": [line.status for line in pre.card]}
    with open(f"{out_path}.{trainer.global_rank}", "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "ddp":
        _ddp_main(sys.argv[2])
