"""Forward hooks for one sampled step, always removed (tips R4.12, T7).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_tips._hooks import forward_hooks
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    >>> seen = {}
    >>> with forward_hooks(net, lambda name, m: isinstance(m, nn.ReLU),
    ...                    lambda name, m, out: seen.setdefault(name, out.shape)):
    ...     _ = net(torch.zeros(2, 3))
    >>> seen, len(net[1]._forward_hooks)
    ({'1': torch.Size([2, 4])}, 0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["forward_hooks"]


@contextmanager
def forward_hooks(
    model: nn.Module,
    select: Callable[[str, nn.Module], bool],
    fn: Callable[[str, nn.Module, Any], None],
) -> Iterator[list[str]]:
    """Attach ``fn(name, module, output)`` as a forward hook on every module ``select`` accepts.

    The hooks live only inside the ``with`` block and are removed even when it raises. Yields the
    names of the hooked modules (paths as in ``model.named_modules()``).
    """
    handles: list[RemovableHandle] = []
    names: list[str] = []
    try:
        for name, module in model.named_modules():
            if select(name, module):
                names.append(name)
                handles.append(
                    module.register_forward_hook(lambda m, _inp, out, _name=name: fn(_name, m, out))
                )
        yield names
    finally:
        for h in handles:
            h.remove()
