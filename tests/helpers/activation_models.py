"""Planted-bug models (and their healthy twins) for the activation checks and the filter view."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers.models import mlp


def dead_relu_mlp(bias: float = -10.0) -> nn.Module:
    """``mlp`` on flat digits whose first hidden Linear has a very negative bias: its ReLU (``2``) never fires."""
    net = mlp(in_features=64, hidden=32, depth=2)
    with torch.no_grad():
        net[1].bias.fill_(bias)
    return net


def deep_stack(activation: type[nn.Module] = nn.Sigmoid, gain: float = 10.0, depth: int = 6, width: int = 32) -> nn.Module:
    """``depth`` hidden layers with ``activation``, weights drawn from N(0, gain^2 / fan_in).

    ``gain=10`` with sigmoids: pre-activations have std ~10 (far outside [-4, 4], T15), so most
    outputs sit in the flat tails — the planted bug. ``activation=nn.ReLU, gain=sqrt(2)`` (He init)
    is the healthy twin.
    """
    net = mlp(in_features=64, hidden=width, depth=depth, activation=activation)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, gain / math.sqrt(m.in_features))
    return net


class FunctionalReLUNet(nn.Module):
    """An MLP with ``F.relu``: no activation modules to hook."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class SharedReLUNet(nn.Module):
    """One ``nn.ReLU`` module applied after two layers of different widths."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 16)
        self.out = nn.Linear(16, 10)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc2(self.act(self.fc1(x.flatten(1))))))


class TupleReLU(nn.ReLU):
    """A ReLU subclass returning ``(y, mask)``: a non-tensor output the hook must skip."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        y = super().forward(x)
        return y, y > 0


class TupleReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.act = TupleReLU()
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.act(self.fc1(x.flatten(1)))
        return self.out(y)


def image_mlp(hidden: int = 16) -> nn.Module:
    """Flatten + Linear on (N, 1, 8, 8) digits: the first Linear's rows are 8x8 filters."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def rgb_cnn(channels: int = 4) -> nn.Module:
    """A CNN for (N, 3, H, W) inputs: 3-channel filters drawn as RGB."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(4 * channels, 10),
    )
