"""Forward hooks live for one block and are always removed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_tips._hooks import forward_hooks


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.ReLU())


def test_hooks_see_outputs_of_selected_modules_and_are_removed() -> None:
    net = _net()
    seen: dict[str, torch.Tensor] = {}
    with forward_hooks(net, lambda n, m: isinstance(m, nn.ReLU), lambda n, m, out: seen.__setitem__(n, out)) as names:
        y = net(torch.randn(5, 4))
    assert names == ["1", "3"] and set(seen) == {"1", "3"}
    assert torch.equal(seen["3"], y)
    assert all(not m._forward_hooks for m in net.modules())


def test_hooks_are_removed_when_the_block_raises() -> None:
    net = _net()
    with pytest.raises(RuntimeError, match="boom"), forward_hooks(net, lambda n, m: True, lambda n, m, out: None):
        assert net[0]._forward_hooks
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in net.modules())
