"""Batches: read a data loader without touching the user's data stream, and split a batch into
inputs and targets.

Reading (the observer promise, issue #10 item 3): a check or view that looks at the data must leave
the stream training reads exactly as it was. Global RNGs and the loader's/sampler's generators are
not enough — a dataset may own a random generator (noise, augmentation, sampling), a counter, a
cursor. So:

* a map-style ``DataLoader`` is read through an *independent copy* of its dataset, batch sampler and
  ``collate_fn`` (one :func:`copy.deepcopy`, sharing only the tensors and numeric arrays, which are
  data, not state): the copy's generators, counters and caches advance, the user's do not. A dataset
  that cannot be copied (an open file handle, a lock) is read in place with every random generator
  found on it, its sampler and its loader restored afterwards;
* a stream (an ``IterableDataset``, or any iterable that is not a ``DataLoader`` or a list) is never
  read: the samples read could be lost to training or shift its random stream. :func:`stream_reason`
  says so, and callers look at the batch the training loop hands over instead.

Callers also wrap reads in :func:`~lightning_tips._utils.preserved_rng` (the global RNGs).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

__all__ = [
    "HF_INPUT_KEYS",
    "INPUT_KEYS",
    "LAYOUTS",
    "TARGET_KEYS",
    "call_forward",
    "describe_layout",
    "independent_copy",
    "join_batch",
    "output_logits",
    "owned_generators",
    "peek_batches",
    "preserved_owned_rng",
    "split_batch",
    "stream_reason",
    "unpacked",
]

_MAX_WALK = 20_000  # objects visited when looking for the tensors to share and the generators to restore
_RNG_TYPES = (torch.Generator, np.random.Generator, np.random.RandomState, random.Random)


def stream_reason(loader: Any) -> str | None:
    """Why ``loader`` cannot be read without consuming or shifting the user's stream, or ``None``
    when it can (a map-style ``DataLoader``, or a list/tuple of batches).

    Example:
        >>> stream_reason(DataLoader(range(4))) is None, stream_reason([1, 2]) is None
        (True, True)
        >>> stream_reason(iter([1, 2]))
        'the loader is a list_iterator, not a DataLoader: reading it would consume batches training never sees'
    """
    if isinstance(loader, DataLoader):
        if isinstance(loader.dataset, IterableDataset):
            return (
                f"the loader streams an IterableDataset ({type(loader.dataset).__name__}): reading ahead "
                "would consume samples training never sees, or shift its random stream"
            )
        return None
    if isinstance(loader, (list, tuple)):
        return None
    return (
        f"the loader is a {type(loader).__name__}, not a DataLoader: reading it would consume batches "
        "training never sees"
    )


def _walk(root: Any) -> Iterator[Any]:
    """Objects reachable from ``root`` through attributes, containers and slots (each once), not
    descending into tensors, arrays or generators. Containers and objects are visited up to
    ``_MAX_WALK``; tensors, arrays and generators met on the way do not count (a dataset holding a
    list of a million sample tensors still shares all of them)."""
    seen: set[int] = set()
    todo = [root]
    visited = 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool, type)):
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, (torch.Tensor, np.ndarray, *_RNG_TYPES)) or _shared(obj):
            continue
        visited += 1
        if visited > _MAX_WALK:
            continue  # keep yielding the leaves already queued, open no more containers
        if isinstance(obj, Mapping):
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend(obj)
        else:
            d = getattr(obj, "__dict__", None)
            if isinstance(d, dict):
                todo.extend(d.values())
            for slot in getattr(type(obj), "__slots__", ()):
                if isinstance(slot, str) and hasattr(obj, slot):
                    todo.append(getattr(obj, slot))


def _shared(obj: Any) -> bool:
    """Objects a copy shares instead of copying: modules (weights, transforms), and the Trainer /
    LightningModule / DataModule a dataset may point back to (not the dataset's own state)."""
    if isinstance(obj, torch.nn.Module):
        return True
    import lightning.pytorch as pl

    return isinstance(obj, (pl.Trainer, pl.LightningDataModule))


def independent_copy(objs: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """A deep copy of ``objs`` (copied together, so references between them are kept) that shares
    their tensors, numeric arrays and modules with the originals (and any Trainer or DataModule they
    point back to); ``None`` when they cannot be copied.

    Example:
        >>> class D:
        ...     def __init__(self):
        ...         self.x, self.g = torch.zeros(3), torch.Generator().manual_seed(0)
        >>> d = D()
        >>> (c,) = independent_copy((d,))
        >>> c.x is d.x, c.g is d.g
        (True, False)
    """
    memo: dict[int, Any] = {}
    for obj in _walk(objs):
        if isinstance(obj, torch.Tensor) or (isinstance(obj, np.ndarray) and obj.dtype != object) or _shared(obj):
            memo[id(obj)] = obj
    try:
        return tuple(copy.deepcopy(objs, memo))
    except Exception:  # an open handle, a lock, a C object: the caller reads in place
        return None


def owned_generators(*roots: Any) -> list[Any]:
    """The random generators reachable from ``roots`` (torch, numpy and ``random.Random``)."""
    return [o for root in roots for o in _walk(root) if isinstance(o, _RNG_TYPES)]


def _get_state(g: Any) -> Any:
    if isinstance(g, torch.Generator):
        return g.get_state()
    if isinstance(g, np.random.Generator):
        return copy.deepcopy(g.bit_generator.state)
    if isinstance(g, np.random.RandomState):
        return g.get_state()
    return g.getstate()


def _set_state(g: Any, state: Any) -> None:
    if isinstance(g, torch.Generator):
        g.set_state(state)
    elif isinstance(g, np.random.Generator):
        g.bit_generator.state = state
    elif isinstance(g, np.random.RandomState):
        g.set_state(state)
    else:
        g.setstate(state)


@contextmanager
def preserved_owned_rng(*roots: Any) -> Iterator[None]:
    """Restore, on exit, every random generator reachable from ``roots`` (a dataset's own, its
    sampler's, its loader's)."""
    gens = owned_generators(*roots)
    states = [_get_state(g) for g in gens]
    try:
        yield
    finally:
        for g, s in zip(gens, states):
            _set_state(g, s)


def peek_batches(loader: Any) -> Generator[tuple[Any, list[int] | None], None, None]:
    """``(batch, dataset indices or None)`` of ``loader`` as training would draw them (same sampler
    order when the global RNGs are preserved by the caller), read in this process without touching
    the user's dataset, sampler or loader state (see the module docstring).

    Raises ``ValueError`` (before yielding) for a stream: check :func:`stream_reason` first.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.arange(5.0)), batch_size=2)
        >>> [(b[0].tolist(), idx) for b, idx in peek_batches(loader)]
        [([0.0, 1.0], [0, 1]), ([2.0, 3.0], [2, 3]), ([4.0], [4])]
    """
    reason = stream_reason(loader)
    if reason is not None:
        raise ValueError(reason)
    if isinstance(loader, (list, tuple)):
        for batch in loader:
            yield batch, None
        return
    assert isinstance(loader, DataLoader)
    originals = (loader.dataset, loader.batch_sampler, loader.sampler, loader.collate_fn)
    copied = independent_copy(originals)
    if copied is None:  # read in place, the random generators it owns restored afterwards
        with preserved_owned_rng(loader, *originals):
            yield from _read(*originals)
        return
    yield from _read(*copied)


def _read(dataset: Any, batch_sampler: Any, sampler: Any, collate: Any) -> Iterator[tuple[Any, list[int] | None]]:
    getitems = getattr(dataset, "__getitems__", None)
    if batch_sampler is None:  # automatic batching off: every index is a batch
        for i in sampler:
            yield collate(dataset[i]), ([i] if isinstance(i, int) else None)
        return
    for idx in batch_sampler:
        idx = list(idx)
        items = getitems(idx) if callable(getitems) else [dataset[i] for i in idx]
        yield collate(items), (idx if all(isinstance(i, int) for i in idx) else None)


# --- layouts ---------------------------------------------------------------------------------------
def unpacked(obj: Any) -> Any:
    """``obj`` with every ``PackedSequence`` replaced by its padded ``(N, T, ...)`` tensor, samples in
    their original order: one row per sample, as the other fields have. Floating-point padding is NaN
    (statistics skip non-finite values, so padding does not count), integer padding is ``-1``.

    Example:
        >>> from torch.nn.utils.rnn import pack_sequence
        >>> p = pack_sequence([torch.tensor([1.0]), torch.tensor([2.0, 3.0])], enforce_sorted=False)
        >>> unpacked((p, torch.tensor([0, 1])))[0].tolist()
        [[1.0, nan], [2.0, 3.0]]
    """
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

    if isinstance(obj, PackedSequence):
        pad = math.nan if obj.data.is_floating_point() else -1
        return pad_packed_sequence(obj, batch_first=True, padding_value=pad)[0]
    if isinstance(obj, Mapping):
        return {k: unpacked(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(unpacked(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(unpacked(v) for v in obj)
    return obj


# --- splitting: (inputs, targets) and calling the model ---------------------------------------------
INPUT_KEYS = ("x", "input", "inputs", "image", "images", "features", "data")
"""Dict keys read as the one input tensor, in this order."""
HF_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "input_values",
                 "input_features", "inputs_embeds")
"""Hugging Face-style keys: a dict holding one of them is ``forward(**inputs)``'s keyword arguments
(every key but the target)."""
TARGET_KEYS = ("y", "target", "targets", "label", "labels")
"""Dict keys read as the targets, in this order."""
LAYOUTS = (
    "a tuple/list (inputs, targets); a dict with an input key ("
    + ", ".join(INPUT_KEYS) + ") or Hugging Face-style keys (" + ", ".join(HF_INPUT_KEYS[:4])
    + ", …: forward(**inputs)) and a target key (" + ", ".join(TARGET_KEYS) + ")"
)
"""The batch layouts :func:`split_batch` recognises, in words (for skip messages)."""


def _target_key(batch: Mapping[Any, Any], target_key: str | None) -> Any:
    if target_key is not None:
        return target_key if target_key in batch else None
    return next((k for k in TARGET_KEYS if k in batch), None)


def _seq_index(key: str | None) -> int | None:
    return int(key) if key is not None and key.lstrip("-").isdigit() else None


def split_batch(batch: Any, input_key: str | None = None, target_key: str | None = None) -> tuple[Any, Any] | None:
    """``(inputs, targets)`` of a supervised batch, or ``None`` when the layout is not recognised.

    Recognised (see :data:`LAYOUTS`): ``(x, y)`` / ``[x, y]`` with a tensor ``y``; a dict with an input
    key (:data:`INPUT_KEYS`) and a target key (:data:`TARGET_KEYS`); a Hugging Face-style dict
    (``input_ids``, ``attention_mask``, …, ``labels``) whose inputs are every key but the target — a
    dict, passed as ``forward(**inputs)`` by :func:`call_forward`. ``input_key`` / ``target_key`` name
    the fields of any other dict (or, as ``"0"``, ``"1"``, …, the positions in a tuple batch).

    Example:
        >>> x, y = torch.zeros(2, 3), torch.tensor([0, 1])
        >>> split_batch((x, y))[1].tolist(), split_batch({"pixels": x, "cls": y}) is None
        ([0, 1], True)
        >>> split_batch({"pixels": x, "cls": y}, input_key="pixels", target_key="cls")[1].tolist()
        [0, 1]
        >>> sorted(split_batch({"input_ids": y, "attention_mask": y, "labels": y})[0])
        ['attention_mask', 'input_ids']
    """
    if isinstance(batch, (tuple, list)):
        xi, yi = _seq_index(input_key), _seq_index(target_key)
        if xi is not None or yi is not None:
            if xi is None or yi is None or not (-len(batch) <= xi < len(batch) and -len(batch) <= yi < len(batch)):
                return None
            return (batch[xi], batch[yi]) if isinstance(batch[yi], torch.Tensor) else None
        if len(batch) == 2 and isinstance(batch[1], torch.Tensor):
            return batch[0], batch[1]
        return None
    if isinstance(batch, Mapping):
        yk = _target_key(batch, target_key)
        if yk is None or not isinstance(batch[yk], torch.Tensor):
            return None
        if input_key is not None:
            return (batch[input_key], batch[yk]) if input_key in batch else None
        if any(k in batch for k in HF_INPUT_KEYS):
            return {k: v for k, v in batch.items() if k != yk}, batch[yk]
        xk = next((k for k in INPUT_KEYS if k in batch), None)
        return (batch[xk], batch[yk]) if xk is not None else None
    return None


def join_batch(batch: Any, inputs: Any, targets: Any, input_key: str | None = None,
               target_key: str | None = None) -> Any:
    """The batch with its inputs/targets replaced, in the layout :func:`split_batch` recognised
    (called with the same keys).

    Example:
        >>> b = {"input_ids": torch.tensor([1]), "labels": torch.tensor([0])}
        >>> join_batch(b, {"input_ids": torch.tensor([7])}, torch.tensor([3]))
        {'input_ids': tensor([7]), 'labels': tensor([3])}
    """
    if isinstance(batch, (tuple, list)):
        xi, yi = _seq_index(input_key), _seq_index(target_key)
        if xi is not None and yi is not None:
            items = list(batch)
            items[xi], items[yi] = inputs, targets
            return items if isinstance(batch, list) else tuple(items)
        return type(batch)([inputs, targets]) if isinstance(batch, list) else (inputs, targets)
    new = dict(batch)
    yk = _target_key(batch, target_key)
    if input_key is None and isinstance(inputs, Mapping) and any(k in batch for k in HF_INPUT_KEYS):
        new.update(inputs)
    else:
        xk = input_key if input_key is not None else next(k for k in INPUT_KEYS if k in batch)
        new[xk] = inputs
    new[yk] = targets
    return new


def describe_layout(batch: Any) -> str:
    """A short description of a batch's layout for messages: ``dict with keys ['pixels', 'cls']``."""
    if isinstance(batch, Mapping):
        return f"dict with keys {list(batch.keys())[:8]}"
    if isinstance(batch, (tuple, list)):
        return f"{type(batch).__name__} of {len(batch)}"
    return type(batch).__name__


def call_forward(module: Any, inputs: Any) -> Any:
    """Call ``module`` on a batch's inputs: ``module(**inputs)`` for a dict of ``forward``'s keyword
    arguments (the Hugging Face convention: every key a named parameter, or ``forward(**kwargs)``),
    else ``module(inputs)``.

    Example:
        >>> class HF(torch.nn.Module):
        ...     def forward(self, input_ids, attention_mask=None):
        ...         return input_ids * attention_mask
        >>> call_forward(HF(), {"input_ids": torch.tensor([2]), "attention_mask": torch.tensor([3])}).tolist()
        [6]
    """
    if isinstance(inputs, Mapping) and inputs and all(isinstance(k, str) for k in inputs):
        import inspect

        try:
            sig = inspect.signature(module.forward)
        except (TypeError, ValueError):
            return module(inputs)
        try:
            sig.bind(**inputs)
        except TypeError:
            return module(inputs)
        try:
            sig.bind(inputs)
        except TypeError:
            return module(**inputs)
        named = {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        return module(**inputs) if set(inputs) <= named else module(inputs)
    return module(inputs)


def output_logits(out: Any) -> torch.Tensor | None:
    """The prediction tensor of a model's output: the tensor itself, or the ``logits`` of a
    Hugging Face-style output object or dict; ``None`` otherwise.

    Example:
        >>> output_logits({"logits": torch.ones(1), "loss": torch.zeros(())}).tolist()
        [1.0]
    """
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None
