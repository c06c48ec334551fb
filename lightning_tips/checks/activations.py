"""Activation statistics: dead ReLU units and saturated sigmoid/tanh units (tips R4.12, T15, P2).

Forward hooks on the activation *modules* (``nn.ReLU``, ``nn.Sigmoid``, …) measure, on sampled
steps only, each layer's mean, std, the fraction of its units that never fire over the batch, the
fraction of its outputs in the flat tails, and a fixed-range histogram (dead units over every value;
the moments, tails and histogram over a strided sample of at most 65 536 values per layer, so a
sampled step stays cheap on large feature maps). Everything is computed on
the device inside the hook, packed into one tensor, summed across DDP ranks, and copied to the host
once per sampled step.

Units and samples (the layout convention):
    * ``(N, C)`` and ``(N, C, *spatial)`` (conv feature maps, 4-D and 5-D): the units are the
      channels, dim 1; every batch element and spatial position is a sample of its channel.
    * 3-D outputs are read as ``(N, T, C)`` sequences (``batch_first``, the transformer/MLP-on-
      tokens layout): the units are the **last** dim, all other dims are samples. A ``Conv1d``
      feature map ``(N, C, L)`` is therefore read per position, not per channel.
    * 1-D outputs ``(N,)``: one unit, N samples.

Verdicts (both computed from the statistics of the *global* batch, the same on every rank):
    * ``dead-activation`` (warning): for a ReLU-family module (ReLU, ReLU6, LeakyReLU, PReLU, RReLU,
      ELU, CELU, SELU, GELU, SiLU, Mish, Hardswish) the fraction of units whose output is never
      positive (``y <= 0``) for any sample of the batch is above ``dead_fraction`` (default 0.5).
    * ``saturated-activation`` (warning): for Sigmoid/Hardsigmoid the fraction of outputs with
      ``y <= 0.02`` or ``y >= 0.98``, for Tanh ``|y| >= 0.96``, for Hardtanh at its bounds, is above
      ``saturated_fraction`` (default 0.5).
    * Activations registered after the model's output layer (a Sigmoid feeding ``BCELoss``) get
      statistics but no verdict: confident outputs are not a flaw.
    * ``dead-activation`` (info): the model has no activation modules (``F.relu`` cannot be
      hooked; TorchScript modules neither), or the hooks never ran (a compiled model): skipped.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from lightning_tips import _loggers
from lightning_tips._callback import TipCallback
from lightning_tips._hooks import forward_hooks
from lightning_tips._render import colorize
from lightning_tips._report import report
from lightning_tips._utils import find_output_layer, is_sampled, reduce_sum
from lightning_tips.findings import Finding, Severity

__all__ = [
    "ActivationSpec",
    "ActivationStats",
    "LayerStats",
    "activation_findings",
    "activation_spec",
    "activation_stats",
    "activations_over_time",
]

_RELU_FAMILY = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish,
)
_HEADER = 5  # n_values, sum, sum of squares, n_saturated, n_samples
_MAX_HISTOGRAM_VALUES = 4096  # per layer, the strided sample logged as a histogram
_MAX_STAT_VALUES = 1 << 16  # per layer, the strided sample of the moments, saturation and histogram


@dataclass(frozen=True)
class ActivationSpec:
    """How one activation module is measured.

    ``kind`` is ``"relu"`` (dead units) or ``"squash"`` (saturation); ``low``/``high`` is the fixed
    histogram range (values outside are counted in the end bins); outputs ``<= sat_low`` or
    ``>= sat_high`` are saturated.
    """

    kind: Literal["relu", "squash"]
    low: float
    high: float
    sat_low: float = -math.inf
    sat_high: float = math.inf


def activation_spec(module: nn.Module) -> ActivationSpec | None:
    """The :class:`ActivationSpec` of an activation module, or ``None`` for any other module.

    Example:
        >>> activation_spec(nn.ReLU()).kind, activation_spec(nn.Tanh()).sat_high, activation_spec(nn.Linear(1, 1))
        ('relu', 0.96, None)
    """
    if isinstance(module, nn.ReLU6):  # a Hardtanh subclass: test it first
        return ActivationSpec("relu", -1.0, 6.0)
    if isinstance(module, _RELU_FAMILY):
        return ActivationSpec("relu", -1.0, 3.0)
    if isinstance(module, nn.Sigmoid):
        return ActivationSpec("squash", 0.0, 1.0, 0.02, 0.98)
    if isinstance(module, nn.Hardsigmoid):
        return ActivationSpec("squash", 0.0, 1.0, 0.0, 1.0)
    if isinstance(module, nn.Tanh):
        return ActivationSpec("squash", -1.0, 1.0, -0.96, 0.96)
    if isinstance(module, nn.Hardtanh):
        lo, hi = float(module.min_val), float(module.max_val)
        return ActivationSpec("squash", lo, hi, lo, hi)
    return None


@dataclass
class LayerStats:
    """The statistics of one activation module (one call of it) on one batch.

    ``dead_fraction`` is NaN for squashing layers, ``saturated_fraction`` NaN for ReLU-family ones.
    ``histogram`` holds counts over ``bins`` equal bins of ``[low, high]`` (values outside are
    counted in the end bins). ``values`` is a strided sample of the raw outputs (rank zero's) for
    logged histograms, empty unless asked for.
    """

    name: str
    module_type: str
    kind: str
    n_values: int
    n_samples: int
    n_units: int
    mean: float
    std: float
    dead_fraction: float
    saturated_fraction: float
    low: float
    high: float
    histogram: list[float]
    is_output: bool = False
    values: list[float] = field(default_factory=list)


def _record(y: torch.Tensor, spec: ActivationSpec, bins: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """On-device statistics of one output: ``(header + histogram, per-unit fired counts, samples, units)``.

    Dead units are counted over every value (one comparison pass); the moments, the saturated
    fraction and the histogram over a strided sample of at most ``_MAX_STAT_VALUES`` values (all of
    them for outputs up to that size), so a sampled step costs little even on large feature maps.
    """
    y = y.detach()
    n_units = 1 if y.dim() == 1 else (y.shape[-1] if y.dim() in (2, 3) else y.shape[1])
    n_samples = y.numel() // max(n_units, 1)
    flat = y.reshape(-1)
    u = flat[:: max(1, math.ceil(flat.numel() / _MAX_STAT_VALUES))].float()
    total = u.new_full((1,), float(u.numel()))
    if spec.kind == "squash":
        saturated = ((u <= spec.sat_low) | (u >= spec.sat_high)).sum().float().reshape(1)
    else:
        saturated = u.new_zeros(1)
    # a fixed-range histogram by bincount (deterministic on every backend; histc is not on CUDA)
    scaled = (u.clamp(spec.low, spec.high) - spec.low) * (bins / (spec.high - spec.low))
    idx = scaled.long().clamp_(0, bins - 1)
    hist = torch.bincount(idx, minlength=bins).float()
    header = torch.cat([total, u.sum().reshape(1), (u * u).sum().reshape(1), saturated, u.new_full((1,), float(n_samples))])
    if spec.kind != "relu":
        fired = u.new_zeros(0)
    elif y.dim() <= 3:
        fired = (y > 0).reshape(-1, n_units).sum(0).float()
    else:  # (N, C, ...): units are channels
        fired = (y > 0).sum(dim=[0, *range(2, y.dim())]).float()
    return torch.cat([header, hist]), fired, n_samples, n_units


def _to_host(tensor: torch.Tensor) -> list[float]:
    """The one device-to-host copy of a sampled step."""
    return tensor.tolist()


@dataclass
class _Meta:
    key: str
    name: str
    module_type: str
    spec: ActivationSpec
    n_units: int
    n_values: int
    is_output: bool


class _Recorder:
    """Collects the on-device records of one sampled forward, then reduces and syncs them once."""

    def __init__(
        self, specs: Mapping[str, ActivationSpec], outputs: set[str], bins: int, keep_values: bool
    ) -> None:
        self.specs = specs
        self.outputs = outputs
        self.bins = bins
        self.keep_values = keep_values
        self.fired = False  # did any hook run at all
        self.meta: list[_Meta] = []
        self.records: list[torch.Tensor] = []
        self.units: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._calls: dict[str, int] = {}

    def hook(self, name: str, module: nn.Module, output: Any) -> None:
        self.fired = True
        if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.dim() == 0:
            return  # tuple outputs, integer outputs, scalars: nothing to measure
        if output.numel() == 0:
            return  # a zero-size batch: skip the sample
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        key = name if call == 0 else f"{name}[{call}]"  # a module applied several times per forward
        spec = self.specs[name]
        rec, fired, _, n_units = _record(output, spec, self.bins)
        self.meta.append(_Meta(key, name, type(module).__name__, spec, n_units, output.numel(), name in self.outputs))
        self.records.append(rec)
        self.units.append(fired)
        if self.keep_values:
            flat = output.detach().flatten()
            stride = max(1, math.ceil(flat.numel() / _MAX_HISTOGRAM_VALUES))
            self.values.append(flat[::stride].float())

    @property
    def size(self) -> int:
        return sum(r.numel() for r in self.records) + sum(u.numel() for u in self.units)

    def finalize(
        self,
        reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
        to_host: Callable[[torch.Tensor], list[float]] | None = None,
    ) -> dict[str, LayerStats]:
        """Sum the records across ranks with ``reduce``, count dead units on the device, sync once."""
        if not self.records:
            return {}
        packed = reduce(torch.cat(self.records + self.units))
        width = _HEADER + self.bins
        n_rec = len(self.records)
        recs = packed[: n_rec * width].reshape(n_rec, width)
        fired = packed[n_rec * width :]
        # "never fires over the global batch": the summed per-unit fired count is zero
        dead = [fired.new_zeros(1)] * n_rec
        offset = 0
        for i, u in enumerate(self.units):
            if u.numel():
                dead[i] = (fired[offset : offset + u.numel()] == 0).sum().float().reshape(1)
                offset += u.numel()
        host = (to_host or _to_host)(torch.cat([recs.flatten(), torch.cat(dead), *self.values]))
        out: dict[str, LayerStats] = {}
        vals_at = n_rec * width + n_rec
        for i, m in enumerate(self.meta):
            row = host[i * width : (i + 1) * width]
            n, s, ss, n_sat, n_samples = row[:_HEADER]
            mean = s / n
            var = max(ss / n - mean * mean, 0.0) * (n / (n - 1) if n > 1 else 1.0)
            values: list[float] = []
            if self.keep_values:
                k = self.values[i].numel()
                values, vals_at = host[vals_at : vals_at + k], vals_at + k
            relu = m.spec.kind == "relu"
            out[m.key] = LayerStats(
                name=m.key,
                module_type=m.module_type,
                kind=m.spec.kind,
                n_values=int(n),
                n_samples=int(n_samples),
                n_units=m.n_units,
                mean=mean,
                std=math.sqrt(var),
                dead_fraction=host[n_rec * width + i] / m.n_units if relu else math.nan,
                saturated_fraction=math.nan if relu else n_sat / n,
                low=m.spec.low,
                high=m.spec.high,
                histogram=row[_HEADER:],
                is_output=m.is_output,
                values=values,
            )
        return out


def _specs(model: nn.Module) -> tuple[dict[str, ActivationSpec], set[str]]:
    """The hookable activation modules by path, and those registered after the output layer."""
    specs: dict[str, ActivationSpec] = {}
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    for name, module in model.named_modules():
        spec = activation_spec(module)
        if spec is not None:
            specs[name] = spec
    out_layer = find_output_layer(model)
    after = order[out_layer[0]] if out_layer is not None else math.inf
    return specs, {n for n in specs if order[n] > after}


def activation_stats(model: nn.Module, *inputs: Any, bins: int = 40) -> dict[str, LayerStats]:
    """Run ``model(*inputs)`` once (no grad) under forward hooks; the statistics of each activation module.

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with torch.no_grad():
        ...     _ = net[0].bias.fill_(-10.0)  # every unit of the ReLU is dead
        >>> s = activation_stats(net, torch.randn(16, 4))["1"]
        >>> s.dead_fraction, s.n_units, s.n_samples
        (1.0, 8, 16)
    """
    specs, outputs = _specs(model)
    rec = _Recorder(specs, outputs, bins, keep_values=False)
    with forward_hooks(model, lambda name, _m: name in specs, rec.hook), torch.no_grad():
        model(*inputs)
    return rec.finalize()


def activation_findings(
    stats: Mapping[str, LayerStats], dead_fraction: float = 0.5, saturated_fraction: float = 0.5, step: int | None = None
) -> list[Finding]:
    """The ``dead-activation`` / ``saturated-activation`` warnings for per-layer statistics.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.fill_(10.0)
        >>> [f.code for f in activation_findings(activation_stats(net, torch.ones(3, 4)))]
        ['saturated-activation']
    """
    found: list[Finding] = []
    for key, s in stats.items():
        if s.is_output:
            continue
        if s.kind == "relu" and s.dead_fraction > dead_fraction:
            dead = round(s.dead_fraction * s.n_units)
            found.append(Finding(
                "dead-activation", Severity.WARNING,
                f"{s.dead_fraction:.0%} of the units of `{key}` ({s.module_type}, {dead}/{s.n_units} units) "
                f"never fired (output <= 0) over {s.n_samples} values per unit (every sample and position of the sampled batch; threshold {dead_fraction:.0%}); "
                f"mean {s.mean:.3g}, std {s.std:.3g}",
                advice="dead units get no gradient and stop learning: lower the learning rate (P10), use He init "
                "(T11, P5), check for very negative biases; consider LeakyReLU (R4.12, P2)",
                step=step, module=key,
                figures={"dead_fraction": s.dead_fraction, "units": s.n_units},
            ))
        elif s.kind == "squash" and s.saturated_fraction > saturated_fraction:
            found.append(Finding(
                "saturated-activation", Severity.WARNING,
                f"{s.saturated_fraction:.0%} of the outputs of `{key}` ({s.module_type}) sit in its flat tails "
                f"({_tails(s)}) where the gradient is ~0 (threshold {saturated_fraction:.0%}); "
                f"mean {s.mean:.3g}, std {s.std:.3g}",
                step=step, module=key,
                figures={"saturated_fraction": s.saturated_fraction},
            ))
    return found


def _tails(s: LayerStats) -> str:
    if s.module_type == "Sigmoid":
        return "y <= 0.02 or y >= 0.98"
    if s.module_type == "Tanh":
        return "|y| >= 0.96"
    return f"y at its bounds {s.low:g} / {s.high:g}"


def activations_over_time(
    columns: Sequence[Sequence[float]], low: float, high: float, steps: Sequence[int] = (), cmap: str = "viridis"
) -> tuple[np.ndarray, str]:
    """One layer's histograms over sampled steps as an image: a column per step, high values on top.

    Each column is normalised to the fraction of values per bin; colours map ``[0, max fraction]``
    linearly to ``cmap``. Returns ``(HxWx3 uint8 image, caption)``; the caption states the ranges.

    Example:
        >>> img, caption = activations_over_time([[1, 0, 3], [0, 4, 0]], 0.0, 1.0, steps=[0, 10])
        >>> img.shape, caption.split(";")[0]
        ((12, 32, 3), 'activation histogram per sampled step (2 columns, steps 0..10)')
    """
    counts = np.asarray(columns, dtype=np.float64).T  # bins x steps
    totals = counts.sum(0, keepdims=True)
    frac = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)[::-1]  # high values on top
    vmax = float(frac.max()) or 1.0
    img = colorize(frac / vmax, cmap)
    n_steps = counts.shape[1]
    cell_w = max(2, min(16, 320 // max(1, n_steps)))
    img = np.repeat(np.repeat(img, 4, axis=0), cell_w, axis=1)
    span = f"steps {steps[0]}..{steps[-1]}" if len(steps) else "steps"
    caption = (
        f"activation histogram per sampled step ({n_steps} columns, {span}); rows: {counts.shape[0]} bins over "
        f"[{low:g}, {high:g}], top = {high:g}, values outside counted in the end bins; colour: fraction of the "
        f"values in a bin, 0 -> {vmax:.3g}, colormap {cmap}"
    )
    return img, caption


class ActivationStats(TipCallback):
    """Dead and saturated activations, with histograms over time (tips R4.12, T15, P2).

    On every ``every_n_steps``-th step, forward hooks on the model's activation modules measure the
    fraction of units that never fire (ReLU family), the fraction of saturated outputs
    (sigmoid/tanh), mean, std and a ``bins``-bin histogram per layer. Findings:

    * ``dead-activation`` (warning) when a ReLU-family layer's dead fraction > ``dead_fraction``;
    * ``saturated-activation`` (warning) when a sigmoid/tanh layer's saturated fraction > ``saturated_fraction``;
    * ``dead-activation`` (info) once, when nothing can be hooked (functional activations, TorchScript,
      a compiled model whose hooks do not run).

    Views (through the logger adapter): scalars ``tips/dead_fraction/<layer>``,
    ``tips/saturated_fraction/<layer>``, ``tips/activation_mean/<layer>``, ``tips/activation_std/<layer>``
    every sampled step; histograms ``tips/activations/<layer>`` (a strided sample of at most 4096 of
    rank zero's values) when ``log_histograms``; and after each validation and at the end of
    training an image ``tips/activations_over_time/<layer>`` of the last ``history`` sampled
    histograms, its caption stating value range and colormap.

    Costs: nothing on unsampled steps; on a sampled step the hooks live from
    ``on_train_batch_start`` to the backward, one reduction across ranks and one host sync (under
    DDP, one more small reduction checks that every rank measured the same layers).

    Args:
        every_n_steps: sample every n-th optimizer step (``global_step % n == 0``).
        dead_fraction: warn when more than this fraction of a layer's units never fire.
        saturated_fraction: warn when more than this fraction of a layer's outputs are saturated.
        log_histograms: log per-layer histograms on sampled steps.
        histogram_every_n_steps: log them only on sampled steps that are multiples of this (0: on
            every sampled step); ``Recipe`` uses its ``view_every_n_steps``.
        history: sampled steps kept per layer for the over-time image (and checkpointed).
        bins: histogram bins over the fixed per-type range ([-1, 3] ReLU family, [-1, 6] ReLU6,
            [0, 1] sigmoid, [-1, 1] tanh).

    Example:
        >>> cb = ActivationStats(every_n_steps=50, dead_fraction=0.6)  # trainer = pl.Trainer(callbacks=[cb])
        >>> cb.state_key
        "ActivationStats{'every_n_steps': 50, 'dead_fraction': 0.6, 'saturated_fraction': 0.5}"
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with torch.no_grad():
        ...     _ = net[0].bias.fill_(-10.0)
        >>> [(f.code, f.module) for f in activation_findings(activation_stats(net, torch.randn(16, 4)), cb.dead_fraction)]
        [('dead-activation', '1')]
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        dead_fraction: float = 0.5,
        saturated_fraction: float = 0.5,
        log_histograms: bool = True,
        histogram_every_n_steps: int = 0,
        history: int = 200,
        bins: int = 40,
    ) -> None:
        super().__init__()
        for arg, value in (("every_n_steps", every_n_steps), ("history", history), ("bins", bins)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Expected `{arg}` to be an int but got {value!r}.")
        if every_n_steps < 1:
            raise ValueError(f"Expected `every_n_steps` >= 1 but got {every_n_steps}.")
        if history < 1:
            raise ValueError(f"Expected `history` >= 1 but got {history}.")
        if bins < 2:
            raise ValueError(f"Expected `bins` >= 2 but got {bins}.")
        for arg, frac in (("dead_fraction", dead_fraction), ("saturated_fraction", saturated_fraction)):
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 <= frac < 1.0:
                raise ValueError(f"Expected `{arg}` to be a float in [0, 1) but got {frac!r}.")
        if not isinstance(log_histograms, bool):
            raise TypeError(f"Expected `log_histograms` to be a bool but got {log_histograms!r}.")
        self.every_n_steps = every_n_steps
        self.dead_fraction = float(dead_fraction)
        self.saturated_fraction = float(saturated_fraction)
        self.log_histograms = log_histograms
        if isinstance(histogram_every_n_steps, bool) or not isinstance(histogram_every_n_steps, int) or histogram_every_n_steps < 0:
            raise ValueError(f"Expected histogram_every_n_steps to be an int >= 0 but got {histogram_every_n_steps!r}.")
        self.histogram_every_n_steps = histogram_every_n_steps
        self.history = history
        self.bins = bins
        self._stack = ExitStack()
        self._recorder: _Recorder | None = None
        self._specs: dict[str, ActivationSpec] = {}
        self._outputs: set[str] = set()
        self._disabled = False
        self._sampled_step = -1
        self._image_step = -1
        self._history: dict[str, dict[str, Any]] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            every_n_steps=self.every_n_steps, dead_fraction=self.dead_fraction, saturated_fraction=self.saturated_fraction
        )

    def __getstate__(self) -> dict[str, Any]:
        self._detach()
        state = self.__dict__.copy()
        state["_stack"], state["_recorder"] = ExitStack(), None
        return state

    # --- lifecycle -------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        self._detach()
        self._disabled = False
        self._sampled_step = self._image_step = -1
        self._history = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._specs, self._outputs = _specs(pl_module)
        if not self._specs:
            scripted = any(isinstance(m, torch.jit.ScriptModule) for m in pl_module.modules())
            why = "activations computed with torch.nn.functional cannot be hooked"
            if scripted:
                why += "; the model holds TorchScript modules, whose activations cannot be hooked either"
            self._skip(trainer, f"no activation modules found; {why}")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._detach()  # hooks of an interrupted step never outlive it
        step = trainer.global_step
        if self._disabled or not is_sampled(step, self.every_n_steps) or step == self._sampled_step:
            return  # (the same global step repeats under gradient accumulation: sample its first batch)
        self._sampled_step = step
        histograms = self.log_histograms and trainer.is_global_zero and is_sampled(step, self.histogram_every_n_steps or 1)
        self._recorder = _Recorder(self._specs, self._outputs, self.bins, histograms)
        self._stack.enter_context(forward_hooks(pl_module, lambda name, _m: name in self._specs, self._recorder.hook))

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._detach()  # the forward is done; recomputation (activation checkpointing) is not measured twice

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._detach()
        rec, self._recorder = self._recorder, None
        if rec is not None:
            self._finish(trainer, rec)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log_images(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._detach()
        self._log_images(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._detach()
        self._recorder = None
        super().on_exception(trainer, pl_module, exception)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._detach()

    # --- work ------------------------------------------------------------------------------------
    def _detach(self) -> None:
        self._stack.close()

    def _skip(self, trainer: pl.Trainer, message: str) -> None:
        self._disabled = True
        self.report(trainer, "dead-activation", "info", message,
                    advice="use nn.ReLU / nn.Sigmoid modules (not F.relu) to get activation statistics (R4.12)")

    def _agree(self, trainer: pl.Trainer, rec: _Recorder) -> tuple[bool, bool]:
        """``(every rank measured the same layout, a hook ran on some rank)`` — the same on every rank."""
        if trainer.world_size == 1:
            return bool(rec.records), rec.fired
        size = rec.size
        probe = torch.tensor([size, size * size, int(rec.fired)], dtype=torch.int64, device=trainer.strategy.root_device)
        total_size, total_sq, fired = reduce_sum(trainer, probe).tolist()
        world = trainer.world_size
        same = size > 0 and total_size == world * size and total_sq == world * size * size
        return bool(same), fired > 0

    def _finish(self, trainer: pl.Trainer, rec: _Recorder) -> None:
        same, fired = self._agree(trainer, rec)
        if not fired:
            self._skip(trainer, f"forward hooks on {len(self._specs)} activation module(s) did not run "
                                "(a compiled or scripted model?); activation statistics are skipped")
            return
        if not same:
            return  # a zero-size batch (or different layers on different ranks): skip this sample
        step = self._sampled_step
        stats = rec.finalize(reduce=lambda t: reduce_sum(trainer, t))
        for finding in activation_findings(stats, self.dead_fraction, self.saturated_fraction, step=step):
            report(finding, trainer, self._findings_log)
        scalars: dict[str, float] = {}
        for key, s in stats.items():
            scalars[f"tips/activation_mean/{key}"] = s.mean
            scalars[f"tips/activation_std/{key}"] = s.std
            if s.kind == "relu":
                scalars[f"tips/dead_fraction/{key}"] = s.dead_fraction
            else:
                scalars[f"tips/saturated_fraction/{key}"] = s.saturated_fraction
            if s.values:
                _loggers.log_histogram(trainer, f"tips/activations/{key}", np.asarray(s.values), step=step)
            h = self._history.setdefault(key, {"low": s.low, "high": s.high, "module_type": s.module_type,
                                               "steps": [], "histogram": [], "mean": [], "std": [], "dead_fraction": [],
                                               "saturated_fraction": []})
            for name, value in (("steps", step), ("histogram", s.histogram), ("mean", s.mean), ("std", s.std),
                                ("dead_fraction", s.dead_fraction), ("saturated_fraction", s.saturated_fraction)):
                h[name].append(value)
                del h[name][: -self.history]
        _loggers.log_scalars(trainer, scalars, step=step)

    def _log_images(self, trainer: pl.Trainer) -> None:
        if not self._history or self._image_step == self._sampled_step:
            return
        self._image_step = self._sampled_step
        for key, h in self._history.items():
            if not h["steps"]:
                continue
            img, caption = activations_over_time(h["histogram"], h["low"], h["high"], h["steps"])
            _loggers.log_image(trainer, f"tips/activations_over_time/{key}", img, step=self._sampled_step,
                               caption=f"{key} ({h['module_type']}): {caption}")

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["history"] = copy.deepcopy(self._history)  # a snapshot: training appends to the live lists
        state["sampled_step"] = self._sampled_step
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._history = copy.deepcopy(dict(state_dict.get("history", {})))
        self._sampled_step = int(state_dict.get("sampled_step", -1))
