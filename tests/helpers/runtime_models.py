"""Planted-bug models (and their healthy twins) for the run-time checks: non-finite values (T7-T9)
and gradient statistics (T8, P11, P15).

Each builder returns a plain ``nn.Module`` to wrap in :class:`tests.helpers.models.Classifier`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers.models import Classifier


# --- non-finite values -------------------------------------------------------------------------
class LogLayer(nn.Module):
    """``log(x)`` without an epsilon or a clamp: fine while ``x > 0``, NaN once ``x`` goes negative (T7)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class LogNet(nn.Module):
    """``encoder -> relu -> hidden -> log -> head``. ``hidden`` starts with small weights and a bias of
    ``bias``, so its outputs start positive and the log is finite; a learning rate far too high
    (P10) pushes some of them negative after one update, and ``log`` is the first module whose
    output is NaN (the encoder's and hidden's outputs stay finite, only huge)."""

    def __init__(self, in_features: int = 30, hidden: int = 16, num_classes: int = 2, bias: float = 5.0) -> None:
        super().__init__()
        self.encoder = nn.Linear(in_features, hidden)
        self.act = nn.ReLU()
        self.hidden = nn.Linear(hidden, hidden)
        self.log = LogLayer()
        self.head = nn.Linear(hidden, num_classes)
        with torch.no_grad():
            self.hidden.weight.mul_(1e-3)
            self.hidden.bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.log(self.hidden(self.act(self.encoder(x)))))


class _AbsWithHandWrittenBackward(torch.autograd.Function):
    """``|g|`` with the textbook-but-wrong backward ``g / |g|``: 0/0 = NaN at ``g = 0``."""

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g)
        return g.abs()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (g,) = ctx.saved_tensors
        return grad * g / g.abs()


class Gate(nn.Module):
    """Scales its input by ``1 + |gain|`` through a custom autograd function; ``gain`` starts at 0,
    where the hand-written backward gives a NaN gradient (only to ``gain``: the input's gradient is fine)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1.0 + _AbsWithHandWrittenBackward.apply(self.gain))


class GatedMLP(nn.Module):
    """``body -> gate -> head``: the planted custom-backward bug (``nonfinite-gradient`` on ``gate.gain``)."""

    def __init__(self, in_features: int = 64, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())
        self.gate = Gate()
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gate(self.body(x)))


# --- gradient statistics -------------------------------------------------------------------------
class RNNClassifierNet(nn.Module):
    """A tanh ``nn.RNN`` over long sequences, classifying from the last hidden state.

    ``recurrent_scale`` multiplies the default ``weight_hh`` (spectral radius ~0.58) — at 4 the
    radius is ~2.3 and, over 100 steps, backprop through time multiplies the gradient by it at every
    step: the gradient norm passes 1e4 at init while the loss looks ordinary (T8). With
    ``orthogonal_gain`` the recurrent matrix is orthogonal x gain instead (T11), the healthy twin.
    """

    def __init__(
        self,
        in_features: int = 8,
        hidden: int = 32,
        num_classes: int = 2,
        recurrent_scale: float = 1.0,
        orthogonal_gain: float | None = None,
    ) -> None:
        super().__init__()
        self.rnn = nn.RNN(in_features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)
        with torch.no_grad():
            if orthogonal_gain is not None:
                nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=orthogonal_gain)
            else:
                self.rnn.weight_hh_l0.mul_(recurrent_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def sequence_loaders(n: int = 128, length: int = 100, features: int = 8, batch_size: int = 32) -> DataLoader:
    """Synthetic long sequences; the label is the sign of the first step's feature sum (a long-range
    dependency). Deterministic."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, length, features, generator=g)
    y = (x[:, 0].sum(1) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def deep_mlp(
    depth: int = 10, in_features: int = 64, hidden: int = 32, num_classes: int = 10, activation: str = "sigmoid"
) -> nn.Module:
    """``depth`` hidden layers. ``"sigmoid"`` with PyTorch's default init: each layer multiplies the
    backpropagated gradient by ~0.25 x 0.58, so the first layer's gradient is ~1e-8 of the last's
    (P11, T15). ``"relu"`` with He init (T11, P5): the healthy twin."""
    act: type[nn.Module] = nn.Sigmoid if activation == "sigmoid" else nn.ReLU
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        lin = nn.Linear(width, hidden)
        if activation == "relu":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
        layers += [lin, act()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# --- LightningModules ---------------------------------------------------------------------------
class NaNAtStep(Classifier):
    """A classifier whose loss turns NaN at ``bad_step`` (on ``bad_rank`` only, if given). The step
    comes from the Trainer, so a copy of the model (no Trainer) computes a finite loss."""

    def __init__(self, net: nn.Module, bad_step: int, bad_rank: int | None = None, **kwargs: Any) -> None:
        super().__init__(net, **kwargs)
        self.bad_step = bad_step
        self.bad_rank = bad_rank

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        hit = self._trainer is not None and self.trainer.global_step == self.bad_step
        if hit and (self.bad_rank is None or self.global_rank == self.bad_rank):
            loss = loss * float("nan")
        return loss


class ManualNaN(NaNAtStep):
    """The same under manual optimization."""

    def __init__(self, net: nn.Module, bad_step: int, **kwargs: Any) -> None:
        super().__init__(net, bad_step, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        opt.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        opt.step()  # type: ignore[union-attr]
        return loss.detach()
