"""User-facing units, parsed in one place: durations like ``"30s"``, ``"5m"``, ``"1h"`` or seconds."""

from __future__ import annotations

import re
from datetime import timedelta

from swell.core.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

Duration = float | int | str | timedelta


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
