"""When a schedule fires: a cron expression in a time zone (through cronsim) or a fixed interval
aligned to the epoch, as instants in epoch seconds; and which missed fire times to catch up. Pure:
no broker, no clock of its own (see ``swell.triggers.schedule`` for the DST rules, which these
implement)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from swell.core.config import Duration, seconds
from swell.core.errors import AppError, ConfigError, MissingDependency

__all__ = ["MISSED", "Cron", "Every", "Spec", "due", "iso", "spec_of", "zone"]

MISSED = ("skip", "latest", "all")


class Spec(Protocol):
    """When a schedule fires: instants, as epoch seconds."""

    @property
    def zone(self) -> tzinfo:
        """The zone its fire times are read in (and shown in)."""

    def next_after(self, t: float) -> float:
        """The first fire time strictly after ``t``."""

    def fires_between(self, after: float, upto: float, limit: int) -> list[float]:
        """The latest ``limit`` fire times in ``(after, upto]``, oldest first."""

    def describe(self) -> dict[str, str]:
        """The spec for ``detail()`` and ``swell schedules``."""


def zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise AppError(f"unknown time zone {tz!r} (an IANA name such as 'UTC' or "
                       f"'Europe/Paris')") from exc


_ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
            "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
            "@hourly": "0 * * * *"}


class Cron:
    """A cron expression (cronsim's syntax: five fields, ``L`` and ``#`` allowed, or an alias such
    as ``@daily``) read in the time zone ``tz``."""

    def __init__(self, expr: str, tz: str = "UTC") -> None:
        try:
            from cronsim import CronSim, CronSimError
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingDependency("cronsim", "cron") from exc
        if not isinstance(expr, str):
            raise AppError(f"a cron expression is a string, not {expr!r}")
        self._sim, self.expr, self.tz = CronSim, expr, tz
        self._expr = _ALIASES.get(expr.strip().lower(), expr)
        self.zone = zone(tz)
        try:
            CronSim(self._expr, datetime.now(self.zone))
        except CronSimError as exc:
            raise AppError(f"bad cron expression {expr!r}: {exc}") from exc

    def next_after(self, t: float) -> float:
        it = self._sim(self._expr, datetime.fromtimestamp(t, self.zone))
        while True:
            # a start inside a repeated hour's second pass can yield the first pass's instant
            out = next(it).timestamp()
            if out > t:
                return out

    def fires_between(self, after: float, upto: float, limit: int) -> list[float]:
        # back from upto: with microseconds set, cronsim's first step back is upto itself
        start = datetime.fromtimestamp(math.floor(upto), self.zone) + timedelta(microseconds=1)
        out: list[float] = []
        for dt in self._sim(self._expr, start, reverse=True):
            t = dt.timestamp()
            if t <= after or len(out) >= limit:
                break
            if t <= upto and (not out or t < out[-1]):
                out.append(t)
        return out[::-1]

    def describe(self) -> dict[str, str]:
        return {"cron": self.expr, "tz": self.tz}

    def __repr__(self) -> str:
        return f"Cron({self.expr!r}, tz={self.tz!r})"


class Every:
    """A fixed interval, fire times aligned to the epoch; ``jitter`` (less than the interval)
    delays when each node sends, never the fire time."""

    zone: tzinfo = UTC

    def __init__(self, interval: Duration, jitter: Duration = 0) -> None:
        try:
            self.interval_s = seconds(interval, name="every", positive=True)
            self.jitter_s = seconds(jitter, name="jitter")
        except ConfigError as exc:
            raise AppError(str(exc)) from exc
        if self.jitter_s >= self.interval_s:
            raise AppError(f"jitter ({self.jitter_s:g} s) must be less than the interval "
                           f"({self.interval_s:g} s)")

    def next_after(self, t: float) -> float:
        k = math.floor(t / self.interval_s) + 1
        while k * self.interval_s <= t:  # float rounding
            k += 1
        return k * self.interval_s

    def fires_between(self, after: float, upto: float, limit: int) -> list[float]:
        hi = math.floor(upto / self.interval_s)
        lo = max(math.floor(after / self.interval_s) + 1, hi - limit + 1)
        return [k * self.interval_s for k in range(lo, hi + 1)
                if after < k * self.interval_s <= upto]

    def describe(self) -> dict[str, str]:
        return {"every": f"{self.interval_s:g}s", "tz": "UTC"}

    def __repr__(self) -> str:
        return f"Every({self.interval_s:g})"


def due(spec: Spec, last_fire: float | None, now: float, missed: str,
        max_catch_up: int) -> list[float]:
    """The fire times after ``last_fire`` up to ``now`` to fire now, oldest first: none for
    ``"skip"`` (and with no last fire), the latest for ``"latest"``, the ``max_catch_up`` latest
    for ``"all"``."""
    if missed not in MISSED:
        raise AppError(f"missed must be one of {', '.join(MISSED)}, not {missed!r}")
    if last_fire is None or missed == "skip" or now <= last_fire:
        return []
    return spec.fires_between(last_fire, now, 1 if missed == "latest" else max_catch_up)



def iso(t: float, zone: tzinfo) -> str:
    return datetime.fromtimestamp(t, zone).isoformat()



def spec_of(cron: str | None, every: Duration | None, tz: str, jitter: Duration) -> Spec:
    if (cron is None) == (every is None):
        raise AppError("give cron= or every=, exactly one")
    zone(tz)
    if cron is not None:
        return Cron(cron, tz)
    assert every is not None
    return Every(every, jitter)


