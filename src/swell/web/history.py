"""The last hour of each function's series, for the dashboard's charts: sampled from the
runtime's own snapshot (``snapshot_of``, no broker trip) every ``every_s`` by a task on the
runtime's loop, into fixed ring buffers of doubles.

Memory is bounded up front: ``keep_s / every_s`` points per series, 8 bytes each (an hour at one
point a second: about 460 KB per function, whatever the load); a point no reading had is NaN,
served as ``null``."""

from __future__ import annotations

import asyncio
import logging
import math
from array import array
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from swell.core.clock import Clock
from swell.runtime.status import FunctionSnapshot, RuntimeSnapshot

__all__ = ["EVERY_S", "KEEP_S", "SERIES", "History"]

log = logging.getLogger("swell.http")

EVERY_S = 1.0
KEEP_S = 3600.0
SERIES = ("arrival_rate", "completion_rate", "depth", "oldest_age_s", "lag", "desired", "ready",
          "busy", "cold_starts", "service_p50_s", "service_p99_s", "error_rate", "throttle_rate",
          "slo_burn", "cost_per_hour")
NAN = math.nan


def readings(f: FunctionSnapshot) -> tuple[float, ...]:
    """One point of each series of ``f``, in the order of ``SERIES`` (NaN: not known)."""
    s = f.signals

    def sig(name: str) -> float:
        v = None if s is None else getattr(s, name)
        return NAN if v is None else float(v)

    burn = NAN
    if f.slo is not None:  # the worst objective's burn over its shortest window
        rates = [r.burn_rates[0][1] for r in f.slo.objectives if r.burn_rates]
        burn = max(rates) if rates else NAN
    cost = NAN if f.cost is None else f.cost.dollars_per_h
    return (sig("arrival_rate"), sig("completion_rate"), sig("depth"), sig("oldest_age_s"),
            sig("lag"), float(f.desired), sig("ready"), sig("busy"), sig("cold_starts"),
            sig("service_p50_s"), sig("service_p99_s"), sig("error_rate"), sig("throttle_rate"),
            burn, cost)


class History:
    """Ring buffers of every function's series, one point per ``every_s``."""

    def __init__(self, snapshot: Callable[[], RuntimeSnapshot], clock: Clock, *,
                 every_s: float = EVERY_S, keep_s: float = KEEP_S) -> None:
        self.snapshot = snapshot
        self.clock = clock
        self.every_s = every_s
        self.size = max(1, int(keep_s / every_s))
        self._t = array("d", [NAN]) * self.size
        self._series: dict[str, list[array[float]]] = {}
        self._next = 0
        """Where the next point goes."""
        self._count = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        """Take one point of every function (a function new since the last point gets a series,
        NaN before it)."""
        snap = self.snapshot()
        i = self._next
        self._t[i] = self.clock.time()
        for f in snap.functions:
            series = self._series.get(f.name)
            if series is None:
                series = self._series[f.name] = [array("d", [NAN]) * self.size for _ in SERIES]
            for buf, v in zip(series, readings(f), strict=True):
                buf[i] = round(v, 6) if math.isfinite(v) else NAN
        self._next = (i + 1) % self.size
        self._count = min(self._count + 1, self.size)

    def knows(self, function: str) -> bool:
        return function in self._series

    def series(self, function: str, seconds: float, since: float | None = None
               ) -> dict[str, Any]:
        """``{"t": [...], "series": {name: [...]}}``: the points of the last ``seconds`` (and
        after ``since``, epoch seconds), oldest first."""
        start = (self._next - self._count) % self.size
        order = [(start + k) % self.size for k in range(self._count)]
        after = self.clock.time() - seconds
        if since is not None:
            after = max(after, since)
        picked = [i for i in order if self._t[i] > after]
        bufs = self._series.get(function)
        out: dict[str, list[float | None]] = {}
        for name, k in zip(SERIES, range(len(SERIES)), strict=True):
            buf = bufs[k] if bufs is not None else None
            out[name] = [None if buf is None or math.isnan(buf[i]) else buf[i] for i in picked]
        return {"t": [round(self._t[i], 3) for i in picked], "series": out}

    # -- as a task on the runtime's loop ---------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="swell:history")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a chart's gap, never a stopped history
                log.exception("history: a sample failed")
            await self.clock.sleep(self.every_s)
