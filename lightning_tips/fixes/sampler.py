"""Class-balanced sampling (T6): every class equally likely in each mini-batch, in expectation.

Each sample is drawn with probability proportional to ``1 / count[its label]``, so every class has
the same total weight: on a 9:1 data set the minority class fills half of each batch on average
(oversampled, with replacement by default). The sampler owns its ``torch.Generator`` seeded with
``seed`` (and ``seed + epoch`` after :meth:`BalancedSampler.set_epoch`), so the order is
reproducible and identical on every DDP rank — which is what Lightning's
``DistributedSamplerWrapper`` (used for custom samplers when ``use_distributed_sampler=True``)
needs to hand each rank a disjoint slice of one shared draw. Lightning calls ``set_epoch`` on the
sampler every epoch, so epochs differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

__all__ = ["BalancedSampler", "balanced_sampler", "class_weights"]


def class_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights ``1 / count[label]`` (float64, sums to the number of classes present).

    Example:
        >>> class_weights(torch.tensor([0, 0, 0, 1])).tolist()
        [0.3333333333333333, 0.3333333333333333, 0.3333333333333333, 1.0]
    """
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].double()


def _as_labels(labels: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).detach().cpu()
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"Expected a non-empty 1-D sequence of class labels but got shape {tuple(t.shape)}.")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"Expected integer class labels but got {t.dtype}.")
    if bool((t < 0).any()):
        raise ValueError(f"Expected non-negative class labels but got a minimum of {int(t.min())}.")
    return t.long()


class BalancedSampler(WeightedRandomSampler):
    """A ``WeightedRandomSampler`` with weights ``1 / count[label]`` and its own seeded generator (T6).

    Build it with :func:`balanced_sampler`. ``set_epoch(e)`` re-seeds the generator with
    ``seed + e`` (Lightning calls it every epoch, also through ``DistributedSamplerWrapper``);
    without it, successive iterations continue one reproducible stream.
    """

    def __init__(
        self,
        labels: torch.Tensor | np.ndarray | Sequence[int],
        num_samples: int | None = None,
        seed: int = 0,
        replacement: bool = True,
    ) -> None:
        t = _as_labels(labels)
        n = len(t) if num_samples is None else num_samples
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"Expected num_samples to be a positive int but got {num_samples!r}.")
        if not replacement and n > len(t):
            raise ValueError(f"Expected num_samples <= {len(t)} without replacement but got {n}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"Expected seed to be an int but got {seed!r}.")
        self.seed = seed
        self.epoch = 0
        self.labels = t
        generator = torch.Generator().manual_seed(seed)
        weights = cast(Sequence[float], class_weights(t))  # torch accepts the tensor as is
        super().__init__(weights, n, replacement=replacement, generator=generator)

    def set_epoch(self, epoch: int) -> None:
        """Re-seed with ``seed + epoch``: a new, reproducible order per epoch, the same on every rank."""
        self.epoch = epoch
        assert self.generator is not None
        self.generator.manual_seed(self.seed + epoch)


def balanced_sampler(
    labels: torch.Tensor | np.ndarray | Sequence[int],
    num_samples: int | None = None,
    seed: int = 0,
    replacement: bool = True,
) -> BalancedSampler:
    """A sampler drawing class-balanced mini-batches in expectation (T6); pass it as ``DataLoader(sampler=...)``.

    Args:
        labels: the class label of every sample of the dataset, in dataset order.
        num_samples: draws per epoch (default: the dataset size).
        seed: seeds the sampler's own generator (the global RNG is not used): same seed, same order.
        replacement: draw with replacement (needed to oversample a minority class beyond its size).

    Example:
        >>> labels = [0] * 90 + [1] * 10
        >>> idx = list(balanced_sampler(labels, num_samples=1000, seed=0))
        >>> round(sum(labels[i] for i in idx) / len(idx), 1)  # minority share: 0.1 -> ~0.5
        0.5
    """
    return BalancedSampler(labels, num_samples, seed, replacement)
