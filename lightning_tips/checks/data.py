"""Data checks before the first step: look at the data before the model does (tips R1, R2.1, T6, T12,
T16, P6).

:class:`DataChecks` scans a bounded sample of the training and validation loaders — at most
``max_batches`` batches of each, within ``max_scan_s`` seconds — on the CPU, inside
:func:`~lightning_tips._utils.preserved_rng`, without touching the user's data stream: a map-style
loader is read through an independent copy of its dataset, sampler and ``collate_fn`` (see
:mod:`lightning_tips._batch`; a dataset's own generators and counters do not move), in this process
(no worker processes are started), which also gives the dataset index of every sample. A stream (an
``IterableDataset``) is never read ahead — the samples read would be lost to training — so the scan
looks at the first batch the training loop hands over (at step 0) instead; validation streams are
not read at all (the card says so).

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
    * ``unnormalized-input`` (warning): judged per floating-point input field on the features that
      *vary* — per feature/channel (dim 1 of ``(N, C, H, W)``/``(N, C, D, H, W)``, the last dim of
      ``(N, F)`` and of ``(N, T, F)`` sequences, the one value of ``(N,)``); constant features and those
      whose std is below 1% of the median feature's (a border pixel that is almost always 0) are left
      out. Flagged when the varying features' RMS magnitude ``sqrt(mean(x^2))`` is outside
      ``[0.01, 4]``, or when features that are themselves far from unit scale (RMS above 4, or
      ``|mean| > max(1, 3 std)``) carry at least 1% of the field's second moment; or on a dynamic range
      ``max|x| / median|x|`` (median of the non-zero values) above 1e4 per feature or over all features
      pooled, with the tanh(x/C) advice (P6). Standardised features, ``[0, 1]`` images and digits / 16
      pass; raw digits (0..16, RMS 7.7), 0..255 pixels and raw breast-cancer features do not.
    * ``unshuffled-data`` (warning): the train loader's sampler is a ``SequentialSampler``, or a
      ``DistributedSampler`` with ``shuffle=False`` (the user's own, ``use_distributed_sampler=False``;
      the one Lightning injects under DDP always shuffles the train loader, so no finding there);
      never with ``Trainer(overfit_batches=...)``, where Lightning itself turns shuffling off.
    * ``no-seed`` (info): ``PL_GLOBAL_SEED`` is unset (``lightning.seed_everything`` sets it).
    * a skipped ``info`` (``skipped=True``, no advice): a loader raised while being scanned, or a
      batch could not be read; the checks used what was read.

Not applicable, silently (the report card's figures say so): ``class-imbalance`` when the targets
are not class indices (regression, segmentation masks, unlabeled tensor-only batches, dicts without
a recognised target key); ``unnormalized-input`` when no input field is floating point (token ids);
the train/val overlap when there is no validation loader. Under DDP each rank scans its own shard:
the counts are summed over ranks, the verdicts are the same on every rank, but duplicates that sit
on two different ranks are not seen.

The first batch as it enters the net (R2.10) is a view,
:class:`~lightning_tips.views.first_batch.FirstBatchView`; ``Preflight`` (and so ``Recipe``) adds it
next to these checks.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import (
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from lightning_tips import _ddp
from lightning_tips._batch import peek_batches, stream_reason, unpacked
from lightning_tips._utils import (
    batch_size,
    find_output_layer,
    loader_samplers,
    named_tensors,
    nonfinite_fields,
    preserved_rng,
    split_batch,
)
from lightning_tips._validate import check_bool, check_float, check_int, check_str
from lightning_tips.checks._preflight import DEFAULT_BUDGET_S, CardLine, PreflightCheck, Verdict, print_card, settle

__all__ = [
    "DataChecks",
    "FeatureStats",
    "NormalizationVerdict",
    "class_targets",
    "find_duplicates",
    "imbalance_pvalue",
    "imbalance_ratio",
    "normalization_verdict",
    "prior_bias_gap",
    "sample_hashes",
    "sampler_balances",
    "sampler_shuffles",
]

DUPLICATE_FRACTION = 0.01  # duplicate-data: duplicates within train above 1% of the sample
IMBALANCE_RATIO = 3.0  # class-imbalance: max/min class frequency
IMBALANCE_P = 1e-3  # ... and significantly so: one-sided binomial test of max vs min against 3:1, p < 1e-3
IMBALANCE_MIN_LABELS = 30  # ... from at least 30 sampled labels
PRIOR_BIAS_TOLERANCE = 0.5  # class-imbalance: output bias within 0.5 of the log prior = prior init done
SCALE_RANGE = (0.01, 4.0)  # unnormalized-input: RMS magnitude of the varying features outside [0.01, 4]
FEATURE_SCALE = 4.0  # unnormalized-input: a varying feature with RMS magnitude above 4 ...
MEAN_STDS = 3.0  # ... or an offset |mean| > max(1, 3 std) ...
BAD_SHARE = 0.01  # ... counts when such features carry >= 1% of the field's second moment
NEAR_CONSTANT = 0.01  # features whose std is below 1% of the field's typical std are left out
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


def imbalance_pvalue(counts: torch.Tensor, ratio: float = IMBALANCE_RATIO) -> float:
    """How likely the sampled ``counts`` are to skew as much as they do if no class were more than
    ``ratio`` times as frequent as another (``nan`` with fewer than two classes).

    Conditional on the labels of the largest and smallest class, the largest class's count is
    binomial; under the null hypothesis "max/min frequency <= ``ratio``" its share of the two is at
    most ``ratio / (1 + ratio)``. The one-sided tail ``P(X >= n_max)`` is multiplied by the number of
    ordered class pairs, ``k (k - 1)`` (Bonferroni: the pair was picked after looking at the counts).

    Example:
        >>> round(imbalance_pvalue(torch.tensor([7, 6, 5, 2])), 2)  # 20 labels of 4 balanced classes
        1.0
        >>> imbalance_pvalue(torch.tensor([282, 18])) < 1e-12  # 94% / 6% of 300 labels
        True
    """
    present = counts[counts > 0].double()
    k = present.numel()
    if k < 2:
        return math.nan
    hi, lo = int(present.max()), int(present.min())
    m, q = hi + lo, ratio / (1.0 + ratio)
    x = torch.arange(hi, m + 1, dtype=torch.float64)
    log_pmf = (math.lgamma(m + 1) - torch.lgamma(x + 1) - torch.lgamma(m - x + 1)
               + x * math.log(q) + (m - x) * math.log1p(-q))
    tail = float(torch.logsumexp(log_pmf, 0).exp())
    return min(1.0, tail * k * (k - 1))


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


@dataclass
class NormalizationVerdict:
    """What :func:`normalization_verdict` found for one input field.

    ``scale``: the RMS magnitude ``sqrt(mean(x^2))`` of the varying features (count-weighted);
    ``bad``: varying features that are themselves far from unit scale, worst first; ``bad_share``:
    the share of the field's second moment those carry; ``ignored``: features left out as constant or
    near-constant (std below 1% of the median feature's); ``flagged``: the verdict.
    """

    scale: float
    bad: list[int]
    bad_share: float
    ignored: int
    varying: int
    flagged: bool


def normalization_verdict(mean: torch.Tensor, std: torch.Tensor,
                          n: torch.Tensor | None = None) -> NormalizationVerdict:
    """Whether an input field's scale hurts optimisation, judged on the features that vary.

    Constant features and those whose std is below ``NEAR_CONSTANT`` (1%) of the field's typical std
    (the median of the per-feature stds) are left out: a border pixel that is almost
    always 0 does not matter. On the others: the field is flagged when their overall RMS magnitude
    is outside ``SCALE_RANGE`` (0.01 .. 4: unit-scale inputs, ``[0, 1]`` images and standardised
    features pass; raw 0..16 or 0..255 pixels do not), or when some features are themselves far from
    unit scale — RMS magnitude ``sqrt(mean^2 + std^2)`` above 4, or an offset ``|mean| > max(1, 3 std)`` —
    and carry at least ``BAD_SHARE`` (1%) of the field's second moment (weighted by what they put
    into the first layer, so a stray small feature does not count).

    Example:
        >>> v = normalization_verdict(torch.tensor([0.0, 880.0, 5.0, 0.0]), torch.tensor([1.0, 570.0, 0.0, 0.001]))
        >>> v.flagged, v.bad, v.ignored, round(v.scale)
        (True, [1], 2, 741)
        >>> normalization_verdict(torch.tensor([0.3, 0.0001]), torch.tensor([0.4, 0.0025])).flagged  # [0, 1] pixels
        False
    """
    mean, std = mean.double(), std.double()
    w = torch.ones_like(mean) if n is None else n.double().clamp_min(0)
    nonconstant = (std > 1e-8 * mean.abs().clamp_min(1.0)) & (w > 0)
    if not bool(nonconstant.any()):
        return NormalizationVerdict(math.nan, [], 0.0, int(mean.numel()), 0, False)
    typical = float(std[nonconstant].median())
    varying = nonconstant & (std > NEAR_CONSTANT * typical)
    second = mean**2 + std**2  # E[x^2] per feature
    total = float((w * second)[varying].sum())
    scale = math.sqrt(total / float(w[varying].sum()))
    magnitude = second.sqrt()
    bad_mask = varying & ((magnitude > FEATURE_SCALE) | (mean.abs() > torch.clamp(MEAN_STDS * std, min=1.0)))
    bad_share = float((w * second)[bad_mask].sum()) / total if total > 0 else 0.0
    order = torch.argsort(torch.where(bad_mask, magnitude, -1.0), descending=True)
    bad = [int(i) for i in order[: int(bad_mask.sum())]]
    flagged = not (SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]) or (bool(bad) and bad_share >= BAD_SHARE)
    return NormalizationVerdict(scale, bad, bad_share, int(mean.numel() - varying.sum()), int(varying.sum()), flagged)


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


# --- the scan -------------------------------------------------------------------------------------
@dataclass
class _Scan:
    """What one rank read from one split (train or val): one content hash and one name per distinct
    sample (by dataset index where known), label batches, per-field input statistics, NaN counts."""

    batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    nonfinite: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # per distinct sample: "train sample 17"
    full_hashes: list[bytes] = field(default_factory=list)  # inputs and targets
    input_hashes: list[bytes] = field(default_factory=list)  # inputs only
    overlap_count: int = 0  # set by :meth:`match`
    overlap_example: tuple[str, str] | None = None
    labels: list[torch.Tensor] = field(default_factory=list)
    unlabeled_batches: int = 0
    stats: dict[str, FeatureStats] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _seen: set[tuple[str, int]] = field(default_factory=set)

    @property
    def samples(self) -> int:
        return len(self.names)

    @property
    def dup_count(self) -> int:
        return find_duplicates(self.full_hashes)[0]

    @property
    def dup_example(self) -> tuple[str, str] | None:
        pair = find_duplicates(self.full_hashes)[1]
        return (self.names[pair[0]], self.names[pair[1]]) if pair is not None else None

    def match(self, train: _Scan) -> None:
        """Count this split's samples whose inputs are those of a training sample (train/val overlap)."""
        first: dict[bytes, str] = {}
        for h, name in zip(train.input_hashes, train.names):
            first.setdefault(h, name)
        hits = [(name, first[h]) for h, name in zip(self.input_hashes, self.names) if h in first]
        self.overlap_count, self.overlap_example = len(hits), (hits[0] if hits else None)

    def add(self, loader_name: str, batch: Any, indices: list[int] | None, prefix: str,
            keys: tuple[str | None, str | None] = (None, None)) -> None:
        self.batches += 1
        for name, count in nonfinite_fields(batch, prefix):
            self.nonfinite[name] = self.nonfinite.get(name, 0) + count
        batch = unpacked(batch)  # a PackedSequence: one (NaN-padded) row per sample, like the other fields
        split = split_batch(batch, *keys)
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
        # content hashes of distinct samples (the same dataset index drawn again is not a duplicate)
        full, inp = sample_hashes(batch, n), sample_hashes(inputs, n)
        for j in range(min(len(full), len(inp))):
            if indices is not None:
                if (loader_name, indices[j]) in self._seen:
                    continue
                self._seen.add((loader_name, indices[j]))
                self.names.append(f"{loader_name} sample {indices[j]}")
            else:
                self.names.append(f"{loader_name} sample #{self.samples} of the scan")
            self.full_hashes.append(full[j])
            self.input_hashes.append(inp[j])


def _scan(loaders: Sequence[tuple[str, Any]], max_batches: int, deadline: float,
          keys: tuple[str | None, str | None] = (None, None)) -> _Scan:
    out = _Scan()
    for name, loader in loaders:
        prefix = "batch" if len(loaders) == 1 else f"{name} batch"
        count = 0
        try:
            with closing(peek_batches(loader)) as batches:
                for batch, indices in batches:
                    out.add(name, batch, indices, prefix, keys)
                    count += 1
                    if count >= max_batches or time.perf_counter() > deadline:
                        break
        except Exception as err:  # a scan must never crash training; report what was read
            out.errors.append(f"{name}: {type(err).__name__}: {err}")
    return out


def _handed_over(loaders: Any, batch: Any) -> Any:
    """``loaders`` with every stream replaced by ``[its part of batch]`` (the batch the training loop
    handed over: a stream cannot be read ahead without consuming it), or by ``[]`` without a batch."""
    if loaders is None or batch is None:
        return loaders
    if isinstance(loaders, Mapping):
        return {k: v if stream_reason(v) is None else
                ([batch[k]] if isinstance(batch, Mapping) and k in batch else []) for k, v in loaders.items()}
    if isinstance(loaders, (list, tuple)):
        parts = batch if isinstance(batch, (list, tuple)) and len(batch) == len(loaders) else None
        if len(loaders) == 1:
            parts = [batch]
        return [v if stream_reason(v) is None else ([parts[i]] if parts is not None else [])
                for i, v in enumerate(loaders)]
    return loaders if stream_reason(loaders) is None else [[batch]]  # one loader yielding one batch


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


@dataclass
class _Local:
    """One rank's scan, before the ranks sum their figures."""

    train: _Scan
    val: _Scan
    train_loaders: list[tuple[str, Any]]
    val_loaders: list[tuple[str, Any]]
    streams: list[str]  # loaders not read ahead
    fields: list[tuple[str, FeatureStats]]  # float input fields with statistics
    dyn: list[tuple[float, int, float]]  # per field: dynamic_range()
    packed: dict[str, torch.Tensor]  # per field its FeatureStats.pack(), and the dynamic-range flags: summed over ranks


# --- verdicts: pure functions of the rank-summed figures (the same on every rank) ---------------------
def _nonfinite_verdicts(g: Mapping[str, int], train: _Scan, val: _Scan) -> list[Verdict]:
    """``nonfinite-input`` (error) per split holding NaN/Inf; a skipped info when part of the scan failed."""
    out = []
    for name, scan, key in (("train", train, "nonfinite_train"), ("val", val, "nonfinite_val")):
        if g[key] > 0:
            where = ", ".join(f"{f} ({c} values)" for f, c in scan.nonfinite.items()) or "on another rank"
            out.append(Verdict(
                "nonfinite-input", "error",
                f"the {name} loader's batches hold {g[key]} NaN/Inf values: {where} "
                f"(in {g[name + '_batches']} sampled batches)",
                module=f"{name} {next(iter(scan.nonfinite), '')}".strip(), figures={"count": g[key]}))
    if g["scan_errors"]:
        errs = "; ".join(train.errors + val.errors) or "on another rank"
        out.append(Verdict("nonfinite-input", "info", f"data checks: part of the scan could not run ({errs}); the "
                           "checks used the batches read before", module="scan", skipped=True))
    return out


def _duplicate_verdicts(g: Mapping[str, int], train: _Scan, val: _Scan) -> list[Verdict]:
    """``duplicate-data`` (warning): repeats within the training sample, and train/val overlap."""
    out = []
    dup_frac = g["dup"] / g["train_samples"] if g["train_samples"] else 0.0
    if dup_frac > DUPLICATE_FRACTION:
        ex = f" e.g. {train.dup_example[0]} repeats {train.dup_example[1]}" if train.dup_example else ""
        out.append(Verdict(
            "duplicate-data", "warning",
            f"{g['dup']} of {g['train_samples']} sampled training samples ({dup_frac:.1%}) repeat another "
            f"sampled training sample (same content),{ex}",
            module="train", figures={"fraction": dup_frac, "count": g["dup"], "samples": g["train_samples"]}))
    if g["overlap"] > 0:
        frac = g["overlap"] / max(1, g["val_samples"])
        ex = f" e.g. {val.overlap_example[0]} has the inputs of {val.overlap_example[1]}" if val.overlap_example else ""
        out.append(Verdict(
            "duplicate-data", "warning",
            f"{g['overlap']} of {g['val_samples']} sampled validation samples ({frac:.1%}) have the same inputs "
            f"as a sampled training sample: validation scores are inflated,{ex}",
            module="train/val", figures={"fraction": frac, "count": g["overlap"], "samples": g["val_samples"]}))
    return out


def _imbalance_verdicts(counts: torch.Tensor, balanced: bool, out: tuple[str, nn.Module] | None) -> list[Verdict]:
    """``class-imbalance``: skewed labels, no prior-bias output layer ``out``, no balancing sampler.

    A warning needs a skew beyond sampling noise: max/min > 3 over >= 30 sampled labels with
    :func:`imbalance_pvalue` < 1e-3; a ratio above 3 that a balanced-enough set could give by
    chance is an ``info``."""
    ratio = imbalance_ratio(counts)
    if not ratio > IMBALANCE_RATIO or balanced:
        return []
    bias = getattr(out[1], "bias", None) if out is not None else None
    usable = isinstance(bias, torch.Tensor) and not isinstance(bias, nn.parameter.UninitializedParameter)
    gap = prior_bias_gap(bias if usable else None, counts)
    if gap <= PRIOR_BIAS_TOLERANCE:
        return []
    total = int(counts.sum())
    p = imbalance_pvalue(counts)
    lo, hi = int(torch.where(counts > 0, counts, counts.max() + 1).argmin()), int(counts.argmax())
    skew = (f"class {hi} has {int(counts[hi]) / total:.1%} and class {lo} {int(counts[lo]) / total:.1%} of "
            f"{total} sampled labels (max/min {_fmt(ratio)} > {IMBALANCE_RATIO:g}")
    figures = {"ratio": ratio, "p_value": p, "labels": float(total), "bias_gap": gap if math.isfinite(gap) else -1.0}
    if total < IMBALANCE_MIN_LABELS or not p < IMBALANCE_P:
        why = [f"{total} < {IMBALANCE_MIN_LABELS} labels"] if total < IMBALANCE_MIN_LABELS else []
        if not p < IMBALANCE_P:
            why.append(f"p = {_fmt(p)} >= {IMBALANCE_P:g} against a {IMBALANCE_RATIO:g}:1 split")
        return [Verdict(
            "class-imbalance", "info",
            f"the sampled labels look skewed: {skew}), but so few labels could skew this much by chance "
            f"({'; '.join(why)}); no verdict", figures=figures,
            advice="none from this sample; count the labels of the whole training set if in doubt")]
    where = f"`{out[0]}.bias`" if out is not None else "no output layer found"
    off = f"off by {_fmt(gap)}" if math.isfinite(gap) else "not comparable"
    return [Verdict(
        "class-imbalance", "warning",
        f"training labels are skewed: {skew}, p = {_fmt(p)} against a {IMBALANCE_RATIO:g}:1 split); the output "
        f"bias ({where}) is not the log prior ({off}) and the loader does not balance classes",
        module=out[0] if out is not None else None, figures=figures)]


def _order_verdicts(g: Mapping[str, int]) -> list[Verdict]:
    """``unshuffled-data`` (warning) and ``no-seed`` (info)."""
    out = []
    if g["unshuffled"]:
        out.append(Verdict("unshuffled-data", "warning",
                           "the training loader iterates in a fixed order (SequentialSampler, or a DistributedSampler "
                           "with shuffle=False): batches are correlated, often sorted by class", module="train"))
    if g["no_seed"]:
        out.append(Verdict("no-seed", "info", "no global seed was set before fit (PL_GLOBAL_SEED is unset): this "
                           "run cannot be reproduced"))
    return out


def _normalization_verdicts(fields: list[tuple[str, FeatureStats]], dyn: list[tuple[float, int, float]],
                            global_stats: Mapping[str, torch.Tensor]) -> tuple[list[Verdict], str]:
    """``unnormalized-input`` (warning) per field from the rank-summed statistics (named by field, with
    the per-field dynamic-range flags under ``_DYNAMIC``), and the card's figures."""
    summaries, out = list[str](), list[Verdict]()
    flags = global_stats[_DYNAMIC]
    for i, (name, stats) in enumerate(fields):
        f = stats.num_features
        n, mean, std = FeatureStats.unpack(global_stats[name])
        v = normalization_verdict(mean, std, n)
        per_feature, worst_dyn, pooled = dyn[i]
        dynamic = bool(flags[i] > 0)
        if len(fields) == 1 or not summaries:
            summaries.append(
                f"mean {_fmt(float(mean.mean()))} std {_fmt(float(std.mean()))}" if f == 1 else
                f"mean {_fmt(float(mean.min()))}..{_fmt(float(mean.max()))} "
                f"std {_fmt(float(std.min()))}..{_fmt(float(std.max()))}"
                + (f", RMS {_fmt(v.scale)}" if math.isfinite(v.scale) else "")
            )
        if not v.flagged and not dynamic:
            continue
        what = "channels" if stats.ndim >= 4 else "features"
        msg = []
        if v.flagged:
            ignored = f"; {v.ignored} constant or near-constant left out" if v.ignored else ""
            msg.append(f"the {v.varying} varying {what} have an RMS magnitude of {_fmt(v.scale)} "
                       f"(unit scale is 0.01..{SCALE_RANGE[1]:g}{ignored})")
            if v.bad:
                worst = ", ".join(
                    f"{_feature_name(name, stats.ndim, k)} (mean {_fmt(float(mean[k]))}, std {_fmt(float(std[k]))})"
                    for k in v.bad[:3]
                )
                msg.append(f"{len(v.bad)} of them are far from unit scale (RMS > {FEATURE_SCALE:g} or "
                           f"|mean| > max(1, 3 std); {v.bad_share:.0%} of the input's energy): worst {worst}")
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
        worst_k = v.bad[0] if v.bad else int(torch.argmax(mean**2 + std**2))
        out.append(Verdict("unnormalized-input", "warning", f"{name}: " + "; ".join(msg), advice=advice,
                           module=name, figures={"bad_features": len(v.bad), "worst_mean": float(mean[worst_k]),
                     "worst_std": float(std[worst_k]), "scale": v.scale if math.isfinite(v.scale) else -1.0,
                     "dynamic_range": ratio if math.isfinite(ratio) else -1.0}))
    return out, summaries[0] if summaries else ""


# --- the callback ---------------------------------------------------------------------------------
_DYNAMIC = "dynamic range flags"  # the packed statistics' entry beside the fields (field names are batch[...])
_META = (
    "train_batches", "train_samples", "val_batches", "val_samples", "val_loaders",
    "nonfinite_train", "nonfinite_val", "dup", "overlap", "scan_errors",
    "labeled_ranks", "unlabeled_batches", "label_size",
    "stats_len", "unshuffled", "balanced", "no_seed",
)  # fmt: skip


class DataChecks(PreflightCheck):
    """Pre-flight data checks on a bounded sample of the train and val loaders (tips R1, R2.1, T6,
    T12, T16, P6).

    Reports ``nonfinite-input`` (error), ``duplicate-data``, ``class-imbalance``,
    ``unnormalized-input``, ``unshuffled-data`` (warnings), ``no-seed`` (info); see the module
    docstring for the thresholds. Observes only: the scan reads copies on the CPU inside
    ``preserved_rng`` and never reads a stream ahead, so training is bit-for-bit unchanged.

    Args:
        max_batches: at most this many batches of the train loader, and of the val loader(s), are scanned.
        max_scan_s: a safety net for slow loaders: the scan stops reading after this many seconds
            (train gets 60% of it first). The scan is bounded by ``max_batches``, so the figures do not
            depend on the machine's speed unless this limit is hit.
        first_batch: whether the composite that holds this check (``Preflight``, ``Recipe``) also
            shows the first batch as it enters the net (R2.10: image panels or a table under
            ``tips/first_batch``, the fields printed once), with
            :class:`~lightning_tips.views.first_batch.FirstBatchView`. A check does not draw: used
            alone, ``DataChecks`` shows no picture whatever this says; add
            ``FirstBatchView(input_key=..., target_key=...)`` to the callbacks for it.
        budget_s: the safety net, in seconds, when this check runs alone (the work is planned in steps and samples).
        input_key: the batch dict's key holding the model's input (e.g. ``"pixels"``) when it is not
            one of the recognised keys (see :data:`lightning_tips._batch.LAYOUTS`); for a tuple batch, its
            position (``"0"``).
        target_key: the batch dict's key holding the targets (e.g. ``"cls"``); for a tuple batch, its
            position (``"1"``). Without recognisable targets the label checks do not apply.

    Example:
        >>> import torch
        >>> from lightning_tips.checks.data import DataChecks, imbalance_ratio, normalization_verdict
        >>> checks = DataChecks(max_batches=5)
        >>> checks.title, imbalance_ratio(torch.tensor([95, 5]))
        ('data', 19.0)
        >>> normalization_verdict(torch.tensor([655.0]), torch.tensor([352.0])).flagged  # raw breast-cancer "area"
        True
    """

    title: ClassVar[str] = "data"
    code: ClassVar[str] = "nonfinite-input"
    codes: ClassVar[tuple[str, ...]] = (
        "nonfinite-input", "duplicate-data", "class-imbalance", "unnormalized-input", "unshuffled-data", "no-seed",
    )  # fmt: skip

    def __init__(
        self,
        max_batches: int = 20,
        max_scan_s: float = 30.0,
        first_batch: bool = True,
        budget_s: float = DEFAULT_BUDGET_S,
        input_key: str | None = None,
        target_key: str | None = None,
    ) -> None:
        super().__init__(budget_s=budget_s)
        self.input_key = check_str("input_key", input_key, optional=True)
        self.target_key = check_str("target_key", target_key, optional=True)
        check_int("max_batches", max_batches, low=1)
        check_float("max_scan_s", max_scan_s, low=0.0, low_open=True)
        check_bool("first_batch", first_batch)
        self.max_batches = max_batches
        self.max_scan_s = max_scan_s
        self.first_batch = first_batch
        self._scanned = False  # the scan ran this fit (in pre-flight, or on the batch handed over at step 0)

    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super()._begin_fit(trainer, pl_module)
        self._scanned = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """At step 0: a streaming training loader cannot be read in pre-flight without consuming it, so
        the scan runs once on the first batch the loop hands over (on every rank)."""
        if batch_idx != 0 or trainer.global_step != 0 or trainer.ckpt_path is not None:
            return
        loaders = trainer.train_dataloader
        parts = list(loaders.values()) if isinstance(loaders, Mapping) else (
            list(loaders) if isinstance(loaders, (list, tuple)) else [loaders])
        if not self._scanned and any(stream_reason(ld) is not None for ld in parts if ld is not None):
            line = self.run_check(trainer, pl_module, batch)
            print_card(trainer, [line], title="lightning_tips pre-flight (data: the first training batch)")

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CardLine:
        """The measurement (:meth:`_measure`), settled like every pre-flight check's by
        :func:`~lightning_tips.checks._preflight.settle` — with ``agreed=True``: the verdicts are pure
        functions of figures already summed over ranks, hence the same on every rank, so settle's
        lowest-rank agreement (collectives per code) is not needed."""
        self._scanned = True
        return settle(self, trainer, lambda: self._measure(trainer, pl_module, batch), agreed=True)

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> tuple[list[Verdict], str]:
        """``(verdicts, card detail)`` in three steps: a local scan (:meth:`_scan_local`: no collectives,
        never raises), the global figures (the same collectives in the same order on every rank: counts
        and moments summed over ranks), and the verdicts — pure functions of those global figures (the
        module's own functions: :func:`imbalance_ratio`, :func:`normalization_verdict`, ...)."""
        m = self._scan_local(trainer, pl_module, batch)
        train, val, train_loaders, val_loaders, streams = m.train, m.val, m.train_loaders, m.val_loaders, m.streams
        fields, dyn, packed = m.fields, m.dyn, m.packed
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
            "stats_len": sum(t.numel() for t in packed.values()),  # 0 on every rank: no float inputs anywhere
            # overfit_batches > 0: Lightning itself turned shuffling off (the user's shuffle=True is moot)
            "unshuffled": int(any(s is False for s in shuffles) and not getattr(trainer, "overfit_batches", 0)),
            "balanced": int(any(sampler_balances(loader) for _, loader in train_loaders)),
            "no_seed": int(os.environ.get("PL_GLOBAL_SEED") is None),
        }  # fmt: skip
        meta = _ddp.reduce(trainer, {k: torch.tensor(local[k], dtype=torch.int64) for k in _META if k != "label_size"},
                           site="DataChecks figures")
        meta.update(_ddp.reduce(trainer, {"label_size": torch.tensor(local["label_size"])}, "max", site="DataChecks label size"))
        g = {k: int(v) for k, v in meta.items()}
        labels_apply = g["labeled_ranks"] > 0 and g["unlabeled_batches"] == 0 and 0 < g["label_size"] <= MAX_CLASSES
        counts = None
        if labels_apply:
            local_counts = torch.bincount(labels, minlength=g["label_size"])[: g["label_size"]]
            counts = _ddp.reduce(trainer, {"label_counts": local_counts}, site="DataChecks label counts")["label_counts"]
        global_stats = None
        if g["stats_len"] > 0:  # the per-feature stats' layout must match on every rank, else skipped
            global_stats = _ddp.reduce(trainer, packed, site="DataChecks feature stats", on_mismatch="skip")
        layout_same = global_stats is not None

        # 3. verdicts: pure functions of the global figures (every rank reports the same; rank zero speaks)
        verdicts = [*_nonfinite_verdicts(g, train, val), *_duplicate_verdicts(g, train, val)]
        ratio, n_classes = math.nan, 0
        if counts is not None:
            ratio, n_classes = imbalance_ratio(counts), int((counts > 0).sum())
            verdicts += _imbalance_verdicts(counts, bool(g["balanced"]), find_output_layer(pl_module))
        summary_stats = ""
        if g["stats_len"] > 0 and not layout_same:
            verdicts.append(Verdict("unnormalized-input", "info", "unnormalized-input: skipped, the float input "
                                    "fields differ across ranks", module="layout", skipped=True))
        if global_stats is not None:
            found, summary_stats = _normalization_verdicts(fields, dyn, global_stats)
            verdicts += found
        verdicts += _order_verdicts(g)

        sizes = sorted(set(train.batch_sizes))
        bs = f"×{sizes[-1]}" if sizes else ""
        parts = [f"{g['train_batches']}{bs} train / {g['val_batches']} val batches"]
        parts.append(f"{n_classes} classes (max/min {_fmt(ratio)})" if counts is not None else
                     "labels n/a (no class-index targets; name a dict's with target_key=)" if g["unlabeled_batches"]
                     else "labels n/a")
        parts.append(summary_stats or "no float inputs")
        parts.append(f"{g['dup']} duplicates, {g['overlap']} shared with val" if g["val_loaders"] else
                     f"{g['dup']} duplicates, no val")
        if streams:
            parts.append(f"streams not read ahead: {', '.join(streams)} (the training batch handed over stands in)")
        return verdicts, ", ".join(parts)

    def _scan_local(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> _Local:
        """The local scan of the train and val loaders: no collectives, and nothing here may raise (a
        rank that skipped the collectives that follow would hang the others)."""
        start = time.perf_counter()
        train, val, train_loaders, val_loaders = _Scan(), _Scan(), list[tuple[str, Any]](), list[tuple[str, Any]]()
        streams: list[str] = []
        fields: list[tuple[str, FeatureStats]] = []
        dyn: list[tuple[float, int, float]] = []
        packed: dict[str, torch.Tensor] = {}
        try:
            # a stream is never read ahead (it would lose samples to training): its part of the
            # batch the loop handed over stands in for it
            cpu_batch = _to_cpu(batch) if batch is not None else None
            streams = [n for n, ld in _named_loaders(trainer.train_dataloader, "train") if stream_reason(ld)]
            train_loaders = _named_loaders(_handed_over(trainer.train_dataloader, cpu_batch), "train")
            if not train_loaders and cpu_batch is not None:  # no loader object: the given batch is the sample
                train_loaders = [("train", [cpu_batch])]
            val_all = _named_loaders(_val_source(trainer, pl_module), "val")
            streams += [n for n, ld in val_all if stream_reason(ld)]
            val_loaders = [(n, ld) for n, ld in val_all if stream_reason(ld) is None]
            end = start + self.max_scan_s
            overall = getattr(self, "_deadline", None)  # the composite pre-flight's budget, when set
            if isinstance(overall, float):
                end = max(start + 0.1 * self.max_scan_s, min(end, overall))
            with preserved_rng([pl_module.device]):
                keys = (self.input_key, self.target_key)
                train = _scan(train_loaders, self.max_batches, start + 0.6 * (end - start), keys=keys)
                val = _scan(val_loaders, self.max_batches, end, keys=keys)
                val.match(train)
            fields = [(k, s) for k, s in train.stats.items() if s.valid and s.num_features > 0]
            dyn = [s.dynamic_range() for _, s in fields]
            if fields:
                flags = torch.tensor([float(r > DYNAMIC_RANGE or p > DYNAMIC_RANGE) for r, _, p in dyn],
                                     dtype=torch.float64)
                packed = {**{k: s.pack() for k, s in fields}, _DYNAMIC: flags}
        except Exception as err:
            train.errors.append(f"{type(err).__name__}: {err}")
            fields, dyn, packed = [], [], {}
        return _Local(train, val, train_loaders, val_loaders, streams, fields, dyn, packed)


def _to_cpu(batch: Any) -> Any:
    from lightning_tips._utils import apply_to_tensors

    return apply_to_tensors(batch, lambda t: t.detach().cpu())
