"""Service level objectives and the burn-rate alerts of the Google SRE workbook ("Alerting on
SLOs", multiwindow, multi-burn-rate), as pure arithmetic: counts in, burn rates, budget left and
alerts out. The counting, the broker's record of the counts and the logs are the runtime's
(``swell.runtime.slo``); the Prometheus rules are built from the same table (``ALERTS``).

A burn rate is how fast the error budget goes: the error ratio over a window divided by the
budget (``1 - target``). At 1 the budget lasts exactly the SLO's window; at 14.4 a 30-day budget's
2 % goes in an hour. An alert fires when both windows of its pair burn faster than its factor: the
long window says the burn is big enough to matter, the short one that it is still going on (so
the alert clears minutes after the fault ends, not an hour later).

=========  ============  ============  ======  ===================================
severity   long window   short window  factor  budget spent when it fires (30 d)
=========  ============  ============  ======  ===================================
page       1 h           5 min         14.4    2 % in an hour
page       6 h           30 min        6       5 % in six hours
ticket     3 d           6 h           1       10 % in three days
=========  ============  ============  ======  ===================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from swell.core.config import Duration, number, seconds
from swell.core.errors import ConfigError

__all__ = ["ALERTS", "SLO", "Alert", "MeasureFrom", "ObjectiveName", "ObjectiveReport", "Tally",
           "assess", "burn_rate", "window_label"]

MeasureFrom = Literal["enqueue", "event_time"]
ObjectiveName = Literal["latency", "success"]

MINUTE_S = 60.0
HOUR_S = 3600.0
DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert of the table: it fires when the burn rate over both windows exceeds ``factor``."""

    severity: Literal["page", "ticket"]
    long_s: float
    short_s: float
    factor: float

    @property
    def name(self) -> str:
        """``"1h/5m"``: its windows, which tell the alerts apart (two of them page)."""
        return f"{window_label(self.long_s)}/{window_label(self.short_s)}"


ALERTS: tuple[Alert, ...] = (
    Alert("page", HOUR_S, 5 * MINUTE_S, 14.4),
    Alert("page", 6 * HOUR_S, 30 * MINUTE_S, 6.0),
    Alert("ticket", 3 * DAY_S, 6 * HOUR_S, 1.0),
)
#: every window an alert reads, shortest first
WINDOWS_S: tuple[float, ...] = tuple(sorted({w for a in ALERTS for w in (a.long_s, a.short_s)}))


def window_label(s: float) -> str:
    """``300`` -> ``"5m"``, ``3600`` -> ``"1h"``, ``259200`` -> ``"3d"`` (Prometheus's units)."""
    for unit, size in (("d", DAY_S), ("h", HOUR_S), ("m", MINUTE_S)):
        if s >= size and s % size == 0:
            return f"{int(s // size)}{unit}"
    return f"{s:g}s"


class SLO:
    """What a function promises, over a rolling ``window`` (28 days by default):

    - ``latency`` and ``target``: at least ``target`` of its successful events are done within
      ``latency`` of their enqueue (``measure_from="event_time"``: of their CloudEvents ``time``),
      to the end of the attempt that succeeded;
    - ``success``: at least this fraction of its finished events are acked, not dead-lettered.

    Either objective may be ``None`` (not both). Checked here: a bad value is a ``ConfigError``
    naming it, when the app is declared.
    """

    __slots__ = ("latency_s", "measure_from", "success", "target", "window_s")

    def __init__(self, latency: Duration | None = "2s", target: float = 0.99,
                 success: float | None = 0.999, window: Duration = "28d",
                 measure_from: MeasureFrom = "enqueue") -> None:
        self.latency_s = None if latency is None else seconds(latency, name="SLO latency",
                                                              positive=True)
        self.target = _fraction(target, "SLO target")
        self.success = None if success is None else _fraction(success, "SLO success")
        self.window_s = seconds(window, name="SLO window", positive=True)
        if self.window_s < HOUR_S:
            raise ConfigError(f"SLO window must be an hour or more (a budget's window, like "
                              f"'28d'), got {window!r}")
        if measure_from not in ("enqueue", "event_time"):
            raise ConfigError(f"SLO measure_from must be 'enqueue' or 'event_time', not "
                              f"{measure_from!r}")
        self.measure_from: MeasureFrom = measure_from
        if self.latency_s is None and self.success is None:
            raise ConfigError("SLO latency and success are both None: give at least one objective")

    def objectives(self) -> tuple[tuple[ObjectiveName, float], ...]:
        """Each objective declared, with its target."""
        out: list[tuple[ObjectiveName, float]] = []
        if self.latency_s is not None:
            out.append(("latency", self.target))
        if self.success is not None:
            out.append(("success", self.success))
        return tuple(out)

    def _key(self) -> tuple[object, ...]:
        return (self.latency_s, self.target, self.success, self.window_s, self.measure_from)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SLO) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        latency = None if self.latency_s is None else f"{self.latency_s:g}s"
        return (f"SLO(latency={latency!r}, target={self.target:g}, success={self.success!r}, "
                f"window={window_label(self.window_s)!r}, measure_from={self.measure_from!r})")


def _fraction(value: object, name: str) -> float:
    out = number(value, name=name, above=True, high=1.0)
    if out == 1.0:
        raise ConfigError(f"{name} must be below 1 (a target of 1 leaves no error budget), "
                          f"got {value!r}")
    return out


class Tally(NamedTuple):
    """Events counted good and bad for one objective over a window."""

    good: int = 0
    bad: int = 0

    @property
    def total(self) -> int:
        return self.good + self.bad


def burn_rate(tally: Tally, target: float) -> float:
    """The error ratio over the budget (``1 - target``); 0 with nothing counted."""
    if tally.total == 0:
        return 0.0
    return (tally.bad / tally.total) / (1.0 - target)


@dataclass(frozen=True, slots=True)
class ObjectiveReport:
    """One objective of a function, at one instant."""

    objective: ObjectiveName
    target: float
    window: Tally
    """Over the SLO's window."""
    burn_rates: tuple[tuple[str, float], ...]
    """Per alert window (``"5m"``, ..., ``"3d"``), shortest first."""
    firing: tuple[Alert, ...]

    @property
    def sli(self) -> float | None:
        """Good over all, over the SLO's window (``None``: nothing counted)."""
        return None if self.window.total == 0 else self.window.good / self.window.total

    @property
    def budget_left(self) -> float:
        """The part of the window's error budget not spent: 1 untouched, 0 spent, below 0 over."""
        return 1.0 - burn_rate(self.window, self.target)


def assess(objective: ObjectiveName, target: float, window_s: float,
           over: Callable[[float], Tally]) -> ObjectiveReport:
    """The report of one objective from ``over(seconds)``: its tally over the last ``seconds``."""
    rates = {w: burn_rate(over(w), target) for w in WINDOWS_S}
    firing = tuple(a for a in ALERTS
                   if rates[a.long_s] > a.factor and rates[a.short_s] > a.factor)
    return ObjectiveReport(objective, target, over(window_s),
                           tuple((window_label(w), r) for w, r in rates.items()), firing)

