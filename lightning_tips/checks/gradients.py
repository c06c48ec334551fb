"""Gradient statistics: per-layer gradient norms, ``exploding-gradient`` and ``vanishing-gradient``
(tips T8, P11, P15).

Pure functions first — :func:`grad_norms` (one fused on-device reduction), :func:`layer_groups`,
:func:`layer_grad_norms`, :func:`exploding_verdict`, :func:`vanishing_verdict` — then
:class:`GradientStats`, the thin callback that samples them every ``every_n_steps`` steps.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2))
    >>> net(torch.randn(16, 4)).sum().backward()
    >>> names, norms = layer_grad_norms(net)
    >>> names, norms.shape
    (['0', '2'], torch.Size([2]))
    >>> v = exploding_verdict([1.0, 1.2, 0.9, 250.0], growth=100.0, max_norm=1e4)
    >>> v.code, v.severity, v.figures
    ('exploding-gradient', 'warning', {'total_norm': 250.0, 'baseline': 1.0, 'growth': 250.0, 'max_norm': 10000.0, 'total_norm_order': 100.0})
    >>> v = vanishing_verdict(["0", "2", "4"], [1e-9, 1e-3, 0.5], min_ratio=1e-4, floor=1e-10)
    >>> v.module, v.figures["ratio"], v.figures["min_norm"]
    ('0', 2e-09, 1e-09)
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch import nn

from lightning_tips import _ddp
from lightning_tips._callback import TipCallback
from lightning_tips._loggers import log_histogram, log_scalars
from lightning_tips._utils import EARLY_STEPS, histogram_period, is_sampled
from lightning_tips._validate import check_bool, check_float, check_int
from lightning_tips.checks._verdicts import Verdict, report_verdict
from lightning_tips.checks.lr_decay import optimizer_defaults_verdict, optimizer_family

__all__ = [
    "GradientStats",
    "exploding_verdict",
    "grad_norms",
    "layer_grad_norms",
    "layer_groups",
    "vanishing_verdict",
]

_SHARDED = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)
VANISHING_PERSIST = 3  # sampled steps in a row before vanishing-gradient is concluded
MIN_RATIO = 1e-4  # first-layer / last-layer gradient norm below it: vanishing (GradientStats' default `min_ratio`)


def grad_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each tensor, as one float32 tensor on the first tensor's device; no host sync.

    Uses ``torch._foreach_norm`` (one fused kernel per device and dtype on CUDA) and accumulates in
    float32, so fp16/bf16 gradients do not overflow the norm. Sparse tensors are reduced one by one.

    Example:
        >>> grad_norms([torch.ones(4), torch.full((2, 2), 2.0)])
        tensor([2., 4.])
    """
    if not tensors:
        return torch.zeros(0)
    out_device, dtype0 = tensors[0].device, tensors[0].dtype
    if all(t.device == out_device and t.dtype == dtype0 and not t.is_sparse for t in tensors):
        try:  # the common case: one fused call
            return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=torch.float32))
        except (TypeError, RuntimeError):
            pass
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    sparse: list[int] = []
    for i, t in enumerate(tensors):
        (sparse if t.is_sparse else groups[(t.device, t.dtype)]).append(i)
    result: list[torch.Tensor | None] = [None] * len(tensors)
    for idx in groups.values():
        group = [tensors[i] for i in idx]
        try:
            norms = torch._foreach_norm(group, 2, dtype=torch.float32)
        except (TypeError, RuntimeError):  # older torch without `dtype`, or a dtype foreach lacks
            norms = tuple(torch.linalg.vector_norm(t.float()) for t in group)
        for i, n in zip(idx, norms):
            result[i] = n.to(out_device, torch.float32)
    for i in sparse:
        result[i] = torch.linalg.vector_norm(tensors[i].coalesce().values().float()).to(out_device)
    return torch.stack([r for r in result if r is not None])


def layer_groups(module: nn.Module, weights_only: bool = True) -> list[tuple[str, list[nn.Parameter]]]:
    """``(layer name, parameters)`` for every module that directly owns trainable parameters, in
    registration order (``named_modules``). With ``weights_only`` only parameters with ``ndim > 1``
    count (weight matrices and kernels, not biases or norm scales), and layers without any are left out.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
        >>> [(n, len(ps)) for n, ps in layer_groups(net)]
        [('0', 1), ('2', 1)]
    """
    groups: list[tuple[str, list[nn.Parameter]]] = []
    for name, m in module.named_modules():
        params = [
            p for _, p in m.named_parameters(recurse=False) if p.requires_grad and (p.ndim > 1 or not weights_only)
        ]
        if params:
            groups.append((name, params))
    return groups


def layer_grad_norms(
    module: nn.Module, groups: Sequence[tuple[str, Sequence[nn.Parameter]]] | None = None
) -> tuple[list[str], torch.Tensor]:
    """Per-layer gradient norms (weights only) as one float32 device tensor; layers whose parameters
    have no gradient (frozen, unused this step) are left out. No host sync."""
    groups = layer_groups(module) if groups is None else groups
    names: list[str] = []
    grads: list[torch.Tensor] = []
    owner: list[int] = []
    for name, params in groups:
        gs = [p.grad for p in params if p.grad is not None]
        if gs:
            owner.extend([len(names)] * len(gs))
            names.append(name)
            grads.extend(gs)
    if not grads:
        return [], torch.zeros(0)
    sq = grad_norms(grads).square()
    # dtype=sq.dtype: under 64-true precision the default dtype inside training_step is float64
    layer_sq = torch.zeros(len(names), device=sq.device, dtype=sq.dtype).index_add_(
        0, torch.tensor(owner, device=sq.device), sq
    )
    return names, layer_sq.sqrt()


def exploding_verdict(
    totals: Sequence[float],
    growth: float = 100.0,
    max_norm: float = 1e4,
    baseline_samples: int = 3,
    *,
    step: int | None = None,
    names: Sequence[str] = (),
    norms: Sequence[float] = (),
    clip_val: float | None = None,
    optimizers: Sequence[torch.optim.Optimizer] = (),
) -> Verdict | None:
    """The ``exploding-gradient`` warning when the latest total gradient norm passes ``max_norm``, or is
    more than ``growth`` x the median of the first ``baseline_samples`` sampled norms (judged once more
    samples exist); else ``None`` (T8, P15).

    The rest only shapes the message and ``module``: ``step`` (the step of the latest norm), the per-layer
    ``names`` and ``norms`` (the three largest are named; the largest is the ``module``), ``clip_val``
    (Lightning's ``gradient_clip_val``: these raw norms are pre-clipping) and ``optimizers`` (within the
    first 50 steps, an lr above its family's usual range is named as the likely root cause, R3.2).

    Figures: ``total_norm``, ``baseline``, ``growth``, ``max_norm``, and ``total_norm_order`` (the total
    norm rounded to its power of ten: the one figure ``GradientStats`` reports, so that the finding is
    new again only when the norm moves by 10x or more).

    Example:
        >>> exploding_verdict([0.4, 0.6, 0.5, 0.45, 80.0]).figures["growth"]
        160.0
        >>> exploding_verdict([0.4, 0.6, 0.5, 0.45, 0.5]) is None
        True
        >>> exploding_verdict([2e4], step=7, names=["0", "2"], norms=[2e4, 3.0]).message
        'total gradient norm 2e+04 at step 7 passed max_norm=10000; largest layer norms: `0` 2e+04, `2` 3'
    """
    finite = [t for t in totals if math.isfinite(t)]
    if not finite or not math.isfinite(totals[-1]):
        return None
    latest = totals[-1]
    base = statistics.median(finite[:baseline_samples]) if len(finite) > baseline_samples else math.nan
    grew = math.isfinite(base) and base > 0 and latest > growth * base
    if not (latest > max_norm or grew):
        return None
    figures = {
        "total_norm": latest,
        "baseline": base,
        "growth": latest / base if math.isfinite(base) and base > 0 else math.nan,
        "max_norm": max_norm,
        "total_norm_order": _order(latest),
    }
    why = (
        f"passed max_norm={max_norm:g}" if latest > max_norm
        else f"is {figures['growth']:.3g}x the median of the first {baseline_samples} samples ({base:.3g})"
    )
    clipped = (
        f"; gradient_clip_val={clip_val:g} bounds the update, but these raw (pre-clipping) gradients explode"
        if clip_val else ""
    )
    at = f" at step {step}" if step is not None else ""
    return Verdict(
        "exploding-gradient", "warning",
        f"total gradient norm {latest:.4g}{at} {why}" + _largest(names, norms) + clipped + _lr_cause(optimizers, step),
        figures=figures,
        module=names[max(range(len(norms)), key=norms.__getitem__)] if norms else None,
    )  # fmt: skip


def vanishing_verdict(
    names: Sequence[str],
    norms: Sequence[float],
    min_ratio: float = MIN_RATIO,
    floor: float = 1e-10,
    *,
    step: int | None = None,
    run: Sequence[int] = (),
) -> Verdict | None:
    """The ``vanishing-gradient`` warning when the first layer's gradient norm is below ``min_ratio`` x the
    last layer's, or any layer's norm is below ``floor``; else ``None`` (P11, P15). Non-finite norms are
    not judged. The ``module`` is the first layer (a low ratio) or the layer with the lowest norm.

    One step is not training dynamics: ``GradientStats`` reports it only on several sampled steps in a
    row; ``run`` (those steps, this one included) and ``step`` only shape the message.

    Figures: ``first_norm``, ``last_norm``, ``ratio`` (first / last), ``min_norm``, and ``ratio_order`` /
    ``min_norm_order`` (rounded to their power of ten: the figures ``GradientStats`` reports).

    Example:
        >>> vanishing_verdict(["net.0", "net.2", "net.4"], [1e-9, 1e-3, 0.3]).figures["first_norm"]
        1e-09
        >>> vanishing_verdict(["net.0", "net.2", "net.4"], [0.1, 0.2, 0.3]) is None
        True
        >>> vanishing_verdict(["net.0", "net.2"], [0.1, 0.0], step=20, run=[5, 10, 20]).message
        'layer `net.2` has a gradient norm of 0 at step 20, below floor=1e-10; on 3 sampled steps in a row (5, 10, 20): it does not learn'
    """
    if not norms or not all(math.isfinite(n) for n in norms):
        return None
    first, last = norms[0], norms[-1]
    ratio = first / last if last > 0 else math.nan
    low = min(norms)
    if not ((len(norms) > 1 and last > 0 and ratio < min_ratio) or low < floor):
        return None
    figures = {
        "first_norm": first, "last_norm": last, "ratio": ratio, "min_norm": low,
        "ratio_order": _order(ratio), "min_norm_order": _order(low),
    }  # fmt: skip
    at = f" at step {step}" if step is not None else ""
    persist = f"; on {len(run)} sampled steps in a row ({', '.join(map(str, run[-VANISHING_PERSIST:]))})" if run else ""
    if len(norms) > 1 and last > 0 and ratio < min_ratio:
        message = (
            f"the first layer `{names[0]}` gets a gradient norm of {first:.3g}, {ratio:.2g}x that of the last layer "
            f"`{names[-1]}` ({last:.3g}){at} (threshold {min_ratio:g}){persist}: the early layers barely learn"
        )
        where = names[0]
    else:
        i = min(range(len(norms)), key=norms.__getitem__)
        message = (
            f"layer `{names[i]}` has a gradient norm of {norms[i]:.3g}{at}, below floor={floor:g}{persist}: "
            "it does not learn"
        )
        where = names[i]
    return Verdict("vanishing-gradient", "warning", message, figures=figures, module=where or None)


class GradientStats(TipCallback):
    """Per-layer gradient norms on sampled steps, with ``exploding-gradient`` and
    ``vanishing-gradient`` verdicts (tips T8, P11, P15).

    On the sampled steps — 0, 1, 2, 5, 10, 20, 50 (most pathologies show in the first steps), then every
    ``every_n_steps``-th (:func:`~lightning_tips._utils.is_sampled`) — in ``on_before_optimizer_step`` (after backward and AMP
    unscaling, *before* Lightning's gradient clipping, so the norms are the raw ones), it computes the
    norm of each layer's weight gradients (each module that owns parameters with ``ndim > 1``, in
    registration order) and the total norm over all parameters, as one device tensor reduced across
    ranks, and brings them to the host with one ``.tolist()``. Unsampled steps cost nothing.

    - ``exploding-gradient`` (warning): the total norm is > ``growth`` x the median of the first 3
      sampled norms, or > ``max_norm``. When it happens in the first 50 steps and the optimizer
      starts with an lr above its family's usual range (SGD > 1, Adam-family > 0.01), the message
      names the lr as the likely root cause.
    - ``vanishing-gradient`` (warning): the first layer's norm is < ``min_ratio`` x the last layer's,
      or some layer's norm is < ``floor``, on 3 sampled steps in a row (one step is not training
      dynamics: zero-initialised heads and residual branches give exact zeros at step 0). Frozen
      layers and layers without a gradient are ignored.

    Norms are logged as ``tips/grad_norm/total`` and ``tips/grad_norm/<layer>``. With
    ``log_histograms`` the gradients of each layer are also logged as ``tips/grad_hist/<layer>``:
    that copies every gradient to the CPU on sampled steps — costly on large models, so off by
    default. Steps where the scaler of fp16 AMP found inf gradients (and skips) are not recorded.
    With DDP the gradients are already averaged, so ranks agree; with sharded strategies (FSDP,
    DeepSpeed) the squared norms of the shards are summed across ranks. More than one optimizer:
    an ``info`` finding, and the callback stays idle.

    Args:
        every_n_steps: sample every this many optimizer steps, after the dense start 0, 1, 2, 5, 10, 20, 50
            (``0`` never samples).
        growth: ``exploding-gradient`` when the total norm grows more than this factor over the
            median of the first 3 samples.
        max_norm: ``exploding-gradient`` when the total norm passes this bound.
        min_ratio: ``vanishing-gradient`` when first-layer / last-layer gradient norm falls below this.
        floor: ``vanishing-gradient`` when a layer's gradient norm falls below this.
        log_histograms: also log per-layer gradient histograms (costly, see above).
        histogram_every_n_steps: log them only on sampled steps that are multiples of this
            (``None``: on every sampled step; ``0``: never); ``Recipe`` uses its ``view_every_n_steps``.
        history: how many sampled total norms to keep (and checkpoint).

    Example:
        >>> import lightning.pytorch as pl
        >>> cb = GradientStats(every_n_steps=25, log_histograms=False)
        >>> cb.state_dict()["totals"]
        []
        >>> trainer = pl.Trainer(callbacks=[cb], logger=False)  # doctest: +SKIP
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        growth: float = 100.0,
        max_norm: float = 1e4,
        min_ratio: float = MIN_RATIO,
        floor: float = 1e-10,
        log_histograms: bool = False,
        histogram_every_n_steps: int | None = None,
        history: int = 100,
    ) -> None:
        super().__init__()
        check_int("every_n_steps", every_n_steps, low=0)
        for name, value in (("growth", growth), ("max_norm", max_norm), ("min_ratio", min_ratio), ("floor", floor)):
            check_float(name, value, low=0.0, low_open=True)
        check_int("history", history, low=4)
        check_bool("log_histograms", log_histograms)
        check_int("histogram_every_n_steps", histogram_every_n_steps, low=0, optional=True)
        self.every_n_steps = every_n_steps
        self.growth = float(growth)
        self.max_norm = float(max_norm)
        self.min_ratio = float(min_ratio)
        self.floor = float(floor)
        self.log_histograms = bool(log_histograms)
        self.histogram_every_n_steps = histogram_every_n_steps
        self.history = history
        self._steps: list[int] = []
        self._totals: list[float] = []
        self._baseline: list[float] = []  # the first 3 sampled totals, kept beyond `history`
        self._count = 0  # sampled steps recorded so far
        self._vanishing_steps: list[int] = []  # the current run of sampled steps with a vanishing verdict
        self._groups: list[tuple[str, list[nn.Parameter]]] | None = None
        self._idle = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps)

    # --- lifecycle -------------------------------------------------------------------------------
    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._groups = None
        self._idle = False
        self._steps, self._totals, self._baseline, self._count = [], [], [], 0  # a resumed fit reloads them
        self._vanishing_steps = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) > 1:
            self._idle = True
            self.report(
                trainer, "exploding-gradient", "info",
                f"gradient statistics skipped: the model has {len(trainer.optimizers)} optimizers; GradientStats "
                "follows one optimizer's gradients",
                skipped=True,
            )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._idle or not is_sampled(trainer.global_step, self.every_n_steps, dense_start=True):
            return
        if self._groups is None:
            self._groups = layer_groups(pl_module)
        names, layer_norms = layer_grad_norms(pl_module, self._groups)
        all_grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not all_grads:
            return
        total = grad_norms(all_grads).square().sum().reshape(1)
        sq = _ddp.reduce(trainer, {"total": total, "layers": layer_norms.square().to(total.device)},
                         site="GradientStats norms")
        div = trainer.world_size if trainer.world_size > 1 and not isinstance(trainer.strategy, _SHARDED) else 1
        # DDP: every rank holds the same averaged gradients; the one host sync of a sampled step
        values = (torch.cat([sq["total"], sq["layers"]]) / div).sqrt().tolist()
        self._record(trainer, pl_module, trainer.global_step, values[0], names, values[1:])

    # --- the verdicts ----------------------------------------------------------------------------
    def _record(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, total: float,
        names: list[str], norms: list[float],
    ) -> None:
        if not math.isfinite(total):
            # fp16 AMP: the scaler skips this step; otherwise NonFiniteGuard reports it. Not a norm to judge.
            return
        self._count += 1
        self._steps.append(step)
        self._totals.append(total)
        if len(self._baseline) < 3:
            self._baseline.append(total)
        del self._steps[: -self.history], self._totals[: -self.history]
        log_scalars(
            trainer,
            {"tips/grad_norm/total": total, **{f"tips/grad_norm/{n or 'root'}": v for n, v in zip(names, norms)}},
            step=step,
        )
        if self.log_histograms and self._groups is not None and is_sampled(step, histogram_period(self.histogram_every_n_steps)):
            for name, params in self._groups:
                gs = [p.grad.detach().flatten() for p in params if p.grad is not None]
                if gs:
                    log_histogram(trainer, f"tips/grad_hist/{name or 'root'}", torch.cat(gs), step=step)
        # the first 3 samples (kept beyond `history`) and the latest one
        series = [*self._baseline, total] if self._count > len(self._baseline) else list(self._baseline)
        exploding = exploding_verdict(
            series, self.growth, self.max_norm, step=step, names=names, norms=norms,
            clip_val=trainer.gradient_clip_val, optimizers=trainer.optimizers,
        )
        if exploding is not None:
            # orders of magnitude: reported again only when the norm moves by 10x or more
            report_verdict(self, trainer, exploding, step=step, figures=_orders(exploding))
        run = [*self._vanishing_steps, step]
        vanishing = vanishing_verdict(names, norms, self.min_ratio, self.floor, step=step, run=run)
        # a training-dynamics verdict needs more than one step: zero-initialised heads and residual
        # branches (timm's zero_init_last, torchvision's ViT head) give exactly-zero gradients at step 0
        self._vanishing_steps = run if vanishing is not None else []
        if vanishing is not None and len(run) >= VANISHING_PERSIST:
            report_verdict(self, trainer, vanishing, step=step, figures=_orders(vanishing))

    # --- state -----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        state.update(
            {
                "steps": list(self._steps),
                "totals": list(self._totals),
                "baseline": list(self._baseline),
                "count": self._count,
                "vanishing_steps": list(self._vanishing_steps),
            }
        )
        return state

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        self._steps = [int(s) for s in state_dict.get("steps", [])]
        self._totals = [float(t) for t in state_dict.get("totals", [])]
        self._baseline = [float(t) for t in state_dict.get("baseline", self._totals[:3])]
        self._count = int(state_dict.get("count", len(self._totals)))
        self._vanishing_steps = [int(s) for s in state_dict.get("vanishing_steps", [])]


def _lr_cause(optimizers: Sequence[torch.optim.Optimizer], step: int | None) -> str:
    """When the blow-up comes in the first steps and an optimizer starts with an lr far above its
    family's usual range, the lr is the root cause: say so (the range is ``LRDecayGuard``'s, R3.2)."""
    if step is None or step > max(EARLY_STEPS):
        return ""
    for opt in optimizers:
        bad = optimizer_defaults_verdict(opt)
        if bad is not None and bad.figures["lr"] > bad.figures["high"]:
            lr, low, high = bad.figures["lr"], bad.figures["low"], bad.figures["high"]
            return (
                f"; the root cause is likely the learning rate: {type(opt).__name__} starts with lr {lr:.3g}, "
                f"{lr / high:.3g}x the top of the usual {optimizer_family(opt)} range ({low:g}–{high:g}): "
                "lower it (R3.2)"
            )
    return ""


def _orders(verdict: Verdict) -> dict[str, float]:
    """The ``*_order`` figures of ``verdict``: the ones reported (a finding is new again at 10x)."""
    return {k: v for k, v in verdict.figures.items() if k.endswith("_order")}


def _order(x: float) -> float:
    """``x`` rounded to its power of ten (0 and non-finite values kept)."""
    return 10.0 ** round(math.log10(x)) if x > 0 and math.isfinite(x) else x


def _largest(names: Iterable[str], norms: Sequence[float]) -> str:
    pairs = sorted(zip(norms, names), reverse=True)[:3]
    if not pairs:
        return ""
    return "; largest layer norms: " + ", ".join(f"`{n or 'root'}` {v:.3g}" for v, n in pairs)
