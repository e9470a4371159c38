"""The cost model: what a function's run costs, priced from what the runtime measured it ran.

A function is billed, like a serverless platform bills, for

* the seconds its units were held: an inline unit (an async slot in a node's process) at a flat
  price per unit-second; a process instance (a worker process) by its memory, per GiB-second,
  from the moment it is asked for to the moment it is reaped, idle or busy;
* each invocation (a handler attempt that ended);
* each broker operation on its events: a receive, the ack, release or dead letter that settles
  it, and each event its handler sends on.

The prices are defaults a project overrides in ``[tool.swell.cost]`` of its ``pyproject.toml``
(``prices_from``); they are there to compare workloads and to cap spend, not to match an invoice.
Everything here is pure: numbers in, numbers out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import msgspec

from swell.core.config import byte_size, number
from swell.core.errors import ConfigError

__all__ = ["GIB", "OPS_PER_EVENT", "Budget", "BudgetCap", "Cost", "Prices", "per_hour",
           "prices_from"]

GIB = 1024**3
OPS_PER_EVENT = 2
"""Broker operations an event costs at the least: its receive, and the ack (or dead letter) that
settles it. The budget's projection counts what the function's events measured, never fewer."""

Budget = float | int | str
"""A spend per hour: a number of dollars per hour, or ``"$2/h"``, ``"2/h"``, ``"$50/d"``."""

_BUDGET = re.compile(r"^\s*\$?\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*([a-z]+))?\s*$", re.IGNORECASE)
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0, "h": 3600.0,
        "hour": 3600.0, "d": 86400.0, "day": 86400.0, "w": 604800.0, "week": 604800.0,
        "mo": 2592000.0, "month": 2592000.0}


def per_hour(value: Budget, *, name: str = "budget") -> float:
    """Dollars per hour from a number (dollars per hour) or a string such as ``"$2/h"``,
    ``"2/h"``, ``"$50/d"``, ``"$300/month"`` (30 days): finite and above zero."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{name} must be a spend per hour (like 2, '$2/h', '$50/d'), "
                          f"not {value!r}")
    if isinstance(value, str):
        m = _BUDGET.match(value)
        unit = (m.group(2) or "h").lower() if m else ""
        if m is None or unit not in _PER:
            raise ConfigError(f"{name} {value!r} is not a spend (like '$2/h', '2/h', '$50/d'; "
                              "per s, min, h, d, week or month)")
        return number(float(m.group(1)) * 3600.0 / _PER[unit], name=name, above=True)
    return number(value, name=name, above=True)


@dataclass(frozen=True, slots=True)
class Prices:
    """Dollars per thing a function uses. The defaults: a process instance at Lambda's x86 price
    per GB-second (a GB there is a GiB) with Lambda's smallest memory; an inline unit, a slot in
    a shared process, a tenth of that; an invocation at Lambda's price per request; a broker
    operation at SQS's price per request."""

    inline_unit_second: float = 0.0000002
    gb_second: float = 0.0000166667
    memory: int = 128 * 1024**2
    """Bytes of a process instance whose function declares no ``memory=``."""
    invocation: float = 0.0000002
    broker_operation: float = 0.0000004

    def unit_second(self, mode: str, memory: int | None = None) -> float:
        """Dollars per second one unit of a function in ``mode`` costs while it is held."""
        if mode == "process":
            return self.gb_second * (memory or self.memory) / GIB
        return self.inline_unit_second

    def per_event(self, invocations: float = 1.0, operations: float = OPS_PER_EVENT) -> float:
        """Dollars an event finished costs besides its units, at ``invocations`` and broker
        ``operations`` an event (a retry is one more invocation, a release and a receive; each
        event a handler sends on one more operation): never below one invocation and
        ``OPS_PER_EVENT`` operations, what any event costs."""
        return (max(1.0, invocations) * self.invocation
                + max(float(OPS_PER_EVENT), operations) * self.broker_operation)


def prices_from(table: Mapping[str, Any], where: str = "[tool.swell.cost]") -> Prices:
    """``Prices`` with what ``table`` (a ``[tool.swell.cost]`` table) overrides; one
    ``ConfigError`` naming the key for anything else in it or a value that is not a price."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table of prices, not {table!r}")
    known = [f.name for f in fields(Prices)]
    given: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{where} {key}"
        if key not in known:
            raise ConfigError(f"{name}: unknown key (known: {', '.join(known)})")
        if key == "memory":
            given[key] = byte_size(value, name=name)
        else:
            given[key] = number(value, name=name)
    return replace(Prices(), **given)


class Cost(msgspec.Struct, kw_only=True, frozen=True):
    """What one function ran on one node since it started, and what that cost; written in its
    status record, summed over nodes by ``swell cost``."""

    workload: str
    mode: str
    unit_s: float = 0.0
    """Unit-seconds held: inline slots, or process instances from their start to their reap."""
    invocations: int = 0
    operations: int = 0
    """Broker operations: receives, the acks, releases and dead letters that settled them, and
    the events its handlers sent."""
    events: int = 0
    """Events finished for good: acked or dead-lettered."""
    dollars: float = 0.0
    dollars_per_h: float = 0.0
    """The spend per hour at the recent rate (the last minute or so)."""
    budget_per_h: float | None = None

    def per_1000_events(self) -> float | None:
        """Dollars per 1,000 events finished, over the run (``None`` before the first)."""
        return None if self.events == 0 else self.dollars * 1000.0 / self.events

    def __add__(self, other: Cost) -> Cost:
        """Both together: one function's on two nodes (its budget is theirs together, so
        either's), or two functions' of one workload (the caller sums their budgets)."""
        return Cost(workload=self.workload, mode=self.mode if self.mode == other.mode else "mixed",
                    unit_s=self.unit_s + other.unit_s,
                    invocations=self.invocations + other.invocations,
                    operations=self.operations + other.operations,
                    events=self.events + other.events, dollars=self.dollars + other.dollars,
                    dollars_per_h=self.dollars_per_h + other.dollars_per_h,
                    budget_per_h=self.budget_per_h if self.budget_per_h is not None
                    else other.budget_per_h)


def dollars(prices: Prices, unit_price_s: float, unit_s: float, invocations: int,
            operations: int) -> float:
    """What ``unit_s`` unit-seconds at ``unit_price_s``, the invocations and the broker
    operations cost."""
    return (unit_s * unit_price_s + invocations * prices.invocation
            + operations * prices.broker_operation)


@dataclass(frozen=True, slots=True)
class BudgetCap:
    """A function's budget as a bound on its units (``Auto``'s ``cap``). The projected spend per
    hour at ``n`` units is ``n x unit price x 3600 + completion rate at n units x per-event price
    x 3600`` (an event's invocations and broker operations, as measured: ``reprice`` in
    ``swell.runtime.cost``). More units finish more events, so the completion rate at ``n``
    units is what one unit finishes, times ``n``: the smoothed rate over the units in force, but

    * no fewer than one event per (smoothed) service time, which a unit with work finishes: the
      rate lags a change of units, and were it taken whatever ``n``, a cap that cut the units
      would cut the rate, which would lift the cap, and the units would swing;
    * no more than one per service time of the last tick, as a unit works one event at a time:
      after a cut the lagging rate is still the old units', and divided by the fewer units now
      it would dip the cap below where it settles (service times falling, the units going 10, 8,
      6, 5, 4, then 3 a while before 4 again)."""

    per_hour: float
    """The budget, dollars per hour."""
    unit_second: float
    """Dollars per unit-second."""
    per_event: float
    """Dollars per event finished, besides the units."""

    def _per_unit_s(self, completion_rate: float, units_now: int, service_s: float | None,
                    latest_s: float | None) -> float:
        """Dollars a unit spends per second: held, and on the events it finishes."""
        events = max(0.0, completion_rate) / max(1, units_now)
        if latest_s is not None and latest_s > 0:
            events = min(events, 1.0 / latest_s)
        if service_s is not None and service_s > 0:
            events = max(events, 1.0 / service_s)
        return self.unit_second + events * self.per_event

    def spend_per_hour(self, units: int, completion_rate: float, units_now: int,
                       service_s: float | None = None, latest_s: float | None = None) -> float:
        """The projected spend at ``units``, ``completion_rate`` events/s being finished now by
        ``units_now`` units, each event taking ``service_s`` (smoothed), ``latest_s`` of late."""
        return 3600.0 * units * self._per_unit_s(completion_rate, units_now, service_s, latest_s)

    def units(self, completion_rate: float, units_now: int, service_s: float | None = None,
              latest_s: float | None = None) -> int:
        """The most units whose projected spend stays within the budget; never fewer than one (a
        budget slows a function down, it does not stop it)."""
        per_unit = self._per_unit_s(completion_rate, units_now, service_s, latest_s)
        if per_unit <= 0:
            return 2**31 - 1
        return max(1, min(2**31 - 1, math.floor(self.per_hour / 3600.0 / per_unit + 1e-9)))

    def __str__(self) -> str:
        return f"${self.per_hour:,.4g}/h"
