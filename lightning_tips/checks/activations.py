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
    * No ``dead-activation`` verdict over fewer than 16 values per unit (a healthy unit that fires
      with probability p looks dead over n values with probability (1-p)^n): with small batches the
      per-unit fired counts are accumulated over sampled steps until they hold 16. None from NaN/Inf
      statistics (the root cause is ``NonFiniteGuard``'s ``nonfinite-*`` finding).
    * Functional activations (``F.relu``, ``F.gelu``, ``torch.sigmoid``, ``torch.tanh`` … as in
      ``nn.TransformerEncoderLayer`` and Hugging Face models) are observed on sampled steps too: a
      ``TorchFunctionMode`` attributes each call to its enclosing module (key ``<module>/<fn>``,
      :func:`~lightning_tips._hooks.functional_calls`); one applied to the output layer's result
      gets no verdict.
    * ``dead-activation`` (info, skipped): TorchScript modules and no activation modules, or nothing
      observed on 3 sampled steps that computed a loss (a compiled model). A step whose
      ``training_step`` returned ``None`` ran no forward and is no evidence (the next step is sampled
      instead).
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

from lightning_tips import _ddp, _loggers
from lightning_tips._callback import TipCallback
from lightning_tips._hooks import forward_hooks, functional_calls
from lightning_tips._utils import find_output_layer, histogram_period, is_sampled
from lightning_tips._validate import check_bool, check_float, check_int
from lightning_tips.checks._verdicts import Verdict, report_verdict

__all__ = [
    "ActivationSpec",
    "ActivationStats",
    "LayerStats",
    "activation_findings",
    "activation_spec",
    "activation_stats",
    "activation_verdicts",
    "activations_over_time",
]

_RELU_FAMILY = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish,
)
_HEADER = 5  # n_values, sum, sum of squares, n_saturated, n_samples
_MAX_HISTOGRAM_VALUES = 4096  # per layer, the strided sample logged as a histogram
_MAX_STAT_VALUES = 1 << 16  # per layer, the strided sample of the moments, saturation and histogram
_SILENT_STEPS = 3  # sampled steps with a loss but no hook call before "the hooks never run" is concluded
MIN_VALUES_PER_UNIT = 16  # a unit firing with probability p looks dead over n values with probability (1-p)^n


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


_RELU_SPEC = ActivationSpec("relu", -1.0, 3.0)
_FUNCTIONAL_SPECS: dict[str, ActivationSpec] = {
    **{n: _RELU_SPEC for n in ("relu", "relu_", "gelu", "silu", "mish", "elu", "celu", "selu", "leaky_relu",
                                "hardswish")},
    "relu6": ActivationSpec("relu", -1.0, 6.0),
    "sigmoid": ActivationSpec("squash", 0.0, 1.0, 0.02, 0.98),
    "tanh": ActivationSpec("squash", -1.0, 1.0, -0.96, 0.96),
}


def _watched_functions() -> dict[Any, str]:
    """The functional activations observed on sampled steps: ``{torch function: name}``."""
    import torch.nn.functional as F

    found: dict[Any, str] = {}
    for name in _FUNCTIONAL_SPECS:
        for owner in (F, torch, torch.Tensor):
            fn = getattr(owner, name, None)
            if fn is not None:
                found.setdefault(fn, name)
    return found


_WATCHED = _watched_functions()


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
    steps: int = 1  # sampled steps the dead fraction covers (accumulated when one batch has too few values)


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


def _host_named(tensors: Mapping[str, torch.Tensor], to_host: Callable[[torch.Tensor], list[float]]) -> dict[str, list[float]]:
    """``{name: tensor}`` as ``{name: list of floats}`` with one device-to-host copy."""
    flat = to_host(torch.cat([t.reshape(-1).float() for t in tensors.values()])) if tensors else []
    out: dict[str, list[float]] = {}
    it = iter(flat)
    for k, t in tensors.items():
        out[k] = [next(it) for _ in range(t.numel())]
    return out


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
        self.loss_seen = False  # did the step produce a loss (a backward): a forward ran
        self.meta: list[_Meta] = []
        self.records: list[torch.Tensor] = []
        self.units: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._calls: dict[str, int] = {}
        self.output_of: Any = None

    def hook(self, name: str, module: nn.Module, output: Any) -> None:
        self._add(name, type(module).__name__, self.specs[name], output, name in self.outputs)

    def functional(self, module_name: str, fn: str, args: tuple[Any, ...], output: Any) -> None:
        """A functional activation (``F.gelu`` …) called inside ``module_name``'s forward."""
        if module_name in self.specs:
            return  # inside an activation module (nn.GELU calls F.gelu): measured by its hook
        is_output = bool(args) and self.output_of is not None and args[0] is self.output_of
        key = f"{module_name or 'model'}/{fn}"
        self._add(key, f"F.{fn}", _FUNCTIONAL_SPECS[fn], output, is_output)

    def output_hook(self, name: str, module: nn.Module, output: Any) -> None:
        self.output_of = output  # the output layer's result: an activation applied to it is the model's output

    def _add(self, name: str, module_type: str, spec: ActivationSpec, output: Any, is_output: bool) -> None:
        self.fired = True
        if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.dim() == 0:
            return  # tuple outputs, integer outputs, scalars: nothing to measure
        if output.numel() == 0:
            return  # a zero-size batch: skip the sample
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        key = name if call == 0 else f"{name}[{call}]"  # a module applied several times per forward
        rec, fired, _, n_units = _record(output, spec, self.bins)
        self.meta.append(_Meta(key, name, module_type, spec, n_units, output.numel(), is_output))
        self.records.append(rec)
        self.units.append(fired)
        if self.keep_values:
            flat = output.detach().flatten()
            stride = max(1, math.ceil(flat.numel() / _MAX_HISTOGRAM_VALUES))
            self.values.append(flat[::stride].float())

    @property
    def size(self) -> int:
        return sum(r.numel() for r in self.records) + sum(u.numel() for u in self.units)

    def state(self) -> dict[str, torch.Tensor]:
        """The named on-device states to sum across ranks: per call, its record and per-unit fired
        counts; and whether any hook ran / a loss was produced (so every rank learns the same)."""
        out = {"hooks_fired": torch.tensor(float(self.fired)), "loss_seen": torch.tensor(float(self.loss_seen))}
        for m, rec, fired in zip(self.meta, self.records, self.units):
            out[f"{m.key}/record"] = rec
            out[f"{m.key}/fired"] = fired
        return out

    def finalize(
        self,
        reduce: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor] | None] = lambda s: s,
        to_host: Callable[[torch.Tensor], list[float]] | None = None,
        carry: dict[str, tuple[torch.Tensor, int, int]] | None = None,
    ) -> dict[str, LayerStats] | None:
        """Sum the states across ranks with ``reduce`` (``None``: the ranks' layouts differ, skip),
        count dead units on the device, sync once.

        ``carry`` (updated in place): per ReLU-family layer with fewer than ``MIN_VALUES_PER_UNIT``
        values per unit so far, ``(summed per-unit fired counts, values per unit, sampled steps)``;
        a layer's dead fraction is then judged over the accumulated steps once they hold enough values.
        """
        reduced = reduce(self.state())
        if reduced is None:
            return None
        self.fired, self.loss_seen = bool(reduced["hooks_fired"] > 0), bool(reduced["loss_seen"] > 0)  # no sync on CPU
        if not self.records:
            return {}
        # "never fires over the global batch": the summed per-unit fired count is zero
        host_parts = {}
        acc: dict[str, torch.Tensor] = {}
        for m in self.meta:
            fired = reduced[f"{m.key}/fired"]
            host_parts[f"{m.key}/record"] = reduced[f"{m.key}/record"]
            host_parts[f"{m.key}/dead"] = (fired == 0).sum().float().reshape(1)
            if carry is not None and m.spec.kind == "relu":
                prev = carry.get(m.key)
                acc[m.key] = fired + prev[0] if prev is not None and prev[0].shape == fired.shape else fired
                host_parts[f"{m.key}/dead_acc"] = (acc[m.key] == 0).sum().float().reshape(1)
        if self.keep_values:
            host_parts.update({f"{m.key}/values": v for m, v in zip(self.meta, self.values)})
        host = _host_named(host_parts, to_host or _to_host)
        out: dict[str, LayerStats] = {}
        for m in self.meta:
            row = host[f"{m.key}/record"]
            n, s, ss, n_sat, n_samples = row[:_HEADER]
            mean = s / n
            var = max(ss / n - mean * mean, 0.0) * (n / (n - 1) if n > 1 else 1.0) if math.isfinite(ss) else math.nan
            values: list[float] = host.get(f"{m.key}/values", [])
            relu = m.spec.kind == "relu"
            dead, per_unit, steps = (host[f"{m.key}/dead"][0] if relu else math.nan), int(n_samples), 1
            if carry is not None and m.key in acc:
                prev = carry.pop(m.key, None)
                if per_unit < MIN_VALUES_PER_UNIT and math.isfinite(s):  # too little evidence from this step alone
                    fits = prev is not None and prev[0].shape == acc[m.key].shape
                    total, steps = (prev[1] + per_unit, prev[2] + 1) if fits and prev is not None else (per_unit, 1)
                    if total >= MIN_VALUES_PER_UNIT:
                        dead, per_unit = host[f"{m.key}/dead_acc"][0], total
                    else:
                        carry[m.key] = (acc[m.key], total, steps)
                        steps = 1
            out[m.key] = LayerStats(
                name=m.key,
                module_type=m.module_type,
                kind=m.spec.kind,
                n_values=int(n),
                n_samples=per_unit,
                n_units=m.n_units,
                mean=mean,
                std=math.sqrt(var),
                dead_fraction=dead / m.n_units if relu else math.nan,
                saturated_fraction=math.nan if relu else n_sat / n,
                low=m.spec.low,
                high=m.spec.high,
                histogram=row[_HEADER:],
                is_output=m.is_output,
                values=values,
                steps=steps,
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
    out_layer = find_output_layer(model)
    rec = _Recorder(specs, outputs, bins, keep_values=False)
    with ExitStack() as stack, torch.no_grad():
        stack.enter_context(forward_hooks(model, lambda name, _m: name in specs, rec.hook))
        if out_layer is not None:
            stack.enter_context(forward_hooks(model, lambda name, _m: name == out_layer[0], rec.output_hook))
        stack.enter_context(functional_calls(model, _WATCHED, rec.functional))
        model(*inputs)
    return rec.finalize() or {}


def activation_verdicts(
    stats: Mapping[str, LayerStats], dead_fraction: float = 0.5, saturated_fraction: float = 0.5
) -> list[Verdict]:
    """The ``dead-activation`` / ``saturated-activation`` warnings for per-layer statistics, one per
    layer that has one (``module``: the layer's key); an empty list when every layer passes.

    Figures: ``dead_fraction`` and ``units`` (dead), ``saturated_fraction`` (saturated).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.fill_(10.0)
        >>> [(v.code, v.severity, v.module) for v in activation_verdicts(activation_stats(net, torch.ones(3, 4)))]
        [('saturated-activation', 'warning', '1')]
    """
    found: list[Verdict] = []
    for key, s in stats.items():
        if s.is_output or not (math.isfinite(s.mean) and math.isfinite(s.std)):
            continue  # non-finite activations: the root cause is NonFiniteGuard's nonfinite-* finding
        if s.kind == "relu" and s.n_samples < MIN_VALUES_PER_UNIT:
            continue  # too few values per unit: a healthy unit (p ~ 0.5) looks dead over 1 value half the time
        if s.kind == "relu" and s.dead_fraction > dead_fraction:
            dead = round(s.dead_fraction * s.n_units)
            found.append(Verdict(
                "dead-activation", "warning",
                f"{s.dead_fraction:.0%} of the units of `{key}` ({s.module_type}, {dead}/{s.n_units} units) "
                f"never fired (output <= 0) over {s.n_samples} values per unit ({_evidence(s)}; threshold {dead_fraction:.0%}); "
                f"mean {s.mean:.3g}, std {s.std:.3g}",
                advice="dead units get no gradient and stop learning: lower the learning rate (P10), use He init "
                "(T11, P5), check for very negative biases; consider LeakyReLU (R4.12, P2)",
                module=key,
                figures={"dead_fraction": s.dead_fraction, "units": float(s.n_units)},
            ))
        elif s.kind == "squash" and s.saturated_fraction > saturated_fraction:
            found.append(Verdict(
                "saturated-activation", "warning",
                f"{s.saturated_fraction:.0%} of the outputs of `{key}` ({s.module_type}) sit in its flat tails "
                f"({_tails(s)}) where the gradient is ~0 (threshold {saturated_fraction:.0%}); "
                f"mean {s.mean:.3g}, std {s.std:.3g}",
                module=key,
                figures={"saturated_fraction": s.saturated_fraction},
            ))
    return found


#: The former name of :func:`activation_verdicts` (it returned findings with a ``step``; a verdict has none).
activation_findings = activation_verdicts


def _evidence(s: LayerStats) -> str:
    if s.steps > 1:
        return f"every sample and position of {s.steps} sampled batches"
    return "every sample and position of the sampled batch"


def _tails(s: LayerStats) -> str:
    if s.module_type == "Sigmoid":
        return "y <= 0.02 or y >= 0.98"
    if s.module_type == "Tanh":
        return "|y| >= 0.96"
    return f"y at its bounds {s.low:g} / {s.high:g}"


def activations_over_time(
    columns: Sequence[Sequence[float]],
    low: float,
    high: float,
    steps: Sequence[int] = (),
    cmap: str = "viridis",
    title: str = "",
) -> tuple[np.ndarray, str]:
    """One layer's histograms over sampled steps as a chart: a column per sampled step (x axis,
    labelled with the global steps), the activation value on the y axis (``low`` at the bottom,
    ``high`` on top), and a colour bar for the fraction of the values in each bin.

    Each column is normalised to the fraction of values per bin; colours map ``[0, max fraction]``
    linearly to ``cmap``. Returns ``(HxWx3 uint8 image, caption)``; the caption states the ranges.

    Example:
        >>> img, caption = activations_over_time([[1, 0, 3], [0, 4, 0]], 0.0, 1.0, steps=[0, 10], title="net.1 (ReLU)")
        >>> img.shape[2], img.shape[1] >= 600, caption.split(";")[0]
        (3, True, 'activation histogram per sampled step (2 columns, steps 0..10)')
    """
    from lightning_tips._render import figure_to_array, new_figure

    counts = np.asarray(columns, dtype=np.float64).T  # bins x steps
    totals = counts.sum(0, keepdims=True)
    frac = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    vmax = float(frac.max()) or 1.0
    n_steps = counts.shape[1]
    fig = new_figure(7.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(frac, aspect="auto", origin="lower", cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest",
                   extent=(-0.5, n_steps - 0.5, low, high))
    labels = list(steps) if len(steps) == n_steps else list(range(n_steps))
    ticks = sorted({round(i * (n_steps - 1) / 5) for i in range(6)}) if n_steps > 6 else list(range(n_steps))
    ax.set_xticks(ticks, [str(labels[t]) for t in ticks])
    ax.set_xlabel("global step (sampled steps, in order)")
    ax.set_ylabel("activation value")
    ax.set_title(title or "activations over time", fontsize=10)
    fig.colorbar(im, ax=ax, label="fraction of values")
    fig.tight_layout()
    img = figure_to_array(fig)
    span = f"steps {steps[0]}..{steps[-1]}" if len(steps) else "steps"
    caption = (
        f"activation histogram per sampled step ({n_steps} columns, {span}); rows: {counts.shape[0]} bins over "
        f"[{low:g}, {high:g}], values outside counted in the end bins; colour: fraction of the "
        f"values in a bin, 0 -> {vmax:.3g}, colormap {cmap}"
    )
    return img, caption


class ActivationStats(TipCallback):
    """Dead and saturated activations, with histograms over time (tips R4.12, T15, P2).

    On the sampled steps — 0, 1, 2, 5, 10, 20, 50, then every ``every_n_steps``-th — forward hooks on
    the model's activation modules, and a probe of functional activation calls (``F.gelu`` …),
    measure the fraction of units that never fire (ReLU family), the fraction of saturated outputs
    (sigmoid/tanh), mean, std and a ``bins``-bin histogram per layer. Findings:

    * ``dead-activation`` (warning) when a ReLU-family layer's dead fraction > ``dead_fraction``;
    * ``saturated-activation`` (warning) when a sigmoid/tanh layer's saturated fraction > ``saturated_fraction``;
    * ``dead-activation`` (info, skipped) once, when nothing can be observed (TorchScript, a compiled
      model whose hooks do not run on 3 sampled steps that computed a loss).

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
        every_n_steps: sample every n-th optimizer step (``global_step % n == 0``), after the dense
            start 0, 1, 2, 5, 10, 20, 50.
        dead_fraction: warn when more than this fraction of a layer's units never fire.
        saturated_fraction: warn when more than this fraction of a layer's outputs are saturated.
        log_histograms: log per-layer histograms on sampled steps.
        histogram_every_n_steps: log them only on sampled steps that are multiples of this
            (``None``: on every sampled step; ``0``: never); ``Recipe`` uses its ``view_every_n_steps``.
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
        >>> [(v.code, v.module) for v in activation_verdicts(activation_stats(net, torch.randn(16, 4)), cb.dead_fraction)]
        [('dead-activation', '1')]
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        dead_fraction: float = 0.5,
        saturated_fraction: float = 0.5,
        log_histograms: bool = True,
        histogram_every_n_steps: int | None = None,
        history: int = 200,
        bins: int = 40,
    ) -> None:
        super().__init__()
        check_int("every_n_steps", every_n_steps, low=0)
        check_int("history", history, low=1)
        check_int("bins", bins, low=2)
        check_float("dead_fraction", dead_fraction, low=0.0, high=1.0, high_open=True)
        check_float("saturated_fraction", saturated_fraction, low=0.0, high=1.0, high_open=True)
        check_bool("log_histograms", log_histograms)
        check_int("histogram_every_n_steps", histogram_every_n_steps, low=0, optional=True)
        self.every_n_steps = every_n_steps
        self.dead_fraction = float(dead_fraction)
        self.saturated_fraction = float(saturated_fraction)
        self.log_histograms = log_histograms
        self.histogram_every_n_steps = histogram_every_n_steps
        self.history = history
        self.bins = bins
        self._stack = ExitStack()
        self._recorder: _Recorder | None = None
        self._specs: dict[str, ActivationSpec] = {}
        self._outputs: set[str] = set()
        self._output_layer: str | None = None
        self._disabled = False
        self._silent_steps = 0
        self._carry: dict[str, tuple[torch.Tensor, int, int]] = {}  # small batches: dead evidence across steps
        self._resample = False  # the last sampled step ran no forward: sample the next one
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
        state["_stack"], state["_recorder"], state["_carry"] = ExitStack(), None, {}
        return state

    # --- lifecycle -------------------------------------------------------------------------------
    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._detach()
        self._disabled = False
        self._silent_steps = 0
        self._carry = {}
        self._resample = False
        self._sampled_step = self._image_step = -1
        self._history = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._specs, self._outputs = _specs(pl_module)
        out_layer = find_output_layer(pl_module)
        self._output_layer = out_layer[0] if out_layer is not None else None
        if not self._specs and any(isinstance(m, torch.jit.ScriptModule) for m in pl_module.modules()):
            self._skip(trainer, "no activation modules found, and the model holds TorchScript modules, whose "
                                "activations (modules or functional calls) cannot be observed")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._detach()  # hooks of an interrupted step never outlive it
        step = trainer.global_step
        sampled = is_sampled(step, self.every_n_steps, dense_start=True) or self._resample
        if self._disabled or not sampled or step == self._sampled_step:
            return  # (the same global step repeats under gradient accumulation: sample its first batch)
        self._sampled_step = step
        histograms = self.log_histograms and trainer.is_global_zero and is_sampled(step, histogram_period(self.histogram_every_n_steps))
        rec = self._recorder = _Recorder(self._specs, self._outputs, self.bins, histograms)
        self._stack.enter_context(forward_hooks(pl_module, lambda name, _m: name in self._specs, rec.hook))
        self._stack.enter_context(forward_hooks(pl_module, lambda name, _m: name == self._output_layer, rec.output_hook))
        # functional activations (F.gelu in nn.TransformerEncoderLayer, Hugging Face models), this step only
        self._stack.enter_context(functional_calls(pl_module, _WATCHED, rec.functional))

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self._recorder is not None:
            self._recorder.loss_seen = True  # a loss: the step ran a forward
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

    def _end_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, error: BaseException | None) -> None:
        self._detach()
        self._recorder = None  # only a step interrupted by an exception leaves one behind

    # --- work ------------------------------------------------------------------------------------
    def _detach(self) -> None:
        self._stack.close()

    def _skip(self, trainer: pl.Trainer, message: str) -> None:
        self._disabled = True
        self.report(trainer, "dead-activation", "info", message, skipped=True)

    def _finish(self, trainer: pl.Trainer, rec: _Recorder) -> None:
        # one reduction across ranks (sums of every layer's record and per-unit fired counts, and the
        # two flags); None when the ranks measured different layers (a zero-size batch): skip the sample
        stats = rec.finalize(
            reduce=lambda state: _ddp.reduce(trainer, state, site="ActivationStats sample", on_mismatch="skip"),
            carry=self._carry,
        )
        if stats is None:
            return
        if not rec.loss_seen and not rec.fired:
            # no loss on any rank (training_step returned None: a skipped batch): no forward ran, so this
            # is no evidence; the next step is sampled instead (the same decision on every rank)
            self._resample = True
            return
        self._resample = False
        if not rec.fired:
            # a step that produced no loss (training_step returned None) ran no forward: no evidence.
            # Hooks that stay silent on several steps that did produce a loss: a compiled/scripted model
            self._silent_steps += int(rec.loss_seen)
            if self._silent_steps >= _SILENT_STEPS:
                self._skip(trainer, f"forward hooks on {len(self._specs)} activation module(s) did not run on "
                                    f"{self._silent_steps} sampled steps that computed a loss (a compiled or scripted "
                                    "model?); activation statistics are skipped")
            return
        self._silent_steps = 0
        if not stats:
            return  # hooks ran but measured nothing (a zero-size batch on every rank)
        step = self._sampled_step
        for verdict in activation_verdicts(stats, self.dead_fraction, self.saturated_fraction):
            report_verdict(self, trainer, verdict, step=step)
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
            img, caption = activations_over_time(h["histogram"], h["low"], h["high"], h["steps"],
                                                 title=f"{key} ({h['module_type']}): activations over time")
            _loggers.log_image(trainer, f"tips/activations_over_time/{key}", img, step=self._sampled_step,
                               caption=f"{key} ({h['module_type']}): {caption}")

    # --- state -----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        state["history"] = copy.deepcopy(self._history)  # a snapshot: training appends to the live lists
        state["sampled_step"] = self._sampled_step
        return state

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        self._history = copy.deepcopy(dict(state_dict.get("history", {})))
        self._sampled_step = int(state_dict.get("sampled_step", -1))
