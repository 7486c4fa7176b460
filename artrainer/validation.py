"""Argument checks with one vocabulary: the same mistake gets the same exception and wording.

A wrong *type* is a :class:`TypeError`, a value of the right type outside what is allowed
is a :class:`ValueError`; both read ``"<name> must be <allowed>; got <value> (<type>)"``.
``bool`` is never accepted as a number (``True`` as a step count is always a mistake),
and numpy scalars are accepted wherever Python numbers are.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def _bounds(kind: str, minimum, maximum, min_open: bool, max_open: bool) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} in {'(' if min_open else '['}{minimum}, {maximum}{')' if max_open else ']'}"
    if minimum is not None:
        return f"{kind} {'>' if min_open else '>='} {minimum}"
    if maximum is not None:
        return f"{kind} {'<' if max_open else '<='} {maximum}"
    return kind


def _describe(kind, minimum, maximum, min_open, max_open, optional, why, allowed) -> str:
    text = allowed or _bounds(kind, minimum, maximum, min_open, max_open)
    if why:
        text += f" ({why})"
    return text + (" or None" if optional else "")


def _got(value: Any) -> str:
    return f"{reprlib.repr(value)} ({type(value).__name__})"


def _in_bounds(value, minimum, maximum, min_open, max_open) -> bool:
    if minimum is not None and (value <= minimum if min_open else value < minimum):
        return False
    return not (maximum is not None and (value >= maximum if max_open else value > maximum))


def require_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
                optional: bool = False, why: str = "", allowed: str = "",
                ok: Callable[[int], bool] = lambda value: True) -> int | None:
    """``value`` as a Python int within the bounds (``None`` passes when ``optional``).

    ``why`` explains the bound in the message; ``allowed`` and ``ok`` replace the bounds'
    wording and test for rules bounds cannot say.
    """
    if value is None and optional:
        return None
    allowed = _describe("an int", minimum, maximum, False, False, optional, why, allowed)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {allowed}; got {_got(value)}")
    value = int(value)
    if not (_in_bounds(value, minimum, maximum, False, False) and ok(value)):
        raise ValueError(f"{name} must be {allowed}; got {_got(value)}")
    return value


def require_real(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                 min_open: bool = False, max_open: bool = False, optional: bool = False, why: str = "",
                 allowed: str = "", ok: Callable[[float], bool] = lambda value: True) -> float | None:
    """``value`` as a finite Python float within the bounds (ints are accepted; bools are not)."""
    if value is None and optional:
        return None
    allowed = _describe("a number", minimum, maximum, min_open, max_open, optional, why, allowed)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}; got {_got(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range, e.g. 10**400
        raise ValueError(f"{name} must be {allowed}; got {_got(value)}, beyond the float range") from None
    if not (math.isfinite(number) and _in_bounds(number, minimum, maximum, min_open, max_open) and ok(number)):
        raise ValueError(f"{name} must be {allowed}; got {_got(value)}")
    return number


def require_bool(name: str, value: Any) -> bool:
    """``value`` as a Python bool: ``True``/``False`` (or a numpy bool), never ``0``/``1`` or a string."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False); got {_got(value)}")
    return bool(value)


def require_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices`` (a ValueError listing them, else)."""
    choices = tuple(choices)
    try:
        known = value in choices
    except (TypeError, ValueError):  # a value that cannot be compared, e.g. an array
        known = False
    if not known:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{name} must be one of {listed}; got {_got(value)}")
    return value
