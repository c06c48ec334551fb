"""Lazy package attributes (PEP 562): ``import lightning_tips`` imports neither Lightning nor a check
until a name is used. One implementation for the package and its sub-packages."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the module defining
    it; the first access imports that module and caches the value in ``namespace`` (the package's globals).

    Example:
        >>> getattr_, dir_ = lazy_exports("pkg", {"sqrt": "math"}, ns := {"__all__": ["sqrt"]})
        >>> getattr_("sqrt")(9.0), "sqrt" in ns, "sqrt" in dir_()
        (3.0, True, True)
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *namespace.get("__all__", ())})

    return __getattr__, __dir__
