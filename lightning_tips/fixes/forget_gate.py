"""Forget-gate bias (T17): start every LSTM remembering.

An LSTM's gates are laid out ``[input | forget | cell | output]`` along the ``4H`` bias vectors,
and the forget gate sees ``bias_ih + bias_hh``. With the default init the forget gate starts
half-closed (sigmoid(~0) = 0.5), so the memory decays by half per step and long-range gradients
vanish; a forget bias of 1 (or more) keeps the cell state flowing from the start (Gers et al.
2000; Jozefowicz et al. 2015). The same layout holds with ``proj_size > 0`` (only ``weight_hh``
shrinks to ``(4H, P)``), for every layer and both directions (``*_reverse``).

Three ways to use it: :func:`set_forget_gate_bias_` (in place, on any module),
:class:`ForgetGateBiasMixin` (``self.set_forget_gate_bias(1.0)`` in a LightningModule's
``__init__``), and the :class:`ForgetGateBias` callback (at fit start).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_tips._callback import TipCallback
from lightning_tips._validate import check_float

if TYPE_CHECKING:  # pragma: no cover
    import lightning.pytorch as pl

__all__ = ["ForgetGateBias", "ForgetGateBiasMixin", "lstm_modules", "set_forget_gate_bias_"]


def lstm_modules(module: nn.Module) -> list[tuple[str, nn.LSTM | nn.LSTMCell]]:
    """Every ``nn.LSTM`` / ``nn.LSTMCell`` in ``module`` (itself included), as ``(name, module)``."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.LSTM, nn.LSTMCell))]


def _bias_pairs(lstm: nn.LSTM | nn.LSTMCell) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(suffix, bias_ih, bias_hh)`` per layer and direction; empty when the module has no bias."""
    if isinstance(lstm, nn.LSTMCell):
        return [("", lstm.bias_ih, lstm.bias_hh)] if lstm.bias else []
    if not lstm.bias:
        return []
    suffixes = [f"_l{k}{d}" for k in range(lstm.num_layers) for d in ("", "_reverse")[: 1 + lstm.bidirectional]]
    return [(s, getattr(lstm, f"bias_ih{s}"), getattr(lstm, f"bias_hh{s}")) for s in suffixes]


def set_forget_gate_bias_(module: nn.Module, value: float = 1.0) -> int:
    """Set ``bias_ih[H:2H] + bias_hh[H:2H] = value`` (forget gate) on every LSTM layer/direction; return how many (T17).

    ``bias_ih``'s forget slice gets ``value`` and ``bias_hh``'s gets 0; the other gates are left as
    they are. LSTMs built with ``bias=False`` have no bias to set and are not counted.

    Example:
        >>> lstm = nn.LSTM(4, 3, num_layers=2, bidirectional=True)
        >>> set_forget_gate_bias_(lstm, 1.0)
        4
        >>> (lstm.bias_ih_l1_reverse[3:6] + lstm.bias_hh_l1_reverse[3:6]).tolist()
        [1.0, 1.0, 1.0]
    """
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"Expected value to be a finite number but got {value!r}.")
    count = 0
    with torch.no_grad():
        for _, lstm in lstm_modules(module):
            h = lstm.hidden_size
            for _, b_ih, b_hh in _bias_pairs(lstm):
                b_ih[h : 2 * h].fill_(value)
                b_hh[h : 2 * h].zero_()
                count += 1
    return count


class ForgetGateBiasMixin:
    """A LightningModule mixin: ``self.set_forget_gate_bias(1.0)`` sets every LSTM's forget-gate bias (T17).

    Call it in ``__init__`` after building the LSTMs: a run resumed from a checkpoint then loads
    the checkpoint's biases over it, so the fix never re-applies on resume.

    Example:
        >>> import lightning.pytorch as pl
        >>> class Net(ForgetGateBiasMixin, pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.rnn = nn.LSTM(8, 16, batch_first=True)
        ...         self.head = nn.Linear(16, 10)
        ...         self.set_forget_gate_bias(1.0)
        >>> net = Net()
        >>> float((net.rnn.bias_ih_l0[16:32] + net.rnn.bias_hh_l0[16:32]).detach().min())
        1.0
    """

    def set_forget_gate_bias(self, value: float = 1.0) -> int:
        """Set the forget-gate bias of every LSTM of this module; return the number of gates set."""
        assert isinstance(self, nn.Module)
        return set_forget_gate_bias_(self, value)


class ForgetGateBias(TipCallback):
    """Fix T17: at fit start, set the forget-gate bias of every ``nn.LSTM``/``nn.LSTMCell`` to ``value``.

    Applied in ``on_fit_start`` (every layer and direction, ``proj_size`` LSTMs included) unless the
    fit resumes from a checkpoint (``trainer.ckpt_path`` set). Deterministic, so every DDP rank sets
    the same values. With :class:`~lightning_tips.fixes.init.WeightInit` (which zeroes biases), put
    ``WeightInit`` first in the callbacks list.

    Reports ``forget-gate-bias`` (info) with the number of modules and gates (layer x direction)
    set; an ``info`` finding of the same code when the model has no LSTM, or for LSTMs built with
    ``bias=False`` (nothing to set).

    Args:
        value: the forget gate's total bias ``bias_ih + bias_hh`` (1.0 by T17; more for longer memory).

    Example:
        >>> ForgetGateBias(value=2.0).value
        2.0
    """

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.value = check_float("value", value)
        self.gates_set = 0  # how many gates the fix set (kept in the checkpoint)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(value=self.value)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            return  # resuming: the checkpoint's biases are the trained ones
        lstms = lstm_modules(pl_module)
        if not lstms:
            self.report(trainer, "forget-gate-bias", "info",
                        f"skipped: {type(pl_module).__name__} has no nn.LSTM/nn.LSTMCell, no forget gate to set",
                        skipped=True)
            return
        without_bias = [n for n, m in lstms if not m.bias]
        if without_bias:
            names = ", ".join(f"`{n}`" for n in without_bias)
            self.report(trainer, "forget-gate-bias", "info",
                        f"skipped {names}: built with bias=False, so there is no forget-gate bias to set "
                        "(build the LSTM with bias=True to use a forget-gate bias of 1, T17)",
                        module=without_bias[0], figures={"modules_skipped": len(without_bias)}, skipped=True)
        frozen = [n for n, m in lstms if m.bias and any(not p.requires_grad for p in m.parameters())]
        if frozen:  # a frozen (pretrained) LSTM is never changed
            names = ", ".join(f"`{n}`" for n in frozen)
            self.report(trainer, "forget-gate-bias", "info",
                        f"left {names} alone: frozen (requires_grad=False), its biases are kept as they are",
                        module=frozen[0], figures={"modules_frozen": len(frozen)}, skipped=True)
        with_bias = [(n, m) for n, m in lstms if m.bias and n not in frozen]
        if not with_bias:
            return
        self.gates_set = sum(set_forget_gate_bias_(m, self.value) for _, m in with_bias)
        names = ", ".join(f"`{n}`" for n, _ in with_bias)
        self.report(trainer, "forget-gate-bias", "info",
                    f"set the forget-gate bias (bias_ih + bias_hh on [H:2H]) to {self.value:g} on {self.gates_set} "
                    f"gate(s) (layer x direction) of {len(with_bias)} LSTM module(s): {names}",
                    module=with_bias[0][0], figures={"modules": len(with_bias), "gates": self.gates_set,
                                                     "value": self.value})

    def _extra_state(self) -> dict[str, Any]:
        return {"gates_set": self.gates_set}

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        self.gates_set = int(state_dict.get("gates_set", 0))
