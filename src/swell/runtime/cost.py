"""Cost measured from what the runtime ran, priced by ``swell.core.cost``.

Each executor keeps a ``Usage``: the unit-seconds it held, integrated at every instant its count
of units changes (inline: the slots it is scaled to; process: its instances, each from the moment
it is asked for to the moment it is reaped), so nothing is estimated from samples, and the events
its handlers send (``CountingBackend``). Invocations, receives and settlements are the
Dispatcher's own counters. ``cost_record`` prices them for the status record and the metrics;
``budgeted`` gives ``Auto`` its cap from the function's ``budget=``, and ``reprice``, every tick,
the price per event its events measured.

The runtime gives each executor's ``Usage`` its clock: the unit-seconds are on the clock the
runtime's ticks and sleeps are (a ``ManualClock`` in tests).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swell.core.clock import SYSTEM_CLOCK
from swell.core.config import Size, byte_size
from swell.core.cost import Budget, BudgetCap, Cost, Prices, dollars, per_hour, prices_from
from swell.core.errors import AppError
from swell.runtime.context import Invocation, LocalBackend
from swell.scaling.auto import Auto
from swell.scaling.base import Controller

if TYPE_CHECKING:
    import asyncio

    from swell.brokers.producer import Target
    from swell.runtime.app import Function
    from swell.runtime.state import FunctionState

__all__ = ["RECENT_S", "CountingBackend", "Usage", "budgeted", "cost_record", "declared",
           "pricing", "reprice"]

RECENT_S = 60.0
"""The spend per hour, and the price per event a budget projects, are measured over about this
long."""


class Usage:
    """Unit-seconds held: ``held(n)`` at every change of the count, ``seconds()`` at any time.

    Also the events its handlers sent (``sends``: broker operations) and the recent samples the
    spend rate and the price per event are taken from (``recent``)."""

    __slots__ = ("_at", "_now", "_samples", "_total", "_units", "sends")

    def __init__(self, now: Callable[[], float] = SYSTEM_CLOCK.monotonic) -> None:
        self.sends = 0
        self._now = now
        self._at = now()
        self._units = 0
        self._total = 0.0
        self._samples: deque[tuple[float, tuple[float, ...] | None]] = deque([(self._at, None)])

    @property
    def units(self) -> int:
        return self._units

    def held(self, units: int) -> None:
        """From now on ``units`` units are held."""
        t = self._now()
        self._total += self._units * (t - self._at)
        self._units, self._at = units, t

    def seconds(self) -> float:
        """Unit-seconds held so far, the units held now counted up to now."""
        return self._total + self._units * (self._now() - self._at)

    def recent(self, totals: tuple[float, ...]) -> tuple[float, tuple[float, ...]]:
        """The seconds of the last ``RECENT_S`` or so, and how much each of ``totals`` (running
        sums from zero, such as dollars spent, events finished) grew in them: measured against
        the samples of earlier calls (the first against zero at the start), this call's a sample
        for later ones. Every call passes the same sums."""
        t = self._now()
        samples = self._samples
        samples.append((t, totals))
        while len(samples) > 2 and samples[1][0] <= t - RECENT_S:
            samples.popleft()
        t0, before = samples[0]
        grown = tuple(v - b for v, b in zip(totals, before or (0.0,) * len(totals), strict=True))
        return t - t0, grown


class CountingBackend(LocalBackend):
    """An attempt's ``LocalBackend`` that counts what its handler sends (a broker operation
    each) in its executor's ``usage``."""

    __slots__ = ("_usage",)

    def __init__(self, usage: Usage, inv: Invocation, function: str, attempt: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(inv, function, attempt, loop)
        self._usage = usage

    def publish(self, target: Target, data: Any, delay_s: float,
                attrs: dict[str, Any]) -> Coroutine[Any, Any, str]:
        self._usage.sends += 1
        return super().publish(target, data, delay_s, attrs)


def pricing(start: Path | None = None) -> Prices:
    """The prices of the project (``[tool.swell.cost]`` of the nearest ``pyproject.toml`` with a
    ``[tool.swell]`` table, from ``start`` or the working directory up), else the defaults.
    Read once per folder."""
    return _pricing(str((start or Path.cwd()).resolve()))


@functools.cache
def _pricing(folder: str) -> Prices:
    from swell.runtime.loader import project

    found = project(Path(folder))
    if found is None or found[1].get("cost") is None:
        return Prices()
    return prices_from(found[1]["cost"], f"{found[0] / 'pyproject.toml'}: [tool.swell.cost]")


def declared(name: str, mode: str, controller: Controller, memory: Size | None,
             budget: Budget | None, workload: str | None) -> tuple[int | None, float | None, str]:
    """A function's ``memory=`` in bytes, ``budget=`` in dollars per hour and ``workload``
    (its name unless given), checked where it is declared."""
    what = f"function {name!r}"
    size = None if memory is None else byte_size(memory, name=f"{what}: memory")
    if size is not None and mode != "process":
        raise AppError(f"{what}: memory= prices a process instance; it runs inline (give it "
                       "mode='process', or leave memory out)")
    cap = None if budget is None else per_hour(budget, name=f"{what}: budget")
    if cap is not None and not isinstance(controller, Auto):
        raise AppError(f"{what}: budget= caps Auto's max, and its concurrency is {controller!r} "
                       "(give it concurrency=Auto(...), or leave budget out)")
    if workload is not None and (not isinstance(workload, str) or not workload.strip()):
        raise AppError(f"{what}: workload must be a non-empty name, not {workload!r}")
    return size, cap, (workload or name).strip()


def budgeted(fn: Function, controller: Controller, prices: Prices | None = None) -> Controller:
    """``controller`` (a runtime's copy), capped by ``fn``'s budget if it has one."""
    if fn.budget_per_h is not None and isinstance(controller, Auto):
        prices = prices or pricing()
        controller.cap = BudgetCap(fn.budget_per_h, prices.unit_second(fn.mode, fn.memory),
                                   prices.per_event())
    return controller


def reprice(st: FunctionState, prices: Prices | None = None) -> None:
    """A budgeted function's cap, priced per event at the invocations and broker operations its
    events took over the recent window: a handler that sends three events on costs five
    operations an event, a retry another invocation, release and receive (``Prices.per_event``
    keeps it above what any event costs). While no event finished in the window, the last price
    stands. The runtime calls it before each decision."""
    controller = st.controller
    if not isinstance(controller, Auto) or controller.cap is None:
        return
    prices = prices or pricing()
    _, (_, invocations, operations, events) = _measured(st, prices)
    if events > 0:
        controller.cap = replace(controller.cap, per_event=prices.per_event(
            invocations / events, operations / events))


def cost_record(st: FunctionState, prices: Prices | None = None) -> Cost:
    """What ``st``'s function ran on this node so far, priced."""
    return _measured(st, prices or pricing())[0]


def _measured(st: FunctionState, prices: Prices) -> tuple[Cost, tuple[float, ...]]:
    """What ``st``'s function ran so far, priced, and how much of it (dollars, invocations,
    broker operations, events finished) over the recent window."""
    fn, m = st.fn, st.dispatcher.metrics
    usage: Usage = st.dispatcher.executor.usage
    unit_s = usage.seconds()
    ops = m.received + m.succeeded + m.dead_lettered + m.retried + m.throttles + usage.sends
    spent = dollars(prices, prices.unit_second(fn.mode, fn.memory), unit_s, m.attempts, ops)
    span, grown = usage.recent((spent, m.attempts, ops, m.finished))
    return Cost(workload=fn.workload or fn.name, mode=fn.mode, unit_s=unit_s,
                invocations=m.attempts, operations=ops, events=m.finished, dollars=spent,
                dollars_per_h=grown[0] * 3600.0 / span if span > 0 else 0.0,
                budget_per_h=fn.budget_per_h), grown
