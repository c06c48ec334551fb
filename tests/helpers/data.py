"""Small real data sets for tests: scikit-learn's bundled digits and breast cancer, and synthetic tensors."""

from __future__ import annotations

from functools import cache

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset


@cache
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """1797 8x8 images in [0, 16] and their labels 0-9."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def digits_tensors(normalize: bool = True, image: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as (N, 1, 8, 8) (or (N, 64) with ``image=False``) float tensors and int64 labels.

    ``normalize`` standardises with the training statistics (mean 4.9, std 6.0), as the recipe says (T12).
    """
    x, y = digits_arrays()
    xt = torch.from_numpy(x.copy())
    if normalize:
        xt = (xt - 4.88) / 6.02
    xt = xt.unsqueeze(1) if image else xt.reshape(len(xt), -1)
    return xt, torch.from_numpy(y.copy())


class DigitsDataModule(pl.LightningDataModule):
    """Digits split 1500/297; ``shuffle`` for the train loader, ``limit`` to keep the first N train samples."""

    def __init__(
        self,
        batch_size: int = 64,
        normalize: bool = True,
        image: bool = True,
        shuffle: bool = True,
        limit: int | None = None,
        val_limit: int | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        x, y = digits_tensors(normalize, image)
        self.train = TensorDataset(x[:1500][:limit], y[:1500][:limit])
        self.val = TensorDataset(x[1500:][:val_limit], y[1500:][:val_limit])
        self.shuffle = shuffle

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)


@cache
def breast_cancer_arrays() -> tuple[np.ndarray, np.ndarray]:
    """569 samples x 30 raw features (huge dynamic range, not normalised) and binary labels."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def breast_cancer_tensors(normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = breast_cancer_arrays()
    xt = torch.from_numpy(x.copy())
    if normalize:
        xt = (xt - xt.mean(0)) / xt.std(0)
    return xt, torch.from_numpy(y.copy())


def loaders(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 32,
    shuffle: bool = True,
    val_fraction: float = 0.2,
) -> tuple[DataLoader, DataLoader]:
    """Train/val loaders over a deterministic split of (x, y)."""
    n_val = int(len(x) * val_fraction)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(x), generator=g)
    tr, va = idx[n_val:], idx[:n_val]
    train = DataLoader(TensorDataset(x[tr], y[tr]), batch_size=batch_size, shuffle=shuffle)
    val = DataLoader(TensorDataset(x[va], y[va]), batch_size=batch_size)
    return train, val


class NoisyDigits(torch.utils.data.Dataset):
    """Map-style digits ``(x, y)`` (flat, standardised) with noise drawn from the dataset's *own*
    generator: reading a sample advances ``self.g``, so a reader outside training shifts the noise
    training sees (issue #10 item 3)."""

    def __init__(self, n: int = 256, seed: int = 5) -> None:
        x, y = digits_tensors(image=False)
        self.x, self.y = x[:n], y[:n]
        self.g = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.1 * torch.randn(self.x[i].shape, generator=self.g), self.y[i]


class DigitStream(torch.utils.data.IterableDataset):
    """A stream of flat digits that can be read once (a shared cursor, as a socket or a queue has),
    with noise from the dataset's own generator; ``cursor`` counts the samples that left the stream."""

    def __init__(self, n: int = 128, seed: int = 5) -> None:
        x, y = digits_tensors(image=False)
        self.x, self.y = x[:n], y[:n]
        self.g = torch.Generator().manual_seed(seed)
        self.cursor = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        while self.cursor < len(self.x):
            i = self.cursor
            self.cursor += 1
            yield self.x[i] + 0.1 * torch.randn(self.x[i].shape, generator=self.g), self.y[i]
