"""User-facing units and numbers, checked in one place: durations (``"30s"``, ``"5m"``), rates
(``"100/s"``), whole numbers and plain numbers. Every number a user gives is checked when it is
declared, so a bad one fails there, with its name, rather than later in a loop that needs it."""

from __future__ import annotations

import math
import operator
import re
from datetime import timedelta
from typing import SupportsIndex

from swell.core.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

Duration = float | int | str | timedelta
Rate = float | int | str

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(ms|s|m|h|d|sec|second|min|minute|hour|day))?\s*$")
_RATE_UNITS = {"sec": "s", "second": "s", "min": "m", "minute": "m", "hour": "h", "day": "d"}

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3,
               "gib": 1024**3}

Size = int | str

MAX_DURATION_S = 100 * 365 * 86400.0
"""The longest duration taken (100 years): longer ones overflow what backends store (NATS keeps
durations in int64 nanoseconds)."""
MAX_COUNT = 2**31 - 1
"""The largest count (receives, attempts, units...) taken: what every backend stores."""


def seconds(value: Duration, *, name: str = "duration", positive: bool = False) -> float:
    """Seconds from a number of seconds, a ``timedelta`` or a string such as ``"250ms"``, ``"5m"``:
    finite, not negative (``positive``: above zero), at most 100 years."""
    if isinstance(value, timedelta):
        out = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{name} must be a duration (like 30, '250ms', '30s', '5m'), not {value!r}")
    elif isinstance(value, int | float):
        out = _float(value)
    else:
        m = _DURATION.match(value)
        if m is None:
            raise ConfigError(f"{name} {value!r} is not a duration (like 30, '250ms', '30s', '5m')")
        out = float(m.group(1)) * _UNITS[m.group(2)]
    if math.isnan(out) or out < 0 or (positive and out == 0):
        raise ConfigError(f"{name} must be {'above zero' if positive else 'zero or more'}, "
                          f"got {value!r}")
    if out > MAX_DURATION_S:
        raise ConfigError(f"{name} must be at most 100 years ({MAX_DURATION_S:,.0f} s), got {value!r}")
    return out


def per_second(value: Rate, *, name: str = "rate") -> float:
    """Events per second from a number or a string such as ``"100/s"``, ``"6000/m"``, ``"5/h"``:
    finite and above zero."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{name} must be a rate (like 100, '100/s', '6000/m'), not {value!r}")
    if isinstance(value, int | float):
        out = _float(value)
    else:
        m = _RATE.match(value)
        if m is None:
            raise ConfigError(f"{name} {value!r} is not a rate (like 100, '100/s', '6000/m')")
        unit = m.group(2) or "s"
        out = float(m.group(1)) / _UNITS[_RATE_UNITS.get(unit, unit)]
    if not math.isfinite(out) or out <= 0:
        raise ConfigError(f"{name} must be a finite rate above zero, got {value!r}")
    return out


def whole(value: object, *, name: str, low: int = 0, high: int = MAX_COUNT) -> int:
    """``value`` as an ``int`` if it is a whole number (an ``int`` or anything with
    ``__index__``, such as a numpy integer; not a ``bool`` or a float) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise ConfigError(f"{name} must be a whole number, not {value!r}")
    out = operator.index(value)
    if not low <= out <= high:
        top = "" if high == MAX_COUNT else f" and at most {high:,}"
        raise ConfigError(f"{name} must be at least {low:,}{top}, got {out:,}")
    return out


def number(value: object, *, name: str, low: float = 0.0, high: float = math.inf,
           above: bool = False) -> float:
    """``value`` as a float if it is a finite number (not a ``bool``) from ``low`` (``above``:
    over ``low``) to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, not {value!r}")
    out = _float(value)
    if not math.isfinite(out) or out < low or (above and out == low) or out > high:
        bound = f"{'above' if above else 'at least'} {low:g}"
        if math.isfinite(high):
            bound += f" and at most {high:g}"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")
    return out


def _float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int too large for a float: as good as infinite
        return math.inf if value > 0 else -math.inf


def byte_size(value: Size, *, name: str = "size") -> int:
    """Bytes from a number or a string such as ``"256KiB"``, ``"1MiB"``, ``"64kB"``: above zero."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{name} must be a size (like 65536, '256KiB', '1MiB'), not {value!r}")
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m is None:
            raise ConfigError(f"{name} {value!r} is not a size (like 65536, '256KiB', '1MiB')")
        value = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    if value <= 0:
        raise ConfigError(f"{name} must be above zero, got {value!r}")
    return value
