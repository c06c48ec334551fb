"""Small helpers shared by the checks, fixes and views: batches, RNG, model copies, ranks."""

from __future__ import annotations

import copy
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

# batch splitting lives with the rest of the batch logic (lightning_tips._batch); re-exported here
from lightning_tips._batch import join_batch, split_batch
from lightning_tips._ddp import all_ranks, any_rank  # re-exported: the cross-rank helpers live in _ddp

if TYPE_CHECKING:  # pragma: no cover
    import lightning.pytorch as pl

__all__ = [
    "all_ranks",
    "any_rank",
    "apply_to_tensors",
    "batch_size",
    "find_output_layer",
    "first_tensor",
    "histogram_period",
    "is_sampled",
    "join_batch",
    "loader_samplers",
    "model_copy",
    "named_tensors",
    "preserved_generators",
    "preserved_loader_rng",
    "preserved_rng",
    "split_batch",
    "step_loss",
]



EARLY_STEPS = frozenset((0, 1, 2, 5, 10, 20, 50))
"""Steps sampled densely at the start of training (most pathologies show in the first steps)."""


def is_sampled(step: int, every_n_steps: int, dense_start: bool = False) -> bool:
    """Whether ``step`` is a sampled step: every ``every_n_steps``-th step, and with ``dense_start``
    also the early steps 0, 1, 2, 5, 10, 20, 50 — seven extra samples per fit, so the amortised cost
    is unchanged. Decided from ``global_step`` only: the same on every rank.

    This is the pack's one schedule, behind every ``*_every_n_steps`` knob: a period ``n >= 1`` acts on
    the steps where ``global_step % n == 0``; a period ``0`` means **no periodic work** (nothing is
    sampled, not even the dense start) — what a callback does at fixed points (at the start, at the end
    of training) still happens. A knob that also takes ``None`` follows its callback's main period.

    Example:
        >>> [s for s in range(120) if is_sampled(s, 100, dense_start=True)]
        [0, 1, 2, 5, 10, 20, 50, 100]
    """
    if every_n_steps <= 0:
        return False
    return step % every_n_steps == 0 or (dense_start and step in EARLY_STEPS)


def histogram_period(every_n_steps: int | None) -> int:
    """The period of a ``histogram_every_n_steps`` knob: ``None`` follows the sampling (every sampled step).

    Example:
        >>> histogram_period(None), histogram_period(0), histogram_period(500)
        (1, 0, 500)
    """
    return 1 if every_n_steps is None else every_n_steps


def apply_to_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor of a nested tuple/list/dict, keeping the structure."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return type(obj)({k: apply_to_tensors(v, fn) for k, v in obj.items()})  # type: ignore[call-arg]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(apply_to_tensors(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(apply_to_tensors(v, fn) for v in obj)
    return obj


def named_tensors(obj: Any, prefix: str = "batch") -> Iterator[tuple[str, torch.Tensor]]:
    """``(field name, tensor)`` for every tensor of a nested batch: ``batch[0]``, ``batch['x']``."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from named_tensors(v, f"{prefix}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from named_tensors(v, f"{prefix}[{i}]")


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor of a nested structure, or ``None``."""
    return next((t for _, t in named_tensors(obj)), None)


def batch_size(batch: Any) -> int | None:
    """The leading dimension of the batch's first tensor."""
    t = first_tensor(batch)
    return int(t.shape[0]) if t is not None and t.dim() > 0 else None


@contextmanager
def preserved_rng(devices: Sequence[torch.device] = ()) -> Iterator[None]:
    """Restore the python, numpy, torch (and CUDA) RNG states on exit: pre-flight work is invisible."""
    py, npy = random.getstate(), np.random.get_state()
    cuda_devices = [d for d in devices if d.type == "cuda"]
    with torch.random.fork_rng(devices=cuda_devices, enabled=True):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def loader_samplers(loader: Any) -> list[Any]:
    """The sampler objects of a loader: batch sampler, sampler, their inner samplers, and the sampler
    Lightning's ``DistributedSamplerWrapper`` wraps."""
    from torch.utils.data import DistributedSampler

    found: list[Any] = []
    todo = [getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)]
    while todo and len(found) < 16:
        s = todo.pop(0)
        if s is None or any(s is f for f in found):
            continue
        found.append(s)
        todo.append(getattr(s, "sampler", None))
        wrapped = getattr(getattr(s, "dataset", None), "_sampler", None)  # DistributedSamplerWrapper
        if isinstance(s, DistributedSampler) and wrapped is not None:
            todo.append(wrapped)
    return found


@contextmanager
def preserved_generators(loader: Any) -> Iterator[None]:
    """Restore every ``torch.Generator`` the loader and its samplers own (``DataLoader(generator=g)``,
    ``RandomSampler(generator=g)``): reading from the loader leaves its future order unchanged.
    ``loader`` may also be a list or dict of loaders (several training loaders)."""
    loaders = list(loader.values()) if isinstance(loader, Mapping) else (
        list(loader) if isinstance(loader, (list, tuple)) else [loader]
    )
    gens: list[torch.Generator] = []
    for obj in [o for ld in loaders for o in (ld, *loader_samplers(ld))]:
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator) and not any(g is h for h in gens):
            gens.append(g)
    states = [g.get_state() for g in gens]
    try:
        yield
    finally:
        for g, state in zip(gens, states):
            g.set_state(state)


@contextmanager
def preserved_loader_rng(loader: Any, devices: Sequence[torch.device] = ()) -> Iterator[None]:
    """:func:`preserved_rng` and :func:`preserved_generators` together: a scan of ``loader`` is invisible."""
    with preserved_rng(devices), preserved_generators(loader):
        yield


def model_copy(module: nn.Module) -> nn.Module:
    """A deep copy detached from the Trainer (a LightningModule drops its trainer reference)."""
    return copy.deepcopy(module)


def step_loss(module: pl.LightningModule, batch: Any, batch_idx: int = 0) -> torch.Tensor | str:
    """Run the module's own ``training_step`` and return its loss, or a reason why there is none.

    ``self.log`` calls inside ``training_step`` are silenced (the copy has no trainer).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*self\.log.*")
        warnings.filterwarnings("ignore", message=r".*trainer.*reference.*")
        out = module.training_step(batch, batch_idx)
    if isinstance(out, torch.Tensor):
        return out if out.numel() == 1 else f"training_step returned a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping) and isinstance(out.get("loss"), torch.Tensor):
        return out["loss"]
    if out is None:
        return "training_step returned None"
    return f"training_step returned a {type(out).__name__} without a 'loss' tensor"


_OUTPUT_TYPES = (nn.Linear, nn.LazyLinear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def find_output_layer(module: nn.Module, name: str | None = None) -> tuple[str, nn.Module] | None:
    """The output layer: ``name`` if given, else the last ``nn.Linear``/``LazyLinear``/1x1 conv
    registered in the module tree (registration order, as ``named_modules``)."""
    if name is not None:
        return name, module.get_submodule(name)
    found: tuple[str, nn.Module] | None = None
    for n, m in module.named_modules():
        if isinstance(m, (nn.Linear, nn.LazyLinear)) or (isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and all(k == 1 for k in m.kernel_size)):
            found = (n, m)
    return found


def nonfinite_fields(batch: Any, prefix: str = "batch") -> list[tuple[str, int]]:
    """``(field, count)`` for each floating-point tensor of ``batch`` holding NaN/Inf.

    Syncs with the device (one ``.tolist()`` for all fields): call it on sampled steps or in pre-flight.

    Example:
        >>> nonfinite_fields((torch.tensor([1.0, float("nan")]), torch.tensor([1, 2])))
        [('batch[0]', 1)]
    """
    fields = [(n, t) for n, t in named_tensors(batch, prefix) if t.is_floating_point() or t.is_complex()]
    if not fields:
        return []
    counts = torch.stack([(~torch.isfinite(t)).sum() for _, t in fields]).tolist()
    return [(n, int(c)) for (n, _), c in zip(fields, counts) if c]
