"""Forward hooks and functional-call probes for one sampled step, always removed (tips R4.12, T7).

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
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

__all__ = ["forward_hooks", "functional_calls"]


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


class _CallProbe(TorchFunctionMode):
    """Reports every call of a watched torch function with the innermost enclosing module's name."""

    def __init__(self, watched: dict[Any, str], stack: list[str],
                 fn: Callable[[str, str, tuple[Any, ...], Any], None]) -> None:
        super().__init__()
        self.watched, self.stack, self.fn = watched, stack, fn

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = self.watched.get(func)
        if name is not None and self.stack:
            self.fn(self.stack[-1], name, args, out)
        return out


@contextmanager
def functional_calls(
    model: nn.Module,
    watched: dict[Any, str],
    fn: Callable[[str, str, tuple[Any, ...], Any], None],
) -> Iterator[None]:
    """Inside the block, call ``fn(module name, function name, args, output)`` for every call of a
    function in ``watched`` (``{torch function: name}``, e.g. ``{F.gelu: "gelu"}``) made inside the
    forward of one of ``model``'s modules (the innermost one; calls outside any of them, e.g. in the
    loss, are not reported). A ``TorchFunctionMode`` plus forward pre/post hooks on ``model``'s
    modules that keep the stack of enclosing modules; all removed on exit.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = nn.Linear(3, 4)
        ...     def forward(self, x):
        ...         return F.gelu(self.fc(x))
        >>> net, seen = Net(), []
        >>> with functional_calls(net, {F.gelu: "gelu"}, lambda m, f, a, out: seen.append((m, f, tuple(out.shape)))):
        ...     _ = net(torch.zeros(2, 3))
        >>> seen, len(net._forward_pre_hooks)
        ([('', 'gelu', (2, 4))], 0)
    """
    stack: list[str] = []
    handles: list[RemovableHandle] = []

    def push(name: str) -> Callable[..., None]:
        return lambda _m, _inp: stack.append(name)

    def pop(_m: nn.Module, _inp: Any, _out: Any) -> None:
        if stack:
            stack.pop()

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(push(name)))
            handles.append(module.register_forward_hook(pop, always_call=True))
        with _CallProbe(watched, stack, fn):
            yield
    finally:
        for h in handles:
            h.remove()
