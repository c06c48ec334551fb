"""Weight init by the activation that follows each layer (T11, P5, P15).

Variance scaling keeps the activations' scale from layer to layer: He (Kaiming) for the ReLU
family (``std = gain / sqrt(fan_in)``, gain sqrt(2) or sqrt(2 / (1 + slope^2))), Xavier (Glorot)
for tanh/sigmoid, LeCun normal (``std = 1 / sqrt(fan_in)``) for SELU, and orthogonal matrices for
the recurrent weights ``weight_hh`` of RNN/LSTM/GRU (one orthogonal block per gate). P15 is the case
study: a bad init hidden by BatchNorm, fixed by variance scaling.

:func:`init_weights_` is the in-place function; :class:`WeightInit` applies it at fit start.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from lightning_tips import _ddp
from lightning_tips._callback import TipCallback
from lightning_tips._utils import find_output_layer, preserved_rng
from lightning_tips._validate import check_bool, check_choice

if TYPE_CHECKING:  # pragma: no cover
    import lightning.pytorch as pl

__all__ = ["Scheme", "WeightInit", "init_weights_", "layers_to_keep"]

Scheme = Literal["auto", "he", "xavier", "orthogonal", "lecun"]

_FEEDFORWARD = (
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)
_RECURRENT = (nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell, nn.GRUCell)
_RELU_FAMILY = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Softplus,
)
_SQUASHING = (nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Softsign, nn.Hardsigmoid, nn.LogSigmoid, nn.Tanhshrink)


def _activation_scheme(act: nn.Module) -> tuple[str, float]:
    """``(scheme, gain)`` for a layer followed by ``act``: He for ReLU-like, Xavier for squashing, LeCun for SELU."""
    if isinstance(act, nn.SELU):
        return "lecun", 1.0
    if isinstance(act, nn.LeakyReLU):
        return "he", nn.init.calculate_gain("leaky_relu", act.negative_slope)
    if isinstance(act, nn.PReLU):
        return "he", nn.init.calculate_gain("leaky_relu", float(act.weight.detach().mean()))
    if isinstance(act, _RELU_FAMILY):
        return "he", math.sqrt(2.0)
    if isinstance(act, (nn.Tanh, nn.Hardtanh, nn.Tanhshrink, nn.Softsign)):
        return "xavier", 5.0 / 3.0  # torch's calculate_gain("tanh")
    return "xavier", 1.0  # sigmoid family


def _following_activations(module: nn.Module) -> dict[str, nn.Module | None]:
    """For each weight layer, the first activation module registered after it and before the next layer."""
    following: dict[str, nn.Module | None] = {}
    pending: str | None = None
    for name, m in module.named_modules():
        if isinstance(m, (*_FEEDFORWARD, *_RECURRENT)):
            following[name] = None  # until an activation shows up before the next layer
            pending = name
        elif isinstance(m, (*_RELU_FAMILY, *_SQUASHING, nn.SELU)) and pending is not None:
            following[pending], pending = m, None
    return following


def _gain(scheme: str, act: nn.Module | None) -> float:
    """The gain of ``scheme`` when forced, taken from the following activation where it has one."""
    if scheme == "lecun":
        return 1.0
    if act is not None:
        auto_scheme, gain = _activation_scheme(act)
        if auto_scheme == scheme or scheme == "orthogonal":
            return gain
    return math.sqrt(2.0) if scheme == "he" else 1.0


def _init_matrix_(w: torch.Tensor, scheme: str, gain: float) -> None:
    """Initialise one weight tensor (2-D or conv) in place with ``scheme``."""
    fan_in = w[0].numel()  # in_features x receptive field, as torch's kaiming_normal_(mode="fan_in")
    if scheme == "he":
        nn.init.normal_(w, 0.0, gain / math.sqrt(fan_in))  # kaiming_normal_, fan_in, with this gain
    elif scheme == "lecun":
        nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fan_in))
    elif scheme == "xavier":
        nn.init.xavier_uniform_(w, gain=gain)
    else:
        nn.init.orthogonal_(w, gain=gain)


def _init_recurrent_(name: str, rnn: nn.Module, scheme: str, applied: dict[str, str]) -> None:
    """weight_hh: orthogonal per gate block; weight_ih: Xavier (gated/tanh) or He (ReLU RNN) per gate block."""
    gates = {nn.LSTM: 4, nn.LSTMCell: 4, nn.GRU: 3, nn.GRUCell: 3}.get(type(rnn), 1)
    relu_rnn = getattr(rnn, "nonlinearity", "tanh") == "relu"
    if scheme == "auto":
        ih_scheme, ih_gain = ("he", math.sqrt(2.0)) if relu_rnn else ("xavier", 5.0 / 3.0 if gates == 1 else 1.0)
    else:
        ih_scheme = scheme
        ih_gain = _gain(scheme, None)
    for pname, p in rnn.named_parameters(recurse=False):
        full = f"{name}.{pname}" if name else pname
        if pname.startswith("bias"):
            nn.init.zeros_(p)
            continue
        if not pname.startswith(("weight_ih", "weight_hh")) or isinstance(p, UninitializedParameter):
            continue
        hh = pname.startswith("weight_hh")
        used = "orthogonal" if hh else ih_scheme
        with torch.no_grad():
            for block in p.chunk(gates, 0):  # one block per gate: (H, in) or (H, H)
                _init_matrix_(block, used, 1.0 if hh else ih_gain)
        applied[full] = used


def _default_bound(m: nn.Module, w: torch.Tensor) -> float | None:
    """The bound b of PyTorch's default init U(-b, b) for this weight of ``m``; ``None`` if unknown.

    Linear / ConvNd / ConvTransposeNd: ``kaiming_uniform_(a=sqrt(5))`` = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    with fan_in = ``w.size(1)`` x receptive field; Bilinear: 1/sqrt(in1_features); RNN/LSTM/GRU and their
    cells: 1/sqrt(hidden_size) for every weight.
    """
    if isinstance(m, _RECURRENT):
        hidden = getattr(m, "hidden_size", 0)
        return 1.0 / math.sqrt(hidden) if hidden else None
    if w.dim() < 2:
        return None
    if isinstance(m, nn.Bilinear):
        return 1.0 / math.sqrt(w.shape[1])
    fan_in = w[0].numel() if not isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else (
        w.shape[1] * w[0, 0].numel()
    )
    return 1.0 / math.sqrt(fan_in) if fan_in else None


def not_default_init(w: torch.Tensor, bound: float) -> str | None:
    """Why ``w`` is not a draw of PyTorch's default U(-bound, bound) init; ``None`` when it is consistent.

    Two tests, both with the noise of a fresh draw of ``n`` values accounted for: (1) no value outside
    ``bound`` (a hard limit of the uniform law: a trained or loaded weight that moved a little crosses it
    somewhere); (2) with ``n >= 16``, the standard deviation within 5 standard errors (relative SE of a
    uniform's sample std ``0.45 * 2 / sqrt(n)``, at least 2%) of ``bound / sqrt(3)`` (a custom init —
    normal(0, 0.02), Xavier, zeros — has another scale).

    Example:
        >>> w = torch.empty(32, 64).uniform_(-0.125, 0.125)
        >>> not_default_init(w, 0.125) is None
        True
        >>> print(not_default_init(torch.zeros(32, 64), 0.125))
        std 0, PyTorch's default init gives 0.0722 (±10%)
        >>> print(not_default_init(w * 2.0, 0.125)[:7])
        max |w|
    """
    x = w.detach().float().flatten()
    n = x.numel()
    if n == 0:
        return None
    peak = float(x.abs().max())
    if not math.isfinite(peak) or peak > bound * (1.0 + 1e-4):
        return f"max |w| {peak:.3g} > {bound:.3g}, the bound of PyTorch's default init"
    if n >= 16:
        std, expected = float(x.std()), bound / math.sqrt(3.0)
        tolerance = max(5.0 * 0.9 / math.sqrt(n), 0.02)
        if abs(std / expected - 1.0) > tolerance:
            return f"std {std:.3g}, PyTorch's default init gives {expected:.3g} (±{tolerance:.0%})"
    return None


def layers_to_keep(module: nn.Module, fresh_only: bool = True) -> dict[str, str]:
    """``{layer name: why}`` for the layers :func:`init_weights_` must leave alone.

    A layer with a frozen parameter (``requires_grad=False``: a frozen pretrained backbone) is always
    kept. With ``fresh_only`` a layer whose weights are not a plausible draw of PyTorch's default init
    (:func:`not_default_init`: trained, loaded from a checkpoint, pretrained, or initialised by the user)
    is kept too; so is one whose bias leaves the default bound (a bias set on purpose — a prior, a
    forget gate, a large negative bias — or trained). Limits: a layer trained so little that no value
    left the default bound and its scale stayed within the noise looks fresh, and so does a layer of a
    pretrained model that never received a gradient (an unused branch) with default-looking weights
    and bias; a user's init that happens to equal PyTorch's default is treated as fresh
    (re-initialising it is what was asked).

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> _ = net[0].requires_grad_(False)
        >>> with torch.no_grad():
        ...     _ = net[2].weight.mul_(3.0)
        >>> sorted(layers_to_keep(net))
        ['0', '2']
    """
    keep: dict[str, str] = {}
    for name, m in module.named_modules():
        if not isinstance(m, (*_FEEDFORWARD, *_RECURRENT)):
            continue
        params = [(p_name, p) for p_name, p in m.named_parameters(recurse=False) if not isinstance(p, UninitializedParameter)]
        if any(not p.requires_grad for _, p in params):
            keep[name] = "frozen (requires_grad=False)"
            continue
        if not fresh_only:
            continue
        weight = next((p for p_name, p in params if p_name.startswith("weight")), None)
        module_bound = _default_bound(m, weight) if weight is not None else None
        for p_name, p in params:
            if p_name.startswith("bias"):
                # a bias is judged by the bound only (zeros are a common deliberate init): one set on purpose
                # (a prior, -100 for a dead branch, a forget gate) or trained past the bound keeps the layer
                peak = float(p.detach().abs().max()) if p.numel() else 0.0
                why = (
                    f"max |b| {peak:.3g} > {module_bound:.3g}, the bound of PyTorch's default init"
                    if module_bound is not None and not peak <= module_bound * (1.0 + 1e-4)
                    else None
                )
            else:
                bound = _default_bound(m, p)
                why = not_default_init(p, bound) if bound is not None else None
            if why is not None:
                keep[name] = f"not freshly initialised: `{p_name}` {why}"
                break
    return keep


def init_weights_(module: nn.Module, scheme: Scheme = "auto", keep: Collection[str] = ()) -> dict[str, str]:
    """Initialise every layer's weights by the activation that follows it; zero biases but the output layer's (T11, P5).

    ``auto``: He (normal, fan_in, ReLU/leaky gain) when a ReLU-family module follows the layer,
    Xavier (uniform, gain 5/3 for tanh, 1 for sigmoid) for tanh/sigmoid, LeCun normal for SELU;
    "follows" means the first activation module registered after the layer (``named_modules``
    order) and before the next layer. The output layer (the last Linear/1x1 conv, no activation after
    it) gets LeCun normal — unit gain, so the initial logits stay small and the initial loss near
    ``log C`` (T9); any other layer followed by no activation module (e.g. an activation called
    functionally in ``forward``) gets He. Recurrent modules:
    ``weight_hh`` orthogonal (per gate block; any ``scheme``), ``weight_ih`` Xavier (He for a ReLU
    RNN; ``scheme`` when forced). Biases are zeroed, except the output layer's (the last
    Linear/1x1 conv, the one :class:`~lightning_tips.fixes.output_bias.OutputBiasInit` sets).
    Lazy layers not yet materialised are left alone, and so are the layers named in ``keep`` (see
    :func:`layers_to_keep`). Uses the global torch RNG.

    Returns:
        ``{layer name: scheme applied}``; recurrent modules have one entry per weight matrix
        (``"lstm.weight_ih_l0": "xavier"``, ``"lstm.weight_hh_l0": "orthogonal"``).

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> init_weights_(net)
        {'0': 'xavier', '2': 'he', '4': 'lecun'}
        >>> float(net[0].bias.abs().max())
        0.0
    """
    if scheme not in get_args(Scheme):
        raise ValueError(f"Expected scheme to be one of {', '.join(map(repr, get_args(Scheme)))} but got {scheme!r}.")
    output = find_output_layer(module)
    output_layer = output[1] if output is not None else None
    following = _following_activations(module)
    applied: dict[str, str] = {}
    for name, m in module.named_modules():
        if name in keep:
            continue
        if isinstance(m, _RECURRENT):
            _init_recurrent_(name, m, scheme, applied)
            continue
        if not isinstance(m, _FEEDFORWARD):
            continue
        weight = getattr(m, "weight", None)
        if not isinstance(weight, torch.Tensor) or isinstance(weight, UninitializedParameter):
            continue
        act = following.get(name)
        if scheme == "auto":
            if m is output_layer and act is None:  # linear logits: unit gain keeps the initial loss near log C (T9)
                used, gain = "lecun", 1.0
            else:
                used, gain = _activation_scheme(act) if act is not None else ("he", math.sqrt(2.0))
        else:
            used, gain = scheme, _gain(scheme, act)
        with torch.no_grad():
            _init_matrix_(weight, used, gain)
            bias = getattr(m, "bias", None)
            if isinstance(bias, torch.Tensor) and not isinstance(bias, UninitializedParameter) and m is not output_layer:
                bias.zero_()
        applied[name] = used
    return applied


class WeightInit(TipCallback):
    """Fix T11/P5/P15: at fit start, (re)initialise the weights with :func:`init_weights_`.

    Applied in ``on_fit_start`` unless the fit resumes from a checkpoint (``trainer.ckpt_path``
    set). The init draws from a private RNG seeded with rank zero's ``torch.initial_seed()``
    (broadcast), so every DDP rank gets the same weights and the user's RNG streams are left as
    they were. It zeroes biases (not the output layer's): put it BEFORE
    :class:`~lightning_tips.fixes.forget_gate.ForgetGateBias` in the callbacks list.

    Never wipes weights that matter: a layer with a frozen parameter (``requires_grad=False``) is
    never touched, and — unless ``force`` — neither is a layer whose weights do not look freshly
    initialised by PyTorch's default (a pretrained backbone, a model trained or loaded before this
    fit, or initialised by you; see :func:`layers_to_keep` for the test and its limits).

    Reports ``weight-init`` (info) with the number of layers per scheme (``he``, ``xavier``,
    ``orthogonal``, ``lecun``) and the layers left alone, and why; a skipped ``info`` of the same
    code when there is no layer to initialise.

    Args:
        scheme: ``"auto"`` (by the following activation) or one scheme for every feed-forward layer.
        force: also re-initialise layers that do not look freshly initialised (frozen ones stay as they are).

    Example:
        >>> WeightInit(scheme="xavier").scheme
        'xavier'
    """

    def __init__(self, scheme: Scheme = "auto", force: bool = False) -> None:
        super().__init__()
        check_choice("scheme", scheme, get_args(Scheme))
        check_bool("force", force)
        self.scheme = scheme
        self.force = force
        self.applied: dict[str, str] = {}  # what was applied (kept in the checkpoint)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(scheme=self.scheme)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            return  # resuming: the checkpoint's weights are the trained ones
        # rank zero's seed and rank zero's view of which layers to keep, in the one broadcast: every rank
        # initialises the same layers the same way even if the ranks' starting weights differed
        seed, keep = _ddp.broadcast_object(
            trainer, (torch.initial_seed() % 2**63, layers_to_keep(pl_module, fresh_only=not self.force)), 0,
            site="WeightInit seed and kept layers",
        )
        seed = int(seed)
        with preserved_rng([pl_module.device]):
            torch.manual_seed(seed)
            applied = init_weights_(pl_module, self.scheme, keep=keep)
        kept = "; ".join(f"`{name}` {why}" for name, why in list(keep.items())[:5]) + (
            f"; and {len(keep) - 5} more" if len(keep) > 5 else ""
        )
        if not applied:
            why = (
                f"every layer was left alone — {kept}" + ("" if self.force else " (WeightInit(force=True) re-initialises "
                                                          "layers that are not frozen)")
                if keep
                else f"{type(pl_module).__name__} has no Linear/conv/recurrent layer with initialised weights (lazy "
                "layers are initialised by their first forward pass)"
            )
            self.report(trainer, "weight-init", "info", f"skipped: {why}", skipped=True,
                        figures={"kept": float(len(keep))})
            return
        self.applied = applied
        counts = Counter(applied.values())
        summary = ", ".join(f"{k} {counts[k]}" for k in ("he", "xavier", "orthogonal", "lecun") if counts[k])
        self.report(trainer, "weight-init", "info",
                    f"initialised {len(applied)} weight tensor(s) by scheme ({self.scheme}): {summary}; biases zeroed "
                    "except the output layer's" + (f"; left alone: {kept}" if keep else ""),
                    figures={**{k: float(counts[k]) for k in ("he", "xavier", "orthogonal", "lecun")},
                             "kept": float(len(keep))})

    def _extra_state(self) -> dict[str, Any]:
        return {"applied": dict(self.applied)}

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        self.applied = dict(state_dict.get("applied", {}))
