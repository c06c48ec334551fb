"""Cross-rank reductions over *named* tensors: the one place the pack talks to other ranks.

Every collective the pack issues goes through :func:`reduce` (sum / max / min / any / all),
:func:`gather` or :func:`broadcast`, in the spirit of torchmetrics' ``add_state(dist_reduce_fx=…)``:
callers hand over a ``{name: tensor}`` dict and get one back; nothing outside this module packs or
slices by offset.

Under ``torch.distributed`` (DDP, FSDP, …) the pack's collectives run on a **separate gloo process
group**, created once at ``setup`` on every rank. So they never interleave with Lightning's own
per-step collectives (its SIGTERM broadcast, DDP's gradient all-reduce): a collective the pack issues
at one point can only ever meet the pack's collective on the other ranks.

Each call first exchanges a small fixed-size header: ``(site, global_step, layout, numel)``. Only when
every rank sent the same header does the payload move, so

* the "same layout on every rank" check lives here (a layout that differs at the same site and
  step: :class:`LayoutMismatch`, or ``None`` with ``on_mismatch="skip"``);
* ranks with different numbers of training batches per epoch (``use_distributed_sampler=False``
  with uneven shards: one rank's epoch would end while the others still train, and a rank waiting
  in an epoch-end collective deadlocks against the others' next-step collectives) are detected at
  the first pack collective — the pre-flight or sampled step 0 — and **every** rank raises
  :class:`RanksOutOfStep` with the same clear message instead of waiting forever; so are ranks that
  reach different pack collectives (different sites or global steps).

Single process (``world_size == 1``): the tensors come back unchanged, no synchronisation.

Example:
    >>> import torch
    >>> out = reduce(None, {"count": torch.tensor([3, 4]), "sq": torch.tensor(2.5)}, "sum", site="doc")
    >>> out["count"].tolist(), float(out["sq"])
    ([3, 4], 2.5)
"""

from __future__ import annotations

import atexit
import math
import os
import zlib
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
import torch.distributed as dist

if TYPE_CHECKING:  # pragma: no cover
    import lightning.pytorch as pl

__all__ = [
    "LayoutMismatch",
    "RanksOutOfStep",
    "all_ranks",
    "any_rank",
    "broadcast",
    "broadcast_object",
    "check_in",
    "gather",
    "reduce",
    "setup",
]

Op = Literal["sum", "max", "min", "any", "all"]
_TIMEOUT_ENV = "LIGHTNING_TIPS_DDP_TIMEOUT_S"
_DEFAULT_TIMEOUT_S = 1800.0  # torch's own default for gloo; a peer that never comes is caught earlier (headers)

_group: Any = None  # the pack's gloo group
_group_of: Any = None  # the default group it was created for (a new fit, a new process group: a new one)


@atexit.register
def _release() -> None:
    """Drop the pack's references to its process group while the interpreter is still whole."""
    global _group, _group_of
    _group = _group_of = None


class RanksOutOfStep(RuntimeError):
    """The ranks reached different pack collectives (different sites or global steps)."""


class LayoutMismatch(RuntimeError):
    """The ranks reached the same collective with differently shaped tensors."""


def _world(trainer: pl.Trainer | None) -> int:
    return 1 if trainer is None else int(trainer.world_size)


def _torch_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup(trainer: pl.Trainer | None) -> None:
    """Create the pack's process group (every rank calls this at ``setup``; idempotent)."""
    global _group, _group_of
    if _world(trainer) == 1 or not _torch_dist():
        return
    default = dist.group.WORLD
    if _group is not None and _group_of is default:
        return
    timeout = float(os.environ.get(_TIMEOUT_ENV, _DEFAULT_TIMEOUT_S))
    backend = "gloo" if dist.is_gloo_available() else None
    _group = dist.new_group(backend=backend, timeout=timedelta(seconds=timeout))
    _group_of = default


def _train_batches(trainer: pl.Trainer) -> int:
    """Training batches per epoch on this rank (-1: unknown, an iterable without a length)."""
    n = getattr(trainer, "num_training_batches", math.inf)
    return int(n) if isinstance(n, (int, float)) and math.isfinite(n) else -1


def _site_id(site: str) -> int:
    return zlib.crc32(site.encode())


def _layout(tensors: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    desc = ";".join(f"{k}:{tuple(t.shape)}:{t.dtype}" for k, t in tensors.items())
    return zlib.crc32(desc.encode()), sum(t.numel() for t in tensors.values())


def _pack(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    parts = [t.detach().reshape(-1).to(device="cpu", dtype=torch.float64) for t in tensors.values()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def _unpack(
    flat: torch.Tensor, like: Mapping[str, torch.Tensor], lead: tuple[int, ...] = (), dtype_of: Any = None
) -> dict[str, torch.Tensor]:
    """Split the packed (``lead`` x n) vector back into the named tensors, on their devices."""
    out: dict[str, torch.Tensor] = {}
    at = 0
    for k, t in like.items():
        n = t.numel()
        piece = flat[..., at : at + n].reshape((*lead, *t.shape))
        at += n
        dtype = dtype_of(t) if dtype_of is not None else t.dtype
        out[k] = piece.to(device=t.device, dtype=dtype)
    return out


def _check_headers(trainer: pl.Trainer, site: str, tensors: Mapping[str, torch.Tensor], on_mismatch: str) -> bool:
    """Exchange headers; True when the payload may move. Every rank takes the same branch."""
    sid = _site_id(site)
    layout, numel = _layout(tensors)
    step = int(trainer.global_step)
    header = torch.tensor([sid, step, layout, numel, _train_batches(trainer)], dtype=torch.int64)
    world = _world(trainer)
    rows = [torch.zeros_like(header) for _ in range(world)]
    dist.all_gather(rows, header, group=_group)
    got = [r.tolist() for r in rows]
    if any(g[:2] != got[0][:2] for g in got):
        names: list[Any] = [None] * world
        dist.all_gather_object(names, site, group=_group)  # every rank is on this error path together
        where = "; ".join(f"rank {r} at `{names[r]}` (global step {g[1]})" for r, g in enumerate(got))
        raise RanksOutOfStep(
            f"lightning_tips: the DDP ranks are out of step — {where}. Their training loops diverged, usually "
            "because the ranks have different numbers of training batches (use_distributed_sampler=False with "
            "uneven shards, or an IterableDataset that is not split evenly); Lightning's DDP needs the same "
            "number of batches on every rank. Stopping every rank here instead of waiting forever."
        )
    if any(g[4] != got[0][4] for g in got):
        counts = ", ".join(f"rank {r}: {g[4] if g[4] >= 0 else 'unknown'}" for r, g in enumerate(got))
        raise RanksOutOfStep(
            f"lightning_tips: the DDP ranks have different numbers of training batches per epoch ({counts}). "
            "Their epochs would end at different steps, and a rank whose epoch ends early waits for the others in "
            "epoch-end collectives (Lightning's and the pack's) while they wait in the next training step — a hang, "
            "or a crash when the first rank finishes. Give every rank the same number of batches (keep "
            "use_distributed_sampler=True, or shard evenly and drop the remainder). Stopping every rank now."
        )
    if any(g[2:4] != got[0][2:4] for g in got):
        if on_mismatch == "skip":
            return False
        sizes = ", ".join(f"rank {r}: {g[3]} values" for r, g in enumerate(got))
        raise LayoutMismatch(f"lightning_tips: `{site}` at global step {step} has a different layout per rank ({sizes})")
    return True


def _result_dtype(op: Op) -> Any:
    def dtype_of(t: torch.Tensor) -> torch.dtype:
        if op in ("any", "all"):
            return torch.bool
        if t.dtype == torch.bool:
            return torch.int64 if op == "sum" else torch.bool
        return t.dtype

    return dtype_of


@overload
def reduce(
    trainer: pl.Trainer | None, tensors: Mapping[str, torch.Tensor], op: Op = ..., *, site: str,
    on_mismatch: Literal["raise"] = ...,
) -> dict[str, torch.Tensor]: ...


@overload
def reduce(
    trainer: pl.Trainer | None, tensors: Mapping[str, torch.Tensor], op: Op = ..., *, site: str,
    on_mismatch: Literal["skip"],
) -> dict[str, torch.Tensor] | None: ...


def reduce(
    trainer: pl.Trainer | None,
    tensors: Mapping[str, torch.Tensor],
    op: Op = "sum",
    *,
    site: str,
    on_mismatch: Literal["raise", "skip"] = "raise",
) -> dict[str, torch.Tensor] | None:
    """``{name: tensor}`` reduced elementwise across ranks (``sum``, ``max``, ``min``, ``any``, ``all``).

    The result has each input's shape, dtype (bool for ``any``/``all``; int64 for a summed bool) and
    device. ``None`` only with ``on_mismatch="skip"`` when the ranks' layouts differ (the same on every
    rank). ``site`` names the call site in error messages and the out-of-step check.

    Example:
        >>> out = reduce(None, {"dead": torch.tensor([True, False])}, "any", site="doc")
        >>> out["dead"].tolist()
        [True, False]
    """
    dtype_of = _result_dtype(op)
    if _world(trainer) == 1:
        return {k: t.to(dtype_of(t)) for k, t in tensors.items()}
    assert trainer is not None
    flat = _pack(tensors)
    if op in ("any", "all"):
        flat = (flat != 0).to(torch.float64)
    if not _torch_dist():  # a strategy outside torch.distributed: its own reduce (sum and mean only)
        if op in ("any", "all", "max", "min"):
            gathered = trainer.strategy.all_gather(flat).reshape(-1, flat.numel())
            flat = {"any": gathered.amax(0), "max": gathered.amax(0), "all": gathered.amin(0), "min": gathered.amin(0)}[op]
        else:
            flat = trainer.strategy.reduce(flat, reduce_op="sum")
        return _unpack(flat.cpu(), tensors, dtype_of=dtype_of)
    if _group is None or _group_of is not dist.group.WORLD:
        setup(trainer)  # not set up by a callback's setup (a direct call): every rank gets here together
    if not _check_headers(trainer, site, tensors, on_mismatch):
        return None
    red = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN,
           "any": dist.ReduceOp.MAX, "all": dist.ReduceOp.MIN}[op]
    dist.all_reduce(flat, op=red, group=_group)
    return _unpack(flat, tensors, dtype_of=dtype_of)


@overload
def gather(
    trainer: pl.Trainer | None, tensors: Mapping[str, torch.Tensor], *, site: str, on_mismatch: Literal["raise"] = ...
) -> dict[str, torch.Tensor]: ...


@overload
def gather(
    trainer: pl.Trainer | None, tensors: Mapping[str, torch.Tensor], *, site: str, on_mismatch: Literal["skip"]
) -> dict[str, torch.Tensor] | None: ...


def gather(
    trainer: pl.Trainer | None,
    tensors: Mapping[str, torch.Tensor],
    *,
    site: str,
    on_mismatch: Literal["raise", "skip"] = "raise",
) -> dict[str, torch.Tensor] | None:
    """``{name: tensor}`` from every rank, each stacked to ``(world_size, *shape)`` (rank order).

    Example:
        >>> gather(None, {"rows": torch.tensor([1.0, 2.0])}, site="doc")["rows"].tolist()
        [[1.0, 2.0]]
    """
    world = _world(trainer)
    if world == 1:
        return {k: t.unsqueeze(0) for k, t in tensors.items()}
    assert trainer is not None
    flat = _pack(tensors)
    if not _torch_dist():
        rows_t = trainer.strategy.all_gather(flat).reshape(world, flat.numel()).cpu()
        return _unpack(rows_t, tensors, lead=(world,))
    if _group is None or _group_of is not dist.group.WORLD:
        setup(trainer)
    if not _check_headers(trainer, site, tensors, on_mismatch):
        return None
    rows = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(rows, flat, group=_group)
    return _unpack(torch.stack(rows), tensors, lead=(world,))


def broadcast(
    trainer: pl.Trainer | None, tensors: Mapping[str, torch.Tensor], src: int, *, site: str
) -> dict[str, torch.Tensor]:
    """Rank ``src``'s ``{name: tensor}`` on every rank (every rank passes the same layout)."""
    got = gather(trainer, tensors, site=site)
    return {k: v[src] for k, v in got.items()}


def broadcast_object(trainer: pl.Trainer | None, obj: Any, src: int, *, site: str) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (after the same header check as every call)."""
    if _world(trainer) == 1:
        return obj
    assert trainer is not None
    if not _torch_dist():
        return trainer.strategy.broadcast(obj, src=src)
    if _group is None or _group_of is not dist.group.WORLD:
        setup(trainer)
    _check_headers(trainer, site, {}, "raise")
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_group)
    return box[0]


def check_in(trainer: pl.Trainer | None, *, site: str) -> None:
    """Only the header exchange: raises :class:`RanksOutOfStep` on every rank when the ranks are at
    different places or have different numbers of training batches per epoch. For callbacks whose
    first collective would come at an epoch end (call it at ``on_train_start``, which every rank reaches)."""
    if _world(trainer) == 1 or not _torch_dist():
        return
    assert trainer is not None
    if _group is None or _group_of is not dist.group.WORLD:
        setup(trainer)
    _check_headers(trainer, site, {}, "raise")


def any_rank(trainer: pl.Trainer | None, flag: bool, *, site: str = "any_rank") -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    out = reduce(trainer, {"flag": torch.tensor(bool(flag))}, "any", site=site)
    return bool(out["flag"])


def all_ranks(trainer: pl.Trainer | None, flag: bool, *, site: str = "all_ranks") -> bool:
    """True on every rank when ``flag`` is true on every rank."""
    out = reduce(trainer, {"flag": torch.tensor(bool(flag))}, "all", site=site)
    return bool(out["flag"])
