"""Gradient clipping on Lightning's own clipping path, by norm, by value, or adaptive (AutoClip) (tips T8, T5).

Lightning unscales AMP gradients *before* it calls ``on_before_optimizer_step`` (see
``lightning/pytorch/plugins/precision/amp.py`` and ``precision.py::_after_closure``) and clips right
after that hook with ``Trainer(gradient_clip_val=...)``. :class:`GradientClipping` clips in that
hook, so it sees true (unscaled) gradients under every precision, and it counts how often it clipped
without a host-device sync: the counts stay on the device and are read on sampled steps only.

The pure functions do the work and are usable without a Trainer:

- :func:`clip_gradients_` clips in place and returns the pre-clip statistic (total norm or max |g|);
- :func:`percentile_threshold` is AutoClip's threshold (Seetharaman et al., 2020): the ``percentile``
  of the recent pre-clip norms, NaN slots (not yet filled, or non-finite norms) ignored.

Example:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> p.grad = torch.tensor([3.0, 4.0])
    >>> clip_gradients_([p], 1.0)  # returns the total norm before clipping
    tensor(5.)
    >>> torch.allclose(p.grad.norm(), torch.tensor(1.0))
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch import Tensor

from lightning_tips._callback import TipCallback
from lightning_tips._loggers import log_scalars
from lightning_tips._utils import is_sampled
from lightning_tips._validate import check_bool, check_choice, check_float, check_int

__all__ = ["GradientClipping", "clip_figures", "clip_gradients_", "percentile_threshold"]

_EPS = 1e-6


def _grads(parameters: Iterable[Tensor]) -> list[Tensor]:
    return [p.grad for p in parameters if p.grad is not None]


def _total_norm(grads: list[Tensor], norm_type: float) -> Tensor:
    """The norm of all gradients seen as one vector, float32, on the first gradient's device (no sync)."""
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:  # torch >= 2.6
        return get_total_norm(grads, norm_type).float()
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g.detach().float(), norm_type).to(device) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


@torch.no_grad()
def clip_gradients_(
    parameters: Iterable[Tensor],
    max_value: float | Tensor,
    mode: Literal["norm", "value"] = "norm",
    norm_type: float = 2.0,
) -> Tensor:
    """Clip the gradients of ``parameters`` in place; return the pre-clip statistic, on the device.

    ``mode="norm"`` scales all gradients by ``min(1, max_value / (total_norm + 1e-6))`` (as
    :func:`torch.nn.utils.clip_grad_norm_`, which it uses for a float bound) and returns the total
    norm; ``max_value`` may be a 0-dim tensor (the adaptive threshold), which is never synced.
    ``mode="value"`` clamps every element to ``[-max_value, max_value]`` (as
    :func:`torch.nn.utils.clip_grad_value_`) and returns the largest ``|g|`` before clipping.
    Returns a float32 zero when no parameter has a gradient.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(3))
        >>> p.grad = torch.tensor([0.5, -2.0, 3.0])
        >>> clip_gradients_([p], 1.0, mode="value"), p.grad
        (tensor(3.), tensor([ 0.5000, -1.0000,  1.0000]))
    """
    params = [p for p in parameters if p.grad is not None]
    grads = _grads(params)
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    if mode == "value":
        if isinstance(max_value, Tensor):
            raise TypeError(f"Expected a float bound for mode='value' but got a {type(max_value).__name__}.")
        device = grads[0].device
        peak = torch.stack([torch.linalg.vector_norm(g.float(), math.inf).to(device) for g in grads]).max()
        torch.nn.utils.clip_grad_value_(params, max_value)
        return peak
    if not isinstance(max_value, Tensor):
        return torch.nn.utils.clip_grad_norm_(params, float(max_value), norm_type=norm_type).float()
    total = _total_norm(grads, norm_type)
    coef = torch.clamp(max_value.to(total.device, torch.float32) / (total + _EPS), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device, g.dtype))
    return total


def percentile_threshold(history: Tensor, percentile: float) -> Tensor:
    """AutoClip's threshold: the ``percentile`` (0-100) of ``history``, NaN entries ignored.

    An all-NaN history gives ``inf`` (nothing is clipped). Stays on the history's device.

    Example:
        >>> percentile_threshold(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, float("nan")]), 50.0)
        tensor(3.)
    """
    q = torch.nanquantile(history.float(), percentile / 100.0)
    return torch.nan_to_num(q, nan=math.inf)


class GradientClipping(TipCallback):
    """Clip gradients by norm, by value, or adaptively (AutoClip), and report how often it clipped (T8, T5).

    A fix: it changes the gradients, so it acts only when added. It clips in
    ``on_before_optimizer_step``, where Lightning has already unscaled AMP gradients and where its
    own ``gradient_clip_val`` clipping would happen — so it refuses to run together with
    ``Trainer(gradient_clip_val=...)`` (a ``ValueError`` at ``setup``). A callback listed after it
    sees the clipped gradients.

    - ``mode="norm"``: scale all gradients so their total ``norm_type``-norm is at most ``max_norm``.
    - ``mode="value"``: clamp every gradient element to ``[-max_norm, max_norm]``.
    - ``adaptive=True`` (norm only): AutoClip — the bound is the ``percentile`` of the last
      ``history`` pre-clip norms (current one included), kept on the device in a ring buffer;
      ``max_norm`` is not used. By construction it clips about ``100 - percentile`` % of the steps.

    Counts stay on the device; on steps sampled by ``every_n_steps`` one sync logs
    ``tips/grad_norm_preclip`` and ``tips/clip_fraction`` (and ``tips/clip_threshold`` when adaptive).

    Findings: ``gradient-clipping`` at the end of training with the clip rate, the number of clipped
    and total steps, and the mean / max pre-clip statistic (total norm, or max ``|g|`` in value mode): ``warning`` when more than 50% of the steps
    were clipped with a fixed bound (the bound is too low or the learning rate too high, T8, P10),
    ``info`` otherwise (always ``info`` when adaptive: the rate is set by ``percentile``).
    ``info`` skips: manual optimization (clip in your ``training_step`` with ``self.clip_gradients``),
    sharded strategies (FSDP, DeepSpeed, model parallel: use ``Trainer(gradient_clip_val=...)``).

    Args:
        mode: ``"norm"`` or ``"value"``.
        max_norm: the bound (a norm, or an element value for ``mode="value"``); may be ``None`` only
            when ``adaptive``.
        adaptive: AutoClip: clip at the ``percentile`` of the recent pre-clip norms.
        percentile: the percentile (0, 100] used when ``adaptive``.
        history: how many recent pre-clip norms AutoClip keeps.
        norm_type: the p of the p-norm (``inf`` allowed).
        every_n_steps: log the pre-clip norm and clip fraction every this many optimizer steps
            (``0``: never).

    Example:
        >>> clip = GradientClipping(max_norm=5.0)  # the T5 rule of thumb: clip at 5/10/15
        >>> clip.mode, clip.max_norm, clip.adaptive
        ('norm', 5.0, False)
        >>> GradientClipping(adaptive=True, max_norm=None, percentile=10.0).state_key
        "GradientClipping{'mode': 'norm', 'adaptive': True}"
    """

    def __init__(
        self,
        mode: Literal["norm", "value"] = "norm",
        max_norm: float | None = 1.0,
        adaptive: bool = False,
        percentile: float = 10.0,
        history: int = 1000,
        norm_type: float = 2.0,
        every_n_steps: int = 50,
    ) -> None:
        super().__init__()
        check_choice("mode", mode, ("norm", "value"))
        check_bool("adaptive", adaptive)
        if adaptive and mode != "norm":
            raise ValueError(f"Expected mode='norm' with adaptive=True (AutoClip clips norms) but got mode={mode!r}.")
        if max_norm is None and not adaptive:
            raise ValueError("Expected a positive max_norm (it may be None only with adaptive=True) but got None.")
        check_float("max_norm", max_norm, low=0.0, low_open=True, optional=True)
        check_float("percentile", percentile, low=0.0, high=100.0, low_open=True)
        check_int("history", history, low=1)
        check_float("norm_type", norm_type, low=0.0, low_open=True, allow_inf=True)
        check_int("every_n_steps", every_n_steps, low=0)
        self.mode = mode
        self.max_norm = None if max_norm is None else float(max_norm)
        self.adaptive = adaptive
        self.percentile = float(percentile)
        self.history = history
        self.norm_type = float(norm_type)
        self.every_n_steps = every_n_steps
        self._active = True
        self._reset()

    def _reset(self) -> None:
        self._steps = 0  # optimizer steps seen (host-side count: no sync)
        self._pos = 0  # next ring-buffer slot
        self._clipped: Tensor | None = None  # on-device counters, created with the first gradients
        self._norm_sum: Tensor | None = None
        self._norm_count: Tensor | None = None
        self._norm_max: Tensor | None = None
        self._threshold: Tensor | None = None
        self._buffer: Tensor | None = None  # AutoClip history of pre-clip norms, NaN = empty

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mode=self.mode, adaptive=self.adaptive)

    # --- lifecycle -------------------------------------------------------------------------------
    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.gradient_clip_val is not None:
            raise ValueError(
                f"GradientClipping clips on Lightning's clipping path and cannot run together with "
                f"Trainer(gradient_clip_val={trainer.gradient_clip_val}). Expected gradient_clip_val=None "
                f"but got {trainer.gradient_clip_val}: remove one of the two."
            )
        self._reset()
        self._active = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reason = None
        if not pl_module.automatic_optimization:
            reason = (
                "manual optimization: Lightning does not run its clipping path; call "
                "self.clip_gradients(optimizer, gradient_clip_val=...) in training_step"
            )
        elif isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
            reason = (
                f"{type(trainer.strategy).__name__} shards the gradients, so a local norm is not the "
                f"global one; use Trainer(gradient_clip_val=...) instead"
            )
        if reason is not None:
            self._active = False
            self.report(trainer, "gradient-clipping", "info", f"GradientClipping skipped: {reason}.", skipped=True)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._active:
            return
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        device = params[0].grad.device  # type: ignore[union-attr]
        self._ensure_state(device)
        assert self._clipped is not None and self._norm_sum is not None
        assert self._norm_count is not None and self._norm_max is not None
        sampled = is_sampled(trainer.global_step, self.every_n_steps)
        threshold: Tensor | float

        if self.adaptive:
            assert self._buffer is not None
            total = _total_norm(_grads(params), self.norm_type)
            self._buffer[self._pos] = torch.where(torch.isfinite(total), total, torch.nan)
            self._pos = (self._pos + 1) % self.history
            threshold = percentile_threshold(self._buffer, self.percentile)
            clip_gradients_(params, threshold, "norm", self.norm_type)
            self._threshold = threshold
            stat = preclip_norm = total
        else:
            assert self.max_norm is not None
            threshold = self.max_norm  # a python float: comparing with it needs no transfer
            # value mode logs the total norm too: computed before clipping, on sampled steps only
            value_norm = _total_norm(_grads(params), self.norm_type) if self.mode == "value" and sampled else None
            stat = clip_gradients_(params, self.max_norm, self.mode, self.norm_type)
            preclip_norm = stat if value_norm is None else value_norm
        # the statistic that decides clipping: total norm ("norm") or max |g| ("value")
        finite = torch.isfinite(stat)
        self._clipped += ((stat > threshold) & finite).to(self._clipped.dtype)
        self._norm_sum += torch.where(finite, stat, 0.0)
        self._norm_count += finite.to(self._norm_count.dtype)
        self._norm_max = torch.maximum(self._norm_max, torch.where(finite, stat, 0.0))
        self._steps += 1
        if sampled:
            values = [preclip_norm, self._clipped.float()]
            if isinstance(threshold, Tensor):
                values.append(threshold.float())
            norm, clipped, *thr = torch.stack(values).tolist()
            metrics = {"tips/grad_norm_preclip": norm, "tips/clip_fraction": clipped / self._steps}
            if thr:
                metrics["tips/clip_threshold"] = thr[0]
            log_scalars(trainer, metrics)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active or self._steps == 0 or self._clipped is None:
            return
        assert self._norm_sum is not None and self._norm_count is not None and self._norm_max is not None
        thr = self._threshold if self._threshold is not None else torch.tensor(self.max_norm or math.nan)
        clipped, norm_sum, count, norm_max, last_thr = torch.stack(
            [self._clipped.float(), self._norm_sum, self._norm_count.float(), self._norm_max, thr.to(self._norm_sum)]
        ).tolist()
        figures = clip_figures(int(clipped), self._steps, norm_sum, int(count), norm_max)
        stat_name = "norm" if self.mode == "norm" else "max |g|"
        figures["threshold"] = last_thr
        rate = figures["clip_rate"]
        severity = "warning" if rate > 0.5 and not self.adaptive else "info"
        what = "norm" if self.mode == "norm" else "value"
        bound = (
            f"the {self.percentile:g}th percentile of the last {self.history} norms (last {last_thr:.3g})"
            if self.adaptive
            else f"max_{what} {self.max_norm:g}"
        )
        message = (
            f"clipped gradients ({what}, {bound}) on {int(clipped)} of {self._steps} steps "
            f"({100 * rate:.0f}%); pre-clip {stat_name} mean {figures['mean_preclip']:.3g}, "
            f"max {figures['max_preclip']:.3g}"
        )
        advice = "" if severity == "warning" else "none needed; the clip rate is a health figure to watch (T8)"
        self.report(trainer, "gradient-clipping", severity, message, advice=advice, figures=figures)

    def _ensure_state(self, device: torch.device) -> None:
        if self._clipped is not None and self._clipped.device == device:
            return

        def to(t: Tensor | None, default: Tensor) -> Tensor:
            return (t if t is not None else default).to(device)

        self._clipped = to(self._clipped, torch.zeros((), dtype=torch.int64))
        self._norm_sum = to(self._norm_sum, torch.zeros(()))
        self._norm_count = to(self._norm_count, torch.zeros((), dtype=torch.int64))
        self._norm_max = to(self._norm_max, torch.zeros(()))
        if self._threshold is not None:
            self._threshold = self._threshold.to(device)
        if self.adaptive:
            self._buffer = to(self._buffer, torch.full((self.history,), math.nan))

    # --- state -----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        def cpu(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().cpu().clone()

        state: dict[str, Any] = {}
        state.update(
            steps=self._steps,
            pos=self._pos,
            clipped=cpu(self._clipped),
            norm_sum=cpu(self._norm_sum),
            norm_count=cpu(self._norm_count),
            norm_max=cpu(self._norm_max),
            threshold=cpu(self._threshold),
            buffer=cpu(self._buffer),
        )
        return state

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        self._reset()
        self._steps = int(state_dict.get("steps", 0))
        self._pos = int(state_dict.get("pos", 0))
        self._clipped = state_dict.get("clipped")
        self._norm_sum = state_dict.get("norm_sum")
        self._norm_count = state_dict.get("norm_count")
        self._norm_max = state_dict.get("norm_max")
        self._threshold = state_dict.get("threshold")
        buffer = state_dict.get("buffer")
        if self.adaptive and isinstance(buffer, Tensor) and buffer.numel() != self.history:
            # history length changed: keep the most recent norms that fit
            n = min(buffer.numel(), self.history)
            recent = torch.roll(buffer, -self._pos)[-n:]
            buffer = torch.full((self.history,), math.nan)
            buffer[:n] = recent
            self._pos = n % self.history
        self._buffer = buffer if self.adaptive else None


def clip_figures(clipped: int, steps: int, norm_sum: float, norm_count: int, norm_max: float) -> dict[str, float]:
    """The figures of a ``gradient-clipping`` finding; the statistic is the total norm (``mode="norm"``)
    or the largest ``|g|`` (``mode="value"``), before clipping, over the finite steps.

    Example:
        >>> clip_figures(3, 4, 10.0, 4, 4.0)
        {'clip_rate': 0.75, 'clipped_steps': 3.0, 'steps': 4.0, 'mean_preclip': 2.5, 'max_preclip': 4.0}
    """
    return {
        "clip_rate": clipped / steps if steps else 0.0,
        "clipped_steps": float(clipped),
        "steps": float(steps),
        "mean_preclip": norm_sum / norm_count if norm_count else math.nan,
        "max_preclip": norm_max,
    }
