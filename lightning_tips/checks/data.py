"""Data checks before the first step: look at the data before the model does (tips R1, R2.1, T6, T12,
T16, P6).

:class:`DataChecks` scans a bounded sample of the training and validation loaders — at most
``max_batches`` batches of each, within ``max_scan_s`` seconds — on the CPU, inside
:func:`~lightning_tips._utils.preserved_rng`, with every sampler generator restored afterwards, so
the user's data order and random streams are untouched. It reads batches through the loader's own
sampler, dataset and ``collate_fn`` in this process (no worker processes are started), which also
gives the dataset index of every sample.

Verdicts (thresholds are the registry's, see :data:`~lightning_tips.findings.CODES`):
    * ``nonfinite-input`` (error): a floating-point batch field holds NaN/Inf; names the field
      (``batch[0]``, ``batch['x']``), the count and the loader.
    * ``duplicate-data`` (warning): more than 1% of the sampled training samples repeat another
      sampled training sample (content hash of all the sample's tensors, inputs and targets); or
      any sampled validation sample has the same *inputs* as a sampled training sample. Names an
      example pair by dataset index. The same dataset index drawn twice (a sampler with replacement,
      DDP padding) is not a duplicate.
    * ``class-imbalance`` (warning): the targets are class indices (an integer 1-D tensor, or 0/1
      values of shape ``(N,)``/``(N, 1)``), max/min class frequency over the sample (classes that
      occur) > 3, the output layer's bias is not within 0.5 of the log prior (softmax biases compared
      up to a constant; a single logit against the log-odds), and the train loader does not use a
      ``WeightedRandomSampler``.
    * ``unnormalized-input`` (warning): per feature/channel of each floating-point input field
      (dim 1 of ``(N, C, H, W)``/``(N, C, D, H, W)``, the last dim of ``(N, F)`` and of ``(N, T, F)``
      sequences, the one value of ``(N,)``): ``|mean| > 3 std`` or ``std`` outside ``[0.1, 10]``
      (features constant over the sample are left out); or a dynamic range ``max|x| / median|x|``
      (median of the non-zero values) above 1e4 per feature or over all features pooled, with the
      tanh(x/C) advice (P6). Raw digits (0..16, mean 4.9, std 6.0 as one channel) pass; raw breast
      cancer features do not.
    * ``unshuffled-data`` (warning): the train loader's sampler is a ``SequentialSampler``, or a
      ``DistributedSampler`` with ``shuffle=False`` (the user's own, ``use_distributed_sampler=False``;
      the one Lightning injects under DDP always shuffles the train loader, so no finding there).
    * ``no-seed`` (info): ``PL_GLOBAL_SEED`` is unset (``lightning.seed_everything`` sets it).
    * ``view-skipped`` (info): the first-batch view could not draw the batch (no tensor in it).
    * ``nonfinite-input`` (info): a loader raised while being scanned; the checks used what was read.

Not applicable, silently (the report card's figures say so): ``class-imbalance`` when the targets
are not class indices (regression, segmentation masks, unlabeled tensor-only batches, dicts without
a recognised target key); ``unnormalized-input`` when no input field is floating point (token ids);
the train/val overlap when there is no validation loader. Under DDP each rank scans its own shard:
the counts are summed over ranks, the verdicts are the same on every rank, but duplicates that sit
on two different ranks are not seen.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from lightning_tips._utils import (
    batch_size,
    find_output_layer,
    loader_samplers,
    named_tensors,
    nonfinite_fields,
    preserved_generators,
    preserved_rng,
    reduce_sum,
    split_batch,
)
from lightning_tips._validate import check_bool, check_float, check_int
from lightning_tips.checks._preflight import CardLine, PreflightCheck
from lightning_tips.views.first_batch import log_first_batch

__all__ = [
    "DataChecks",
    "FeatureStats",
    "class_targets",
    "find_duplicates",
    "imbalance_ratio",
    "normalization_verdict",
    "prior_bias_gap",
    "sample_hashes",
    "sampler_balances",
    "sampler_shuffles",
]

DUPLICATE_FRACTION = 0.01  # duplicate-data: duplicates within train above 1% of the sample
IMBALANCE_RATIO = 3.0  # class-imbalance: max/min class frequency
PRIOR_BIAS_TOLERANCE = 0.5  # class-imbalance: output bias within 0.5 of the log prior = prior init done
MEAN_STDS = 3.0  # unnormalized-input: |mean| > 3 std
STD_RANGE = (0.1, 10.0)  # unnormalized-input: std outside [0.1, 10]
DYNAMIC_RANGE = 1e4  # unnormalized-input: max|x| / median|x| above 1e4
MAX_CLASSES = 100_000  # larger "class indices" are not class labels
_ABS_SAMPLE = 65_536  # values kept per batch (over all features) for the median |x|


# --- pure functions: hashes and duplicates (R1) ---------------------------------------------------
def sample_hashes(obj: Any, n: int) -> list[bytes]:
    """One content hash per sample: blake2b over the bytes of sample ``i`` of every tensor in ``obj``
    whose leading dim is ``n`` (other tensors are ignored). Empty when there is no such tensor.

    Example:
        >>> h = sample_hashes((torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]]), torch.tensor([0, 1, 0])), 3)
        >>> h[0] == h[2], h[0] == h[1]
        (True, False)
    """
    if n <= 0:
        return []
    parts: list[np.ndarray] = []
    shapes: list[int] = []
    for _, t in named_tensors(obj):
        if t.dim() == 0 or t.shape[0] != n or t.is_complex():
            continue
        a = t.detach().cpu().contiguous().reshape(n, int(t[0].numel()))
        if a.dtype == torch.bool:
            a = a.to(torch.uint8)
        parts.append(a.view(torch.uint8).numpy())
        shapes.extend(t.shape[1:])
    if not parts:
        return []
    rows = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    prefix = repr(shapes).encode()
    return [hashlib.blake2b(prefix + r.tobytes(), digest_size=16).digest() for r in rows]


def find_duplicates(keys: Sequence[bytes]) -> tuple[int, tuple[int, int] | None]:
    """How many entries repeat an earlier entry, and the first ``(later, earlier)`` position pair.

    Example:
        >>> find_duplicates([b"a", b"b", b"a", b"a"])
        (2, (2, 0))
    """
    first: dict[bytes, int] = {}
    count, example = 0, None
    for i, k in enumerate(keys):
        j = first.setdefault(k, i)
        if j != i:
            count += 1
            example = example or (i, j)
    return count, example


# --- pure functions: labels (T6, R2.5) ------------------------------------------------------------
def class_targets(y: torch.Tensor) -> torch.Tensor | None:
    """``y`` as 1-D int64 class indices (on the CPU) when it holds class labels, else ``None``.

    Class labels: an integer or bool tensor of shape ``(N,)``, or 0/1 values of shape ``(N,)`` or
    ``(N, 1)`` (binary targets of ``BCEWithLogitsLoss``). Negative indices (``ignore_index``) are dropped.

    Example:
        >>> class_targets(torch.tensor([2, 0, -100])).tolist(), class_targets(torch.tensor([[1.0], [0.0]])).tolist()
        ([2, 0], [1, 0])
        >>> class_targets(torch.tensor([0.3, 1.2])) is None
        True
    """
    binary_only = y.dim() == 2 and y.shape[1] == 1
    if binary_only:
        y = y[:, 0]
    if y.dim() != 1 or y.is_complex():
        return None
    y = y.detach().cpu()
    if y.is_floating_point() or binary_only:
        if y.numel() == 0 or not bool(((y == 0) | (y == 1)).all()):
            return None
        return y.to(torch.int64)
    y = y.to(torch.int64)
    return y[y >= 0]


def imbalance_ratio(counts: torch.Tensor) -> float:
    """max/min frequency over the classes that occur; ``nan`` with fewer than two classes.

    Example:
        >>> imbalance_ratio(torch.tensor([95, 0, 5]))
        19.0
    """
    present = counts[counts > 0].double()
    if present.numel() < 2:
        return math.nan
    return float(present.max() / present.min())


def prior_bias_gap(bias: torch.Tensor | None, counts: torch.Tensor) -> float:
    """How far an output bias is from the log prior of ``counts`` (``inf`` when not comparable).

    Several outputs (softmax): ``max |(b_k - log p_k) - mean_k(b - log p)|`` over the classes that
    occur (softmax is shift-invariant). One output with two classes (sigmoid): ``|b - log(p1/p0)|``.

    Example:
        >>> counts = torch.tensor([95, 5])
        >>> round(prior_bias_gap(torch.log(torch.tensor([0.95, 0.05])) + 7.0, counts), 6)
        0.0
        >>> round(prior_bias_gap(torch.zeros(2), counts), 2), prior_bias_gap(None, counts)
        (1.47, inf)
    """
    if bias is None:
        return math.inf
    b = bias.detach().double().cpu().flatten()
    c = counts.double().cpu()
    present = c > 0
    if b.numel() == 1:
        if c.numel() > 2 or not bool(present.all()) or c.numel() < 2:
            return math.inf
        return abs(float(b[0] - torch.log(c[1] / c[0])))
    if b.numel() < c.numel() or not bool(present.any()):
        return math.inf
    d = b[: c.numel()][present] - torch.log(c[present] / c.sum())
    return float((d - d.mean()).abs().max())


# --- pure functions: feature statistics (T12, P6) -------------------------------------------------
def feature_dim(ndim: int) -> int:
    """The feature/channel dim of an input of ``ndim`` dims (see the module docstring)."""
    return 1 if ndim >= 4 else ndim - 1


@dataclass
class FeatureStats:
    """Per feature/channel count, mean, sum of squared deviations, min and max of the finite values
    (float64, CPU; batches merged with Chan's formula), and a strided sample of ``|x|`` for the median.

    Example:
        >>> s = FeatureStats()
        >>> s.update(torch.tensor([[1.0, 10.0], [3.0, 30.0]]))
        >>> s.update(torch.tensor([[5.0, 50.0]]))
        >>> s.mean.tolist(), [round(v, 3) for v in s.std.tolist()]
        ([3.0, 30.0], [1.633, 16.33])
    """

    n: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    mean: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    m2: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    minimum: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    maximum: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    abs_samples: list[torch.Tensor] = field(default_factory=list)
    ndim: int = 0
    valid: bool = True

    @property
    def num_features(self) -> int:
        return int(self.n.numel())

    @property
    def std(self) -> torch.Tensor:
        """Population std per feature (0 where there is no value)."""
        return (self.m2 / self.n.clamp_min(1)).clamp_min(0).sqrt()

    def update(self, x: torch.Tensor) -> None:
        """Add one batch ``x`` (leading dim = samples); a batch whose feature count differs from the
        first one's invalidates the statistics."""
        if not self.valid or x.dim() == 0:
            return
        d = feature_dim(x.dim())
        v = x.detach().cpu().to(torch.float64).movedim(d, 0).reshape(x.shape[d], -1) if x.dim() > 1 else (
            x.detach().cpu().to(torch.float64).reshape(1, -1)
        )
        if self.ndim == 0:
            f = v.shape[0]
            self.ndim = x.dim()
            z = torch.zeros(f, dtype=torch.float64)
            self.n, self.mean, self.m2 = z.clone(), z.clone(), z.clone()
            self.minimum, self.maximum = torch.full_like(z, math.inf), torch.full_like(z, -math.inf)
        if v.shape[0] != self.num_features or x.dim() != self.ndim:
            self.valid = False
            return
        finite = torch.isfinite(v)
        nb = finite.sum(1).to(torch.float64)
        v0 = torch.where(finite, v, 0.0)
        mb = v0.sum(1) / nb.clamp_min(1)
        m2b = (torch.where(finite, v - mb[:, None], 0.0) ** 2).sum(1)
        n = self.n + nb
        delta = mb - self.mean
        safe_n = n.clamp_min(1)
        self.mean = self.mean + delta * nb / safe_n
        self.m2 = self.m2 + m2b + delta**2 * self.n * nb / safe_n
        self.n = n
        self.minimum = torch.minimum(self.minimum, torch.where(finite, v, math.inf).amin(1))
        self.maximum = torch.maximum(self.maximum, torch.where(finite, v, -math.inf).amax(1))
        keep = max(8, _ABS_SAMPLE // max(1, v.shape[0]))
        stride = max(1, math.ceil(v.shape[1] / keep))
        a = v[:, ::stride].abs()
        self.abs_samples.append(torch.where(torch.isfinite(a) & (a > 0), a, math.nan))

    def dynamic_range(self) -> tuple[float, int, float]:
        """``(worst per-feature max|x|/median|x|, that feature, pooled ratio)`` over the non-zero
        values (``nan`` when there are none)."""
        if not self.abs_samples:
            return math.nan, -1, math.nan
        a = torch.cat(self.abs_samples, dim=1)
        max_abs = torch.maximum(self.minimum.abs(), self.maximum.abs())
        max_abs = torch.where(torch.isfinite(max_abs), max_abs, math.nan)
        med = a.nanmedian(dim=1).values
        ratio = max_abs / med
        ratio = torch.where(torch.isfinite(ratio), ratio, -math.inf)
        worst = int(ratio.argmax()) if ratio.numel() else -1
        per_feature = float(ratio[worst]) if worst >= 0 and math.isfinite(float(ratio[worst])) else math.nan
        pooled_med = float(a.flatten().nanmedian())
        pooled_max = float(max_abs.nan_to_num(nan=-math.inf).max()) if max_abs.numel() else math.nan
        pooled = pooled_max / pooled_med if pooled_med > 0 and math.isfinite(pooled_max) else math.nan
        return per_feature, worst, pooled

    def pack(self) -> torch.Tensor:
        """``[n, n*mean, m2, n*mean^2]`` per feature, the sums that add up across ranks."""
        return torch.cat([self.n, self.n * self.mean, self.m2, self.n * self.mean**2])

    @staticmethod
    def unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(n, mean, std)`` from a sum of :meth:`pack` vectors."""
        n, s, m2, smean2 = packed.double().reshape(4, -1)
        mean = s / n.clamp_min(1)
        m2 = m2 + smean2 - n * mean**2
        return n, mean, (m2 / n.clamp_min(1)).clamp_min(0).sqrt()


def normalization_verdict(mean: torch.Tensor, std: torch.Tensor) -> tuple[list[int], int]:
    """``(bad features, worst first; number of constant features)``: a non-constant feature is bad
    when ``|mean| > 3 std`` or ``std`` is outside ``[0.1, 10]``.

    Example:
        >>> normalization_verdict(torch.tensor([0.0, 880.0, 5.0, 0.0]), torch.tensor([1.0, 570.0, 0.0, 0.01]))
        ([1, 3], 1)
    """
    mean, std = mean.double(), std.double()
    constant = std <= 1e-8 * mean.abs().clamp_min(1.0)
    s = std.clamp_min(1e-300)
    badness = torch.stack([mean.abs() / (MEAN_STDS * s), s / STD_RANGE[1], STD_RANGE[0] / s]).amax(0)
    bad = (~constant) & (badness > 1.0)
    order = torch.argsort(torch.where(bad, badness, -1.0), descending=True)
    return [int(i) for i in order[: int(bad.sum())]], int(constant.sum())


# --- pure functions: samplers (T6, T16) ------------------------------------------------------------
def _is_wrapper(s: Any) -> bool:
    return isinstance(s, DistributedSampler) and hasattr(getattr(s, "dataset", None), "_sampler")


def sampler_shuffles(loader: Any) -> bool | None:
    """Whether the loader shuffles: ``False`` for a ``SequentialSampler`` (or a ``DistributedSampler``
    with ``shuffle=False``), ``True`` for random samplers, ``None`` when it cannot tell.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> sampler_shuffles(DataLoader(range(4))), sampler_shuffles(DataLoader(range(4), shuffle=True))
        (False, True)
    """
    for s in loader_samplers(loader):
        if isinstance(s, (RandomSampler, WeightedRandomSampler, SubsetRandomSampler)):
            return True
        if isinstance(s, SequentialSampler):
            return False
        if isinstance(s, DistributedSampler) and not _is_wrapper(s):
            return bool(s.shuffle)
    return None


def sampler_balances(loader: Any) -> bool:
    """Whether the loader draws with a ``WeightedRandomSampler`` (class balancing, T6)."""
    return any(isinstance(s, WeightedRandomSampler) for s in loader_samplers(loader))


def _iter_batches(loader: Any) -> Iterator[tuple[Any, list[int] | None]]:
    """``(batch, dataset indices or None)``: a map-style DataLoader is read through its batch sampler,
    dataset and collate_fn in this process (no workers); anything else is iterated as is (an
    IterableDataset loader with workers is read single-process)."""
    if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
        if loader.batch_sampler is not None:
            ds, collate = loader.dataset, loader.collate_fn
            getitems = getattr(ds, "__getitems__", None)
            for idx in loader.batch_sampler:
                idx = list(idx)
                items = getitems(idx) if callable(getitems) else [ds[i] for i in idx]
                yield collate(items), (idx if all(isinstance(i, int) for i in idx) else None)
            return
    elif isinstance(loader, DataLoader) and loader.num_workers > 0:
        loader = DataLoader(loader.dataset, batch_size=loader.batch_size, drop_last=loader.drop_last,
                            collate_fn=loader.collate_fn)
    for batch in loader:
        yield batch, None


# --- the scan -------------------------------------------------------------------------------------
@dataclass
class _Scan:
    """What one rank read from one split (train or val)."""

    batches: int = 0
    samples: int = 0  # distinct samples (by dataset index where known)
    batch_sizes: list[int] = field(default_factory=list)
    nonfinite: dict[str, int] = field(default_factory=dict)
    full_keys: dict[bytes, str] = field(default_factory=dict)  # content hash -> first sample's name
    input_keys: dict[bytes, str] = field(default_factory=dict)
    dup_count: int = 0
    dup_example: tuple[str, str] | None = None
    overlap_count: int = 0
    overlap_example: tuple[str, str] | None = None
    labels: list[torch.Tensor] = field(default_factory=list)
    unlabeled_batches: int = 0
    stats: dict[str, FeatureStats] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _seen: set[tuple[str, int]] = field(default_factory=set)

    def add(self, loader_name: str, batch: Any, indices: list[int] | None, prefix: str,
            train_keys: Mapping[bytes, str] | None) -> None:
        self.batches += 1
        for name, count in nonfinite_fields(batch, prefix):
            self.nonfinite[name] = self.nonfinite.get(name, 0) + count
        split = split_batch(batch)
        inputs, targets = split if split is not None else (batch, None)
        n = batch_size(batch) or 0
        self.batch_sizes.append(n)
        # labels (the distribution the model sees, repeats included)
        ct = class_targets(targets) if targets is not None else None
        if ct is None:
            self.unlabeled_batches += 1
        else:
            self.labels.append(ct)
        # float input statistics
        input_ids = {id(t) for _, t in named_tensors(inputs)}
        for name, t in named_tensors(batch, prefix):
            if id(t) in input_ids and t.is_floating_point() and t.dim() >= 1 and t.shape[0] == n:
                self.stats.setdefault(name, FeatureStats()).update(t)
        # content hashes of distinct samples
        full, inp = sample_hashes(batch, n), sample_hashes(inputs, n)
        for j in range(min(len(full), len(inp))):
            if indices is not None:
                if (loader_name, indices[j]) in self._seen:
                    continue  # the same dataset index drawn again is not a duplicate
                self._seen.add((loader_name, indices[j]))
                label = f"{loader_name} sample {indices[j]}"
            else:
                label = f"{loader_name} sample #{self.samples} of the scan"
            self.samples += 1
            if full[j] in self.full_keys:
                self.dup_count += 1
                self.dup_example = self.dup_example or (label, self.full_keys[full[j]])
            else:
                self.full_keys[full[j]] = label
            self.input_keys.setdefault(inp[j], label)
            if train_keys is not None and inp[j] in train_keys:
                self.overlap_count += 1
                self.overlap_example = self.overlap_example or (label, train_keys[inp[j]])


def _scan(loaders: Sequence[tuple[str, Any]], max_batches: int, deadline: float,
          train_keys: Mapping[bytes, str] | None = None) -> _Scan:
    out = _Scan()
    for name, loader in loaders:
        prefix = "batch" if len(loaders) == 1 else f"{name} batch"
        count = 0
        try:
            with preserved_generators(loader):
                for batch, indices in _iter_batches(loader):
                    out.add(name, batch, indices, prefix, train_keys)
                    count += 1
                    if count >= max_batches or time.perf_counter() > deadline:
                        break
        except Exception as err:  # a scan must never crash training; report what was read
            out.errors.append(f"{name}: {type(err).__name__}: {err}")
    return out


def _named_loaders(obj: Any, name: str) -> list[tuple[str, Any]]:
    if obj is None:
        return []
    if isinstance(obj, Mapping):
        return [(f"{name}[{k!r}]", v) for k, v in obj.items() if v is not None]
    if isinstance(obj, (list, tuple)):
        items = [v for v in obj if v is not None]
        return [(name, items[0])] if len(items) == 1 else [(f"{name}[{i}]", v) for i, v in enumerate(items)]
    return [(name, obj)]


def _val_source(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """The validation loaders; when the sanity check did not set them up yet (and on one process
    only, where a fresh loader has no distributed sampler to miss), the datamodule's or module's."""
    loaders = trainer.val_dataloaders
    if loaders is not None or trainer.world_size > 1 or trainer.limit_val_batches == 0:
        return loaders
    from lightning.pytorch.utilities.model_helpers import is_overridden

    for source in (getattr(trainer, "datamodule", None), pl_module):
        if source is not None and is_overridden("val_dataloader", source):
            try:
                return source.val_dataloader()
            except Exception:
                return None
    return None


def _fmt(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else str(v)


def _feature_name(field_name: str, ndim: int, k: int) -> str:
    if ndim == 1:
        return field_name
    return f"{field_name} channel {k}" if ndim >= 4 else f"{field_name} feature {k}"


# --- the callback ---------------------------------------------------------------------------------
_META = (
    "train_batches", "train_samples", "val_batches", "val_samples", "val_loaders",
    "nonfinite_train", "nonfinite_val", "dup", "overlap", "scan_errors",
    "labeled_ranks", "unlabeled_batches", "label_size",
    "stats_len", "stats_len_sq", "unshuffled", "balanced", "no_seed",
)  # fmt: skip


class DataChecks(PreflightCheck):
    """Pre-flight data checks on a bounded sample of the train and val loaders (tips R1, R2.1, T6,
    T12, T16, P6), and the first batch as it enters the net (R2.10).

    Reports ``nonfinite-input`` (error), ``duplicate-data``, ``class-imbalance``,
    ``unnormalized-input``, ``unshuffled-data`` (warnings), ``no-seed`` (info); see the module
    docstring for the thresholds. Observes only: the scan reads on the CPU inside
    ``preserved_rng`` and restores every sampler generator, so training is bit-for-bit unchanged.

    Args:
        max_batches: at most this many batches of the train loader, and of the val loader(s), are scanned.
        max_scan_s: the scan stops reading after this many seconds (train gets 60% of it first).
        first_batch: log the first batch as it enters the net (image grid or table, key
            ``tips/first_batch``) and print its fields, shapes, dtypes and ranges once.
        budget_s: the pre-flight time budget when this check runs alone.

    Example:
        >>> import torch
        >>> from lightning_tips.checks.data import DataChecks, imbalance_ratio, normalization_verdict
        >>> checks = DataChecks(max_batches=5)
        >>> checks.title, imbalance_ratio(torch.tensor([95, 5]))
        ('data', 19.0)
        >>> normalization_verdict(torch.tensor([655.0]), torch.tensor([352.0]))  # raw breast-cancer "area"
        ([0], 0)
    """

    title: ClassVar[str] = "data"
    code: ClassVar[str] = "nonfinite-input"

    def __init__(
        self,
        max_batches: int = 20,
        max_scan_s: float = 1.0,
        first_batch: bool = True,
        budget_s: float = 3.0,
    ) -> None:
        super().__init__(budget_s=budget_s)
        check_int("max_batches", max_batches, low=1)
        check_float("max_scan_s", max_scan_s, low=0.0, low_open=True)
        check_bool("first_batch", first_batch)
        self.max_batches = max_batches
        self.max_scan_s = max_scan_s
        self.first_batch = first_batch

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CardLine:
        start = time.perf_counter()
        # 1. local scan: no collectives, and nothing here may raise (a rank that skipped the
        # collectives below would hang the others)
        train, val, train_loaders, val_loaders = _Scan(), _Scan(), list[tuple[str, Any]](), list[tuple[str, Any]]()
        fields: list[tuple[str, FeatureStats]] = []
        dyn: list[tuple[float, int, float]] = []
        packed = torch.zeros(0, dtype=torch.float64)
        try:
            train_loaders = _named_loaders(trainer.train_dataloader, "train")
            if not train_loaders:  # no loader object: the given batch is the sample
                train_loaders = [("train", [_to_cpu(batch)])]
            val_loaders = _named_loaders(_val_source(trainer, pl_module), "val")
            end = start + self.max_scan_s
            overall = getattr(self, "_deadline", None)  # the composite pre-flight's budget, when set
            if isinstance(overall, float):
                end = max(start + 0.1 * self.max_scan_s, min(end, overall))
            with preserved_rng([pl_module.device]):
                train = _scan(train_loaders, self.max_batches, start + 0.6 * (end - start))
                val = _scan(val_loaders, self.max_batches, end, train.input_keys)
            fields = [(k, s) for k, s in train.stats.items() if s.valid and s.num_features > 0]
            dyn = [s.dynamic_range() for _, s in fields]
            if fields:
                flags = torch.tensor([float(r > DYNAMIC_RANGE or p > DYNAMIC_RANGE) for r, _, p in dyn],
                                     dtype=torch.float64)
                packed = torch.cat([*(s.pack() for _, s in fields), flags])
        except Exception as err:
            train.errors.append(f"{type(err).__name__}: {err}")
            fields, dyn, packed = [], [], torch.zeros(0, dtype=torch.float64)
        shuffles = [sampler_shuffles(loader) for _, loader in train_loaders]
        labels = torch.cat(train.labels) if train.labels else torch.zeros(0, dtype=torch.int64)

        # 2. global figures: the same collectives, in the same order, on every rank
        local = {
            "train_batches": train.batches, "train_samples": train.samples,
            "val_batches": val.batches, "val_samples": val.samples, "val_loaders": int(bool(val_loaders)),
            "nonfinite_train": sum(train.nonfinite.values()), "nonfinite_val": sum(val.nonfinite.values()),
            "dup": train.dup_count, "overlap": val.overlap_count, "scan_errors": len(train.errors + val.errors),
            "labeled_ranks": int(labels.numel() > 0), "unlabeled_batches": train.unlabeled_batches,
            "label_size": int(labels.max()) + 1 if labels.numel() else 0,
            "stats_len": packed.numel(), "stats_len_sq": packed.numel() ** 2,
            "unshuffled": int(any(s is False for s in shuffles)),
            "balanced": int(any(sampler_balances(loader) for _, loader in train_loaders)),
            "no_seed": int(os.environ.get("PL_GLOBAL_SEED") is None),
        }  # fmt: skip
        meta_t = _all_sum(trainer, pl_module, torch.tensor([local[k] for k in _META], dtype=torch.int64))
        g = dict(zip(_META, (int(v) for v in meta_t.tolist())))
        world = trainer.world_size
        labels_apply = g["labeled_ranks"] > 0 and g["unlabeled_batches"] == 0 and 0 < g["label_size"] <= MAX_CLASSES
        counts = None
        if labels_apply:
            local_counts = torch.bincount(labels, minlength=g["label_size"])[: g["label_size"]]
            counts = _all_sum(trainer, pl_module, local_counts)
        layout_same = g["stats_len"] > 0 and world * g["stats_len_sq"] == g["stats_len"] ** 2
        global_stats = None
        if layout_same:
            global_stats = _all_sum(trainer, pl_module, packed, dtype=torch.float32)

        # 3. verdicts (every rank calls report with the same verdicts; rank zero speaks)
        reported: list[str] = []

        def rep(code: str, severity: str, message: str, **kw: Any) -> None:
            f = self.report(trainer, code, severity, message, **kw)
            if f is not None and severity != "info":
                reported.append(code)

        for name, scan, key in (("train", train, "nonfinite_train"), ("val", val, "nonfinite_val")):
            if g[key] > 0:
                where = ", ".join(f"{f} ({c} values)" for f, c in scan.nonfinite.items()) or "on another rank"
                rep("nonfinite-input", "error",
                    f"the {name} loader's batches hold {g[key]} NaN/Inf values: {where} "
                    f"(in {g[name + '_batches']} sampled batches)",
                    module=f"{name} {next(iter(scan.nonfinite), '')}".strip(), figures={"count": g[key]})
        if g["scan_errors"]:
            errs = "; ".join(train.errors + val.errors) or "on another rank"
            rep("nonfinite-input", "info", f"data checks: a loader raised while being scanned ({errs}); "
                "the checks used the batches read before", module="scan")
        dup_frac = g["dup"] / g["train_samples"] if g["train_samples"] else 0.0
        if dup_frac > DUPLICATE_FRACTION:
            ex = f" e.g. {train.dup_example[0]} repeats {train.dup_example[1]}" if train.dup_example else ""
            rep("duplicate-data", "warning",
                f"{g['dup']} of {g['train_samples']} sampled training samples ({dup_frac:.1%}) repeat another "
                f"sampled training sample (same content),{ex}",
                module="train", figures={"fraction": dup_frac, "count": g["dup"], "samples": g["train_samples"]})
        if g["overlap"] > 0:
            frac = g["overlap"] / max(1, g["val_samples"])
            ex = f" e.g. {val.overlap_example[0]} has the inputs of {val.overlap_example[1]}" \
                if val.overlap_example else ""
            rep("duplicate-data", "warning",
                f"{g['overlap']} of {g['val_samples']} sampled validation samples ({frac:.1%}) have the same inputs "
                f"as a sampled training sample: validation scores are inflated,{ex}",
                module="train/val", figures={"fraction": frac, "count": g["overlap"], "samples": g["val_samples"]})
        ratio, n_classes = math.nan, 0
        if counts is not None:
            ratio, n_classes = imbalance_ratio(counts), int((counts > 0).sum())
            if ratio > IMBALANCE_RATIO and not g["balanced"]:
                out = find_output_layer(pl_module)
                bias = getattr(out[1], "bias", None) if out is not None else None
                usable = isinstance(bias, torch.Tensor) and not isinstance(bias, nn.parameter.UninitializedParameter)
                gap = prior_bias_gap(bias if usable else None, counts)
                if gap > PRIOR_BIAS_TOLERANCE:
                    total = int(counts.sum())
                    lo, hi = int(torch.where(counts > 0, counts, counts.max() + 1).argmin()), int(counts.argmax())
                    where = f"`{out[0]}.bias`" if out is not None else "no output layer found"
                    off = f"off by {_fmt(gap)}" if math.isfinite(gap) else "not comparable"
                    rep("class-imbalance", "warning",
                        f"training labels are skewed: class {hi} has {int(counts[hi]) / total:.1%} and class {lo} "
                        f"{int(counts[lo]) / total:.1%} of {total} sampled labels (max/min {_fmt(ratio)} > "
                        f"{IMBALANCE_RATIO:g}); the output bias ({where}) is not the log prior ({off}) and the "
                        f"loader does not balance classes",
                        module=out[0] if out is not None else None,
                        figures={"ratio": ratio, "bias_gap": gap if math.isfinite(gap) else -1.0})
        summary_stats = ""
        if g["stats_len"] > 0 and not layout_same:
            rep("unnormalized-input", "info",
                "unnormalized-input: skipped, the float input fields differ across ranks", module="layout")
        if global_stats is not None:
            summary_stats = self._normalization(trainer, fields, dyn, global_stats, rep)
        if g["unshuffled"]:
            rep("unshuffled-data", "warning",
                "the training loader iterates in a fixed order (SequentialSampler, or a DistributedSampler "
                "with shuffle=False): batches are correlated, often sorted by class", module="train")
        if g["no_seed"]:
            rep("no-seed", "info", "no global seed was set before fit (PL_GLOBAL_SEED is unset): this run "
                "cannot be reproduced")

        # 4. the first batch as it enters the net (R2.10)
        if self.first_batch:
            reason = log_first_batch(trainer, batch)
            if reason is not None:
                self.report(trainer, "view-skipped", "info", f"first batch view: {reason}", module="first_batch")

        sizes = sorted(set(train.batch_sizes))
        bs = f"×{sizes[-1]}" if sizes else ""
        parts = [f"{g['train_batches']}{bs} train / {g['val_batches']} val batches"]
        parts.append(f"{n_classes} classes (max/min {_fmt(ratio)})" if counts is not None else "labels n/a")
        parts.append(summary_stats or "no float inputs")
        parts.append(f"{g['dup']} duplicates, {g['overlap']} shared with val" if g["val_loaders"] else
                     f"{g['dup']} duplicates, no val")
        return CardLine(self.title, "finding" if reported else "pass", ", ".join(parts))

    def _normalization(self, trainer: pl.Trainer, fields: list[tuple[str, FeatureStats]],
                       dyn: list[tuple[float, int, float]], global_stats: torch.Tensor, rep: Any) -> str:
        """unnormalized-input per field from the rank-summed statistics; returns the card's figures."""
        offset, summaries = 0, list[str]()
        n_fields = len(fields)
        flags = global_stats[-n_fields:] if n_fields else global_stats[:0]
        for i, (name, stats) in enumerate(fields):
            f = stats.num_features
            _, mean, std = FeatureStats.unpack(global_stats[offset : offset + 4 * f])
            offset += 4 * f
            bad, constant = normalization_verdict(mean, std)
            per_feature, worst_dyn, pooled = dyn[i]
            dynamic = bool(flags[i] > 0)
            if len(fields) == 1 or not summaries:
                summaries.append(
                    f"mean {_fmt(float(mean.mean()))} std {_fmt(float(std.mean()))}" if f == 1 else
                    f"mean {_fmt(float(mean.min()))}..{_fmt(float(mean.max()))} "
                    f"std {_fmt(float(std.min()))}..{_fmt(float(std.max()))}"
                )
            if not bad and not dynamic:
                continue
            what = "channels" if stats.ndim >= 4 else "features"
            msg = []
            if bad:
                worst = ", ".join(
                    f"{_feature_name(name, stats.ndim, k)} (mean {_fmt(float(mean[k]))}, std {_fmt(float(std[k]))})"
                    for k in bad[:3]
                )
                msg.append(f"{len(bad)} of {f} {what} are far from zero-mean/unit-scale (|mean| > 3 std or std "
                           f"outside [0.1, 10]{f'; {constant} constant left out' if constant else ''}): worst {worst}")
            ratio = max((r for r in (per_feature, pooled) if math.isfinite(r)), default=math.nan)
            if dynamic:
                where = (f" ({_feature_name(name, stats.ndim, worst_dyn)})" if per_feature > DYNAMIC_RANGE else
                         " (all features pooled)")
                shown = f"{_fmt(ratio)}{where}" if math.isfinite(ratio) else "above 1e4 on another rank"
                msg.append(f"huge dynamic range: max|x| / median|x| = {shown} > {DYNAMIC_RANGE:g}")
            advice = ("standardise each feature/channel with the training mean and std (T12), or whiten (P6)"
                      if not dynamic else
                      "squash the huge range first with tanh(x/C) or log1p (P6), then standardise each "
                      "feature/channel with the training mean and std (T12)")
            worst_k = bad[0] if bad else 0
            rep("unnormalized-input", "warning", f"{name}: " + "; ".join(msg), advice=advice, module=name,
                figures={"bad_features": len(bad), "worst_mean": float(mean[worst_k]),
                         "worst_std": float(std[worst_k]), "dynamic_range": ratio if math.isfinite(ratio) else -1.0})
        return summaries[0] if summaries else ""


def _to_cpu(batch: Any) -> Any:
    from lightning_tips._utils import apply_to_tensors

    return apply_to_tensors(batch, lambda t: t.detach().cpu())


def _all_sum(trainer: pl.Trainer, pl_module: pl.LightningModule, t: torch.Tensor,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sum over ranks (on the module's device, ``dtype`` there), back on the CPU; identity on one process."""
    if trainer.world_size == 1:
        return t
    out = reduce_sum(trainer, t.to(device=pl_module.device, dtype=dtype or t.dtype))
    return out.detach().cpu().to(t.dtype)

