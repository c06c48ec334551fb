"""Argument validation for every public callback: one helper, one message shape.

Every public argument is checked at construction. A wrong *type* raises :class:`ArgumentTypeError` (a
:class:`TypeError` that is also a :class:`ValueError`), a value
of the right type outside what is allowed raises :class:`ValueError`; both name the argument, the
value received and what is allowed ("Expected patience to be an int >= 1 but got 0."). Booleans
are never accepted where a number is expected (``True`` is an ``int`` in Python), NaN never passes a
number check, and a bool argument accepts only ``True``/``False``.

Each function returns the value it checked (an ``int`` given to a float argument comes back as a
``float``), so a constructor can validate and assign in one line.

Example:
    >>> check_int("patience", 3, low=1)
    3
    >>> check_int("patience", True, low=1)
    Traceback (most recent call last):
    ...
    lightning_tips._validate.ArgumentTypeError: Expected patience to be an int >= 1 but got True (bool).
    >>> check_float("budget_s", float("nan"), low=0.0, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: Expected budget_s to be a finite number > 0 but got nan.
    >>> check_choice("mode", "avg", ("min", "max"))
    Traceback (most recent call last):
    ...
    ValueError: Expected mode to be one of 'min', 'max' but got 'avg'.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

__all__ = [
    "ArgumentTypeError",
    "check_bool",
    "check_callbacks",
    "check_choice",
    "check_float",
    "check_float_list",
    "check_int",
    "check_module_path",
    "check_str",
]

T = TypeVar("T")


class ArgumentTypeError(TypeError, ValueError):
    """A wrong-type argument: a :class:`TypeError` that is also a :class:`ValueError`, so code that caught
    the ``ValueError`` some constructors raised for a wrong type before this module existed keeps working."""


_MODULE_PATH = re.compile(r"^[A-Za-z_0-9]+(\.[A-Za-z_0-9]+)*$")


def _got(value: Any) -> str:
    return f"{value!r} (bool)" if isinstance(value, bool) else f"{value!r}"


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def _in_range(value: float, low: float | None, high: float | None, low_open: bool, high_open: bool) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    return not (high is not None and (value >= high if high_open else value > high))


def check_int(
    name: str, value: Any, *, low: int | None = None, high: int | None = None, optional: bool = False
) -> Any:
    """``value`` as an ``int`` in ``[low, high]`` (``None`` allowed when ``optional``); bools are refused."""
    if value is None and optional:
        return None
    allowed = "an int" + (f" {_range(low, high, False, False)}" if low is not None or high is not None else "")
    if optional:
        allowed += " or None"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"Expected {name} to be {allowed} but got {_got(value)}.")
    if not _in_range(value, low, high, False, False):
        raise ValueError(f"Expected {name} to be {allowed} but got {value!r}.")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    allow_inf: bool = False,
) -> Any:
    """``value`` as a ``float`` in the given range (``None`` allowed when ``optional``).

    Ints are accepted and converted; bools, strings and NaN are refused; infinities only with
    ``allow_inf``.
    """
    if value is None and optional:
        return None
    bounds = _range(low, high, low_open, high_open)
    allowed = ("a number" if allow_inf else "a finite number") + (f" {bounds}" if bounds else "")
    if optional:
        allowed += " or None"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"Expected {name} to be {allowed} but got {_got(value)}.")
    f = float(value)
    if math.isnan(f) or (math.isinf(f) and not allow_inf) or not _in_range(f, low, high, low_open, high_open):
        raise ValueError(f"Expected {name} to be {allowed} but got {value!r}.")
    return f


def check_bool(name: str, value: Any, *, optional: bool = False) -> Any:
    """``value`` if it is ``True`` or ``False`` (or ``None`` when ``optional``); anything else (``1``,
    ``"yes"``) is refused."""
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        allowed = "a bool (True or False)" + (" or None" if optional else "")
        raise ArgumentTypeError(f"Expected {name} to be {allowed} but got {_got(value)}.")
    return value


def check_choice(name: str, value: Any, choices: Iterable[T], *, optional: bool = False) -> Any:
    """``value`` if it is one of ``choices`` (or ``None`` when ``optional``)."""
    options = list(choices)
    if value is None and optional:
        return None
    allowed = ", ".join(repr(c) for c in options) + (" or None" if optional else "")
    if not isinstance(value, str | int | float) or isinstance(value, bool) or value not in options:
        error = ValueError if isinstance(value, type(options[0])) else ArgumentTypeError
        raise error(f"Expected {name} to be one of {allowed} but got {_got(value)}.")
    return value


def check_str(name: str, value: Any, *, optional: bool = False) -> Any:
    """``value`` if it is a non-empty ``str`` (or ``None`` when ``optional``)."""
    if value is None and optional:
        return None
    allowed = "a non-empty str" + (" or None" if optional else "")
    if not isinstance(value, str):
        raise ArgumentTypeError(f"Expected {name} to be {allowed} but got {_got(value)}.")
    if not value.strip():
        raise ValueError(f"Expected {name} to be {allowed} but got {value!r}.")
    return value


def check_module_path(name: str, value: Any, *, optional: bool = False) -> Any:
    """``value`` if it is a module path as ``named_modules()`` spells it (``"head"``, ``"net.3"``)."""
    check_str(name, value, optional=optional)
    if value is not None and not _MODULE_PATH.match(value):
        raise ValueError(
            f"Expected {name} to be a module path as named_modules() spells it (e.g. 'head' or 'net.3') "
            f"but got {value!r}."
        )
    return value


def check_float_list(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    optional: bool = False,
) -> Any:
    """``value`` as a non-empty list of finite floats in ``[low, high]`` (``None`` when ``optional``)."""
    if value is None and optional:
        return None
    bounds = _range(low, high, False, False)
    allowed = "a non-empty list of finite numbers" + (f" {bounds}" if bounds else "") + (" or None" if optional else "")
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise ArgumentTypeError(f"Expected {name} to be {allowed} but got {_got(value)}.")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ArgumentTypeError(f"Expected {name} to be {allowed} but got {value!r}.")
        if not math.isfinite(v) or not _in_range(float(v), low, high, False, False):
            raise ValueError(f"Expected {name} to be {allowed} but got {value!r}.")
        out.append(float(v))
    return out


def check_callbacks(name: str, value: Any, *, optional: bool = False) -> Any:
    """``value`` if it is a list (or tuple) of Lightning callbacks (or ``None`` when ``optional``)."""
    from lightning.pytorch.callbacks import Callback

    if value is None and optional:
        return None
    ok = isinstance(value, list | tuple) and all(isinstance(c, Callback) for c in value)
    if not ok:
        allowed = "a list of lightning Callbacks" + (" or None" if optional else "")
        raise ArgumentTypeError(f"Expected {name} to be {allowed} but got {_got(value)}.")
    return value
