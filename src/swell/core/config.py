"""User-facing units, parsed in one place: durations (``"30s"``, ``"5m"``) and rates (``"100/s"``)."""

from __future__ import annotations

import re
from datetime import timedelta

from swell.core.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

Duration = float | int | str | timedelta
Rate = float | int | str

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(ms|s|m|h|d|sec|second|min|minute|hour|day))?\s*$")
_RATE_UNITS = {"sec": "s", "second": "s", "min": "m", "minute": "m", "hour": "h", "day": "d"}


def seconds(value: Duration, *, name: str = "duration") -> float:
    """Seconds from a number of seconds, a ``timedelta`` or a string such as ``"250ms"``, ``"5m"``."""
    if isinstance(value, timedelta):
        out = value.total_seconds()
    elif isinstance(value, bool):
        raise ConfigError(f"{name} must be a duration, not {value!r}")
    elif isinstance(value, int | float):
        out = float(value)
    else:
        m = _DURATION.match(str(value))
        if m is None:
            raise ConfigError(f"{name} {value!r} is not a duration (like 30, '250ms', '30s', '5m')")
        out = float(m.group(1)) * _UNITS[m.group(2)]
    if out < 0:
        raise ConfigError(f"{name} must not be negative, got {value!r}")
    return out


def per_second(value: Rate, *, name: str = "rate") -> float:
    """Events per second from a number or a string such as ``"100/s"``, ``"6000/m"``, ``"5/h"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a rate, not {value!r}")
    if isinstance(value, int | float):
        out = float(value)
    else:
        m = _RATE.match(str(value))
        if m is None:
            raise ConfigError(f"{name} {value!r} is not a rate (like 100, '100/s', '6000/m')")
        unit = m.group(2) or "s"
        out = float(m.group(1)) / _UNITS[_RATE_UNITS.get(unit, unit)]
    if out <= 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return out
