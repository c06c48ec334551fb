"""Planted data bugs and their healthy twins for the data checks (tests/checks/test_data.py).

Run as a script, it is the 2-process gloo DDP check of ``DataChecks`` (``python
tests/helpers/data_bugs.py <out.json>``): one rank's shard holds a NaN, every rank must agree.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, WeightedRandomSampler

from tests.helpers.data import breast_cancer_tensors, digits_tensors
from tests.helpers.models import Classifier, mlp
from tests.helpers.models import TokenClassifier as TokenClassifier  # re-exported: tests import it from here


def loader(x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 64, shuffle: bool = True,
           **kwargs: Any) -> DataLoader:
    ds = TensorDataset(x, y) if y is not None else TensorDataset(x)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, **kwargs)


def digits_split(normalize: bool = True, image: bool = True, n_train: int = 300, n_val: int = 100
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A clean split: the first ``n_train`` digits for training, ``n_val`` from 1500 on for validation."""
    x, y = digits_tensors(normalize, image)
    return (x[:n_train], y[:n_train]), (x[1500 : 1500 + n_val], y[1500 : 1500 + n_val])


def digits_with_nan(n_train: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits where sample 5 lost two pixels to NaN (a failed preprocessing step)."""
    (x, y), _ = digits_split(n_train=n_train)
    x = x.clone()
    x[5, 0, 2, 3] = math.nan
    x[5, 0, 4, 4] = math.nan
    return x, y


def duplicated_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """digits[:300] with digits[:30] appended again: 30 of 330 training samples are copies."""
    (x, y), _ = digits_split()
    return torch.cat([x, x[:30]]), torch.cat([y, y[:30]])


def leaky_val() -> tuple[torch.Tensor, torch.Tensor]:
    """A validation set of 80 unseen digits plus 20 of the training digits (indices 100..119)."""
    (x, y), (xv, yv) = digits_split(n_val=80)
    return torch.cat([xv, x[100:120]]), torch.cat([yv, y[100:120]])


def imbalanced_breast_cancer(normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """All 357 benign samples and 19 malignant ones: labels 95% / 5%."""
    x, y = breast_cancer_tensors(normalize)
    keep = torch.cat([torch.nonzero(y == 1)[:, 0], torch.nonzero(y == 0)[:19, 0]])
    return x[keep], y[keep]


def set_prior_bias_(model: nn.Module, y: torch.Tensor, num_classes: int) -> None:
    """The recipe's fix by hand (R2.5): the last Linear's bias = log of the class prior."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    prior = torch.bincount(y, minlength=num_classes).float() / len(y)
    with torch.no_grad():
        last.bias.copy_(prior.log())


def balanced_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 64) -> DataLoader:
    """Oversample the minority (T6): weights 1 / class count."""
    weights = (1.0 / torch.bincount(y).double())[y]
    sampler = WeightedRandomSampler(weights, num_samples=len(y), replacement=True)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, sampler=sampler)


# --- batch layouts the checks must not choke on ---------------------------------------------------
class DictDataset(Dataset):
    """Samples as dicts ``{"image": x, "label": y}``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "label": self.y[i]}


class DictClassifier(Classifier):
    """A classifier whose batches are dicts."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:  # type: ignore[override]
        return self.loss_fn(self(batch["image"]), batch["label"])

    def validation_step(self, batch: Any, batch_idx: int) -> None:  # type: ignore[override]
        self.log("val_loss", self.loss_fn(self(batch["image"]), batch["label"]))


class AutoEncoder(pl.LightningModule):
    """Unlabeled batches: ``(x,)`` tuples from a one-tensor TensorDataset; reconstructs x."""

    def __init__(self, features: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, features))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        return F.mse_loss(self.net(x), x.flatten(1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def digit_tokens(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_tensors(normalize=False, image=False)
    return x[:n].long(), y[:n]


# --- packed sequences (issue #10 item 7) ---------------------------------------------------------
def packed_digits_loader(n: int = 128, batch_size: int = 32, nan_at: int | None = None) -> DataLoader:
    """Digits as variable-length sequences of 8-pixel rows (4..8 rows), batched as
    ``(PackedSequence, labels)`` by a collate_fn, the way recurrent models are fed; ``nan_at``: that
    sample gets one NaN pixel."""
    from torch.nn.utils.rnn import pack_sequence

    x, y = digits_tensors(image=False)
    x = x.clone()
    if nan_at is not None:
        x[nan_at, 1] = math.nan
    samples = [(x[i].reshape(8, 8)[: 4 + i % 5], y[i]) for i in range(n)]

    def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[Any, torch.Tensor]:
        return pack_sequence([s for s, _ in items], enforce_sorted=False), torch.stack([t for _, t in items])

    return DataLoader(samples, batch_size=batch_size, shuffle=True, collate_fn=collate)


class PackedGRUClassifier(Classifier):
    """A GRU over packed sequences; the last hidden state classifies."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(16, 10))
        self.gru = nn.GRU(8, 16)

    def forward(self, x: Any) -> torch.Tensor:  # type: ignore[override]
        _, h = self.gru(x)
        return self.net(h[-1])


# --- DDP script ----------------------------------------------------------------------------------
def _ddp_main(out_path: str) -> None:  # pragma: no cover - runs in subprocesses
    import json
    import warnings

    from lightning_tips.checks.data import DataChecks

    torch.set_num_threads(1)
    pl.seed_everything(0)
    x, y = digits_with_nan(n_train=256)
    checks = DataChecks(first_batch=False)
    model = Classifier(mlp(64, 10))
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=1, limit_train_batches=2,
                         limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=out_path + ".d", callbacks=[checks])
    # Lightning replaces the sampler by a (shuffling) DistributedSampler: sample 5 (the NaN) lands in
    # one rank's shard only, and both ranks must report it
    train = loader(x, y, batch_size=32, shuffle=False)
    (_, _), (xv, yv) = digits_split(n_val=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train, loader(xv, yv, batch_size=32, shuffle=False))
    with open(f"{out_path}.rank{trainer.global_rank}", "w") as f:
        json.dump({"codes": sorted({fd.code for fd in checks.findings}),
                   "messages": [fd.message for fd in checks.findings]}, f)


if __name__ == "__main__":  # pragma: no cover
    _ddp_main(sys.argv[1])
