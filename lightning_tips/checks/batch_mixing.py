"""Pre-flight: sample i's output must depend only on sample i's input (tips R2.12, P12).

Backpropagate from one sample's output (a fixed random weighting of it, so that outputs summing to a
constant, like softmax rows, still carry a gradient) and look at the gradient on the inputs of
every *other* sample: any ``|g| > 1e-7 x max |g|`` means an operation mixes the batch dimension — a
``view``/``reshape`` across samples, a transpose, an RNN or transformer fed ``(N, T, C)`` while
expecting ``(T, N, C)`` (``batch_first``). Reported as ``batch-mixing`` (error: it silently
corrupts training).

On a copy: BatchNorm layers (which legitimately mix samples in training mode) and dropout run in
eval mode (BatchNorm without running statistics gets neutral ones); GroupNorm / LayerNorm are per
sample and stay as they are; all-zero weights (a zero-initialised head or residual-branch norm,
which would block every gradient) get small seeded noise. Inputs are ``split_batch(batch)[0]`` (every floating tensor of a
tuple/dict is checked); integer inputs (token ids) are checked at the output of each
``nn.Embedding`` indexed by the batch's samples. Provenance of the index: one of the batch's integer
fields, a view or a copy of one (``ids[:, 1:]``, ``ids.long()``), or a tensor that moves with the samples
when the batch is rolled by one (``ids + 1``; one extra no-grad forward, only when needed). Any other
embedding output is shared like a parameter and ignored: one of shape ``(1, S, D)`` broadcast over the
batch (Hugging Face's position embeddings), ``pos(arange(S))`` of shape ``(S, D)`` even when ``S`` or
``D`` equals the batch size, a token-type buffer. The real
batch (and so the real batch size) is used; sample ``i = n // 2``.

Noise model: none — the gradient of an independent sample is exactly zero in exact arithmetic; the
threshold ``1e-7 x max |g|`` only absorbs float round-off (e.g. from fused attention kernels).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_tips._utils import (
    apply_to_tensors,
    batch_size,
    first_tensor,
    join_batch,
    model_copy,
    named_tensors,
    split_batch,
)
from lightning_tips.checks._preflight import CardLine, CheckSkipped, PreflightCheck, Verdict, settle
from lightning_tips.checks.output_activation import eval_dropout, trace_training_step

__all__ = ["BatchMixingCheck", "batch_mixing", "batch_mixing_verdict"]

MIXING_THRESHOLD = 1e-7


def _neutral_batchnorm(model: nn.Module) -> None:
    """BatchNorm layers to eval mode; those without running statistics get neutral ones (on a copy)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is None and m.num_features:
                p = next(iter(m.parameters()), None)
                dev = p.device if p is not None else None
                m.register_buffer("running_mean", torch.zeros(m.num_features, device=dev))
                m.register_buffer("running_var", torch.ones(m.num_features, device=dev))
                m.track_running_stats = True
            m.eval()


def _unzero_weights(model: nn.Module) -> None:
    """Fill every all-zero ``weight`` of ``model`` (a copy) with small seeded noise: a zero-initialised head
    (torchvision's ViT) or residual-branch norm (timm's ``zero_init_last``) blocks every gradient, and the
    check is about which samples the architecture connects, not about the values at init."""
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] == "weight" and p.numel() and p.is_floating_point() and not bool(p.any()):
                p.copy_((0.02 * torch.randn(p.shape, generator=g)).to(p.device, p.dtype))


def _batch_dim(shape: torch.Size, n: int) -> int | None:
    """The dimension of a per-sample tensor that indexes the ``n`` samples, or ``None``.

    Only per-sample tensors are evidence: a tensor with a size-1 leading dimension (``(1, S, D)``, e.g.
    a position embedding broadcast over the batch) is shared by every sample, like a parameter, and its
    gradient sums over all of them — never a leak.

    Example:
        >>> _batch_dim(torch.Size([8, 5, 16]), 8), _batch_dim(torch.Size([5, 8, 16]), 8)
        (0, 1)
        >>> _batch_dim(torch.Size([1, 8, 16]), 8) is None
        True
    """
    if len(shape) and shape[0] == n:
        return 0
    if len(shape) and shape[0] == 1:  # broadcast over the batch: shared, not per-sample
        return None
    dims = [d for d, s in enumerate(shape) if s == n]
    return dims[0] if len(dims) == 1 else None


def _call(module: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return module(**inputs)
    if isinstance(inputs, (tuple, list)):
        return module(*inputs)
    return module(inputs)


def _forward(model: nn.Module, inputs: Any, batch: Any) -> torch.Tensor | None:
    """The output the check differentiates: the forward output seen by ``training_step`` (automatic
    optimization) or the module called on ``inputs``."""
    if isinstance(model, pl.LightningModule) and getattr(model, "automatic_optimization", True):
        return trace_training_step(model, batch).output
    return first_tensor(_call(model, inputs))


def _embedding_index(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    idx = args[0] if args else kwargs.get("input")
    return idx if isinstance(idx, torch.Tensor) else None


@dataclass
class _EmbeddingCall:
    name: str  # the module path
    out: torch.Tensor  # the output, made a leaf
    dim: int  # its batch dimension
    index: torch.Tensor | None  # the index tensor the embedding was called with


def _traced_embeddings(model: nn.Module, n: int, run: Callable[[], torch.Tensor | None]
                       ) -> tuple[torch.Tensor | None, list[_EmbeddingCall]]:
    """Run ``run()`` with gradients on, every ``nn.Embedding``/``nn.EmbeddingBag`` output that has a dimension of
    size ``n`` replaced by a fresh leaf (recorded with its index input, in call order)."""
    calls: list[_EmbeddingCall] = []
    handles: list[RemovableHandle] = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):

            def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any,
                     _name: str = name) -> Any:
                if not isinstance(out, torch.Tensor):
                    return None
                bdim = _batch_dim(out.shape, n)
                if bdim is None:
                    return None
                new = out.detach().requires_grad_(True)
                calls.append(_EmbeddingCall(_name, new, bdim, _embedding_index(args, kwargs)))
                return new

            handles.append(m.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.enable_grad():
            out = run()
    finally:
        for h in handles:
            h.remove()
    return out, calls


def _is_batch_field(index: torch.Tensor, fields: list[torch.Tensor]) -> bool:
    """``index`` is one of the batch's integer tensors: the same tensor, a view of its memory (``ids[:, 1:]``)
    or equal to it (a copy, ``ids.long()``)."""
    for t in fields:
        if index is t:
            return True
        try:
            if (index.numel() and t.numel() and index.device == t.device
                    and index.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()):
                return True
            if index.shape == t.shape and bool(torch.equal(index, t.to(index.dtype))):
                return True
        except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, meta)
            continue
    return False


def _embedding_indices(model: nn.Module, run: Callable[[], Any]) -> dict[tuple[str, int], torch.Tensor | None]:
    """The index input of every embedding call of ``run()`` (no gradients), keyed by (module path, call number)."""
    seen: dict[tuple[str, int], torch.Tensor | None] = {}
    counts: dict[str, int] = {}
    handles: list[RemovableHandle] = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):

            def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _out: Any,
                     _name: str = name) -> None:
                k = counts.get(_name, 0)
                counts[_name] = k + 1
                seen[(_name, k)] = _embedding_index(args, kwargs)

            handles.append(m.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return seen


def _shared_embeddings(model: nn.Module, n: int, calls: list[_EmbeddingCall], inputs: Any, batch: Any) -> set[int]:
    """The positions in ``calls`` of embedding outputs that are *shared* by the batch, like a parameter.

    Provenance of the index tensor: one of the batch's integer fields (or a view/copy of it) — per sample;
    without a dimension of size ``n`` — shared (``pos(arange(S))``); otherwise the batch is rolled by one
    sample and the forward run again: an index that does not move with the samples (``arange(S)`` with
    ``S == n``, a buffer of token types) is shared. A rolled forward that fails leaves the call shared
    (no evidence, no verdict).
    """
    fields = [t for _, t in named_tensors(batch) if not t.is_floating_point() and not t.is_complex()]
    shared: set[int] = set()
    unsure: list[int] = []
    for k, c in enumerate(calls):
        if c.index is None or _is_batch_field(c.index, fields):
            continue
        if n not in c.index.shape:
            shared.add(k)
        else:
            unsure.append(k)
    if not unsure:
        return shared

    def roll(t: torch.Tensor) -> torch.Tensor:
        return t.detach().roll(1, 0) if t.dim() > 0 and t.shape[0] == n else t

    rolled_inputs = apply_to_tensors(inputs, roll)
    split = split_batch(batch)
    rolled_batch = (join_batch(batch, rolled_inputs, apply_to_tensors(split[1], roll)) if split is not None
                    else rolled_inputs)
    try:
        rolled = _embedding_indices(model, lambda: _forward(model, rolled_inputs, rolled_batch))
    except Exception:  # a model that rejects the rolled batch: no evidence that these index the samples
        return shared | set(unsure)
    numbers: dict[str, int] = {}
    for k, c in enumerate(calls):
        number = numbers.get(c.name, 0)
        numbers[c.name] = number + 1
        if k not in unsure:
            continue
        other = rolled.get((c.name, number))
        index = c.index
        assert index is not None
        if other is None or (other.shape == index.shape and bool(torch.equal(other, index))):
            shared.add(k)
    return shared


def batch_mixing(module: nn.Module, batch: Any, sample: int | None = None) -> dict[str, Any]:
    """Gradient of sample ``sample``'s output on every sample's input (on a copy of ``module``).

    A LightningModule (automatic optimization) runs its own ``training_step`` and its forward output
    is used; any other module is called on ``split_batch(batch)[0]`` (or ``batch``). Returns
    ``{"leak": max |g| on other samples, "total": max |g|, "sample": i, "field": where the leak is
    largest, "fields": inputs checked}``.

    Raises:
        CheckSkipped: the check cannot apply (batch of one, no gradient reaching the inputs, no
            batch dimension in the output).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2))
        >>> batch_mixing(net, torch.randn(6, 3))["leak"]
        0.0
        >>> class Mixer(nn.Module):
        ...     def forward(self, x):
        ...         return x.reshape(x.shape[1], -1).softmax(1).reshape(x.shape)  # a view across samples
        >>> batch_mixing(Mixer(), torch.randn(6, 3))["leak"] > 0
        True
    """
    n = batch_size(batch)
    if n is None or n < 2:
        raise CheckSkipped(f"needs a batch of at least 2 samples, got {n}")
    i = n // 2 if sample is None else sample
    model = model_copy(module)
    eval_dropout(model)
    _neutral_batchnorm(model)
    _unzero_weights(model)
    model.zero_grad(set_to_none=True)

    def leaf(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and t.dim() > 0 and t.shape[0] == n:
            return t.detach().clone().requires_grad_(True)
        return t

    split = split_batch(batch)
    if split is not None:
        inputs = apply_to_tensors(split[0], leaf)
        new_batch = join_batch(batch, inputs, split[1])
        leaves = [(name, t, 0) for name, t in named_tensors(inputs, "input") if t.requires_grad]
    else:
        inputs = new_batch = apply_to_tensors(batch, leaf)
        leaves = [(name, t, 0) for name, t in named_tensors(new_batch, "batch") if t.requires_grad]

    out, calls = _traced_embeddings(model, n, lambda: _forward(model, inputs, new_batch))
    shared = _shared_embeddings(model, n, calls, inputs, new_batch)
    embedded = [(f"{c.name} (embedding output)", c.out, c.dim) for k, c in enumerate(calls) if k not in shared]
    leaves += embedded
    if not leaves:
        raise CheckSkipped("the inputs hold no floating-point tensor and no nn.Embedding was called")
    if out is None or not out.is_floating_point() or not out.requires_grad:
        raise CheckSkipped("the model's output does not depend on its inputs through a gradient")
    bdim = _batch_dim(out.shape, n)
    if bdim is None:
        raise CheckSkipped(f"no batch dimension of size {n} in the output of shape {tuple(out.shape)}")
    picked = out.select(bdim, i).float()
    g = torch.Generator(device="cpu").manual_seed(0)
    weight = torch.randn(picked.shape, generator=g).to(picked.device)
    grads = torch.autograd.grad((picked * weight).sum(), [t for _, t, _ in leaves], allow_unused=True)
    total = torch.zeros((), device=picked.device)
    leaks: list[torch.Tensor] = []
    for (_, t, d), gr in zip(leaves, grads):
        if gr is None:
            leaks.append(torch.zeros((), device=picked.device))
            continue
        a = gr.detach().float().abs()
        total = torch.maximum(total, a.max())
        others = torch.cat([a.narrow(d, 0, i), a.narrow(d, i + 1, t.shape[d] - i - 1)], d)
        leaks.append(others.max() if others.numel() else torch.zeros((), device=a.device))
    values = torch.stack([total, *leaks]).tolist()  # one host sync
    total_v, leak_vs = values[0], values[1:]
    worst = max(range(len(leak_vs)), key=lambda k: leak_vs[k])
    return {"leak": leak_vs[worst], "total": total_v, "sample": i, "field": leaves[worst][0],
            "fields": [name for name, _, _ in leaves]}


def batch_mixing_verdict(result: dict[str, Any], threshold: float = MIXING_THRESHOLD) -> Verdict:
    """``batch-mixing`` error when the leak exceeds ``threshold x`` the largest gradient.

    Example:
        >>> batch_mixing_verdict({"leak": 0.3, "total": 1.0, "sample": 32, "field": "input"}).severity
        'error'
    """
    code = "batch-mixing"
    leak, total, i = float(result["leak"]), float(result["total"]), int(result["sample"])
    if not (math.isfinite(leak) and math.isfinite(total)):
        raise CheckSkipped(f"the input-gradients are not finite (max {total}): non-finite inputs or weights "
                           "(see the nonfinite-* findings), nothing to judge until they are fixed")
    if total <= 0:
        raise CheckSkipped(f"no gradient reached the inputs from sample {i}'s output (see input-independent)")
    rel = leak / total
    figures = {"leak": leak, "max_gradient": total, "relative": rel, "sample": float(i)}
    text = f"output of sample {i}: max input-gradient on other samples {leak:.3g} = {rel:.2g} x max |g|"
    if rel > threshold:
        return Verdict(
            code, "error",
            f"{text} ({result['field']}): the model mixes data across the batch dimension, so each sample's "
            "gradient update depends on the others",
            figures, module=str(result["field"]),
        )
    return Verdict(code, None, text, figures)


class BatchMixingCheck(PreflightCheck):
    """Pre-flight check ``batch-mixing`` (tips R2.12, P12): backprop from sample ``i``'s output and
    require zero gradient on every other sample's input (``|g| <= 1e-7 x max |g|``), on a copy with
    BatchNorm and dropout in eval mode. Float inputs of tuple/dict batches and ``nn.Embedding``
    outputs (for token ids) are checked; the real batch size is used.

    Args:
        budget_s: the safety net, in seconds, when this check runs alone (the work is planned in steps and samples).

    Example:
        >>> net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(4 * 6, 3))
        >>> batch_mixing_verdict(batch_mixing(net, torch.randn(8, 2, 8))).severity is None
        True
        >>> BatchMixingCheck().code
        'batch-mixing'
    """

    title: ClassVar[str] = "batch independence"
    code: ClassVar[str] = "batch-mixing"

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CardLine:
        def measure() -> tuple[list[Verdict], str]:
            v = batch_mixing_verdict(batch_mixing(pl_module, batch))
            f = v.figures
            return [v], (f"sample {int(f['sample'])}: gradient on other samples {f['leak']:.3g} "
                         f"({f['relative']:.2g} x max {f['max_gradient']:.3g})")

        return settle(self, trainer, measure)
