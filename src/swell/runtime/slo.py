"""SLO counts kept in the broker, so that they survive restarts and cover every node, and read
back as burn rates, error budget left and alerts (the arithmetic is ``swell.core.slo``'s).

Each node counts its functions' finished events (``settle`` into ``metrics.SloCounter``) and,
every ``FLUSH_S`` of its tick, writes them to kv records of its own (its counter's ``writer``;
see ``swell.core.keys``), two per function at a time:

- ``.../m/<hour>/<writer>``: its counts per minute of one hour, kept ``MINUTES_TTL_S`` (over the
  6 h window, the longest read at minute resolution);
- ``.../h/<day>/<writer>``: its counts per hour of one day, and the SLO itself (so ``swell slo``
  needs only the broker), kept for the SLO's window (or the 3 d alert window, if longer) and a
  day more.

A write puts the writer's totals of the record whole, never adds to what is there: no two nodes
contend for a record, and a write repeated (after a failure, or a cancellation that came after
the broker committed it) cannot count anything twice. Readers sum over writers. Then the node
reads one scan of the function's records and assesses each objective; on the function's leader
a new alert is logged as a WARNING and one that cleared as INFO (once per cluster, not once per
node).

Records per function: each writer keeps about 9 minute records live (8 h TTL) and one day record
per day of the window and a day more (31 for 28 d): a scan reads about 40 per node, and a node
restarted is a new writer whose old records stay until they expire.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import msgspec

from swell.brokers.base import KV, Broker, KvEntry
from swell.core import keys
from swell.core.clock import Clock
from swell.core.errors import SwellError
from swell.core.slo import (
    ALERTS,
    DAY_S,
    HOUR_S,
    MINUTE_S,
    SLO,
    Alert,
    MeasureFrom,
    ObjectiveReport,
    Tally,
    assess,
)
from swell.runtime.metrics import Counts, SloCounter

if TYPE_CHECKING:
    from swell.runtime.runtime import Runtime
    from swell.runtime.state import FunctionState

__all__ = ["FLUSH_S", "FunctionSlo", "SloSnapshot", "flush", "read_slos", "report", "slo_of",
           "step", "tick", "watch"]

log = logging.getLogger("swell.slo")

FLUSH_S = 10.0
"""How often a node adds its counts to the broker and reads the alerts back."""
MINUTE_WINDOW_S = 6 * HOUR_S
"""The longest window read at minute resolution; longer ones are read by the hour."""
MINUTES_TTL_S = MINUTE_WINDOW_S + 2 * HOUR_S


class _Spec(msgspec.Struct, frozen=True):
    """An ``SLO`` as its records keep it."""

    latency_s: float | None
    target: float
    success: float | None
    window_s: float
    measure_from: MeasureFrom

    def slo(self) -> SLO:
        return SLO(latency=self.latency_s, target=self.target, success=self.success,
                   window=self.window_s, measure_from=self.measure_from)


class _Record(msgspec.Struct):
    """Counts (success good, bad, latency good, bad) per slot: the minute of an hour, or the hour
    of a day; a day's record also keeps its function's SLO."""

    counts: dict[int, list[int]] = msgspec.field(default_factory=dict)
    slo: _Spec | None = None


_decode = msgspec.json.Decoder(_Record).decode
_encode = msgspec.json.Encoder().encode


def _spec(slo: SLO) -> _Spec:
    return _Spec(slo.latency_s, slo.target, slo.success, slo.window_s, slo.measure_from)


def _hours_ttl_s(slo: SLO) -> float:
    return max(slo.window_s, ALERTS[-1].long_s) + DAY_S + HOUR_S


# -- the runtime's side ----------------------------------------------------------------------------
def watch(st: FunctionState, clock: Clock) -> None:
    """Count ``st``'s finished events against its SLO, if it has one (before it starts)."""
    if st.fn.slo is not None:
        st.dispatcher.metrics.slo = SloCounter(st.fn.slo, clock)


async def tick(rt: Runtime, *, final: bool = False) -> None:
    """The runtime's part, every tick: each function with an SLO whose flush is due flushes and
    reads its alerts back. ``final``: the runtime stops, so flush what is left, read nothing."""
    for st in rt.functions.values():
        c = st.dispatcher.metrics.slo
        if c is None or (not final and c.clock.time() < c.due_at):
            continue
        try:
            if final:
                await flush(rt.broker.kv, rt.app.name, st.fn.name, c)
            else:
                await step(rt.broker.kv, rt.app.name, st.fn.name, c, speak=st.leader == rt.node)
        except SwellError as exc:  # a backend hiccup: the counts wait for the next flush
            log.warning("%s: SLO counts not flushed: %s", st.fn.name, exc)


async def step(kv: KV, app: str, function: str, c: SloCounter, *, speak: bool = True) -> None:
    """Flush ``c``, read the function's records back into ``c.report`` and (``speak``) log the
    alerts that began or ended since the last step."""
    now = c.clock.time()
    c.due_at = now + FLUSH_S
    await flush(kv, app, function, c)
    before = _firing(c.report)
    c.report = report(c.slo, _parse(await kv.scan(keys.slo_counts(app, function))), now)
    after = _firing(c.report)
    if not speak:
        return
    for objective, alert in sorted(after - before, key=_order):
        log.warning("%s: SLO %s alert firing (%s): its error budget burns over %gx its rate "
                    "in both windows %s", function, objective, alert.severity, alert.factor,
                    alert.name)
    for objective, alert in sorted(before - after, key=_order):
        log.info("%s: SLO %s alert cleared (%s, %s)", function, objective, alert.severity,
                 alert.name)


def _firing(reports: Iterable[ObjectiveReport]) -> set[tuple[str, Alert]]:
    return {(r.objective, a) for r in reports for a in r.firing}


def _order(firing: tuple[str, Alert]) -> tuple[str, float]:
    return firing[0], firing[1].long_s


async def flush(kv: KV, app: str, function: str, c: SloCounter) -> None:
    """Place what ``c`` counted since the last flush in its current records, then write each
    record it changed, whole: a put of this writer's totals, never an increment, so a write
    repeated after a failure or a cancellation (committed or not) counts nothing twice. The day's
    record is written at least once a day even with nothing new: it keeps the SLO."""
    now = c.clock.time()
    hour = int(now // HOUR_S * HOUR_S)
    day = int(now // DAY_S * DAY_S)
    counts = c.counts()
    delta = [n - p for n, p in zip(counts, c.placed, strict=True)]
    if ("h", day) not in c.records:
        c.records[("h", day)] = {}
        c.unwritten.add(("h", day))
    if any(delta):
        _place(c, ("m", hour), int((now - hour) // MINUTE_S), delta)
        _place(c, ("h", day), int((now - day) // HOUR_S), delta)
        c.placed = counts
    current = {("m", hour), ("h", day)}
    for level, start in sorted(c.unwritten):
        ttl_s = MINUTES_TTL_S if level == "m" else _hours_ttl_s(c.slo)
        if start + ttl_s < now:  # too old to be read by now (after a long outage)
            c.unwritten.discard((level, start))
            continue
        record = _Record(c.records[(level, start)], _spec(c.slo) if level == "h" else None)
        data = _encode(record)
        await kv.put(keys.slo_record(app, function, level, start, c.writer), data, ttl_s)
        if _encode(record) == data:  # (else placed to meanwhile: written again next time)
            c.unwritten.discard((level, start))
    for done in c.records.keys() - current - c.unwritten:  # (an hour or day over, written)
        del c.records[done]


def _place(c: SloCounter, record: tuple[str, int], slot: int, delta: Sequence[int]) -> None:
    row = c.records.setdefault(record, {}).setdefault(slot, [0, 0, 0, 0])
    row[:] = [n + d for n, d in zip(row, delta, strict=True)]
    c.unwritten.add(record)


def _record(entry: KvEntry) -> _Record | None:
    try:
        return _decode(entry.value)
    except msgspec.DecodeError:  # another swell version's: not counted
        return None


# -- the read side -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Series:
    """One function's counts from its records: by minute start and by hour start."""

    minutes: dict[float, Counts]
    hours: dict[float, Counts]
    slo: SLO | None
    """The SLO its newest day record keeps."""

    def tally(self, objective: str, window_s: float, *, now: float) -> Tally:
        rows = self.minutes if window_s <= MINUTE_WINDOW_S else self.hours
        since = now - window_s
        good = bad = 0
        first = 0 if objective == "success" else 2
        for t, counts in rows.items():
            if since <= t <= now:
                good += counts[first]
                bad += counts[first + 1]
        return Tally(good, bad)


def _parse(entries: Sequence[KvEntry]) -> _Series:
    """One function's records, every writer's counts summed per minute and per hour."""
    minutes: dict[float, Counts] = {}
    hours: dict[float, Counts] = {}
    newest, slo = -1, None
    for e in entries:
        fields = keys.slo_fields(e.key)
        if fields is None or fields[2] not in ("m", "h") or not fields[3].isdigit():
            continue
        record = _record(e)
        if record is None:
            continue
        level, base = fields[2], int(fields[3])
        size, into = (MINUTE_S, minutes) if level == "m" else (HOUR_S, hours)
        for slot, row in record.counts.items():
            t = base + slot * size
            a, b, x, y = (n + m for n, m in zip(into.get(t, (0, 0, 0, 0)),
                                                 [*row, 0, 0, 0, 0][:4], strict=True))
            into[t] = (a, b, x, y)
        if level == "h" and record.slo is not None and base > newest:
            newest, slo = base, record.slo
    return _Series(minutes, hours, None if slo is None else _safe(slo))


def _safe(spec: _Spec) -> SLO | None:
    try:
        return spec.slo()
    except SwellError:  # a record this version cannot read as an SLO
        return None


def report(slo: SLO, series: _Series, now: float) -> tuple[ObjectiveReport, ...]:
    """Each objective of ``slo``, assessed over ``series`` at ``now``."""
    return tuple(assess(name, target, slo.window_s, partial(series.tally, name, now=now))
                 for name, target in slo.objectives())


@dataclass(frozen=True, slots=True)
class FunctionSlo:
    """A function's SLO as its records in the broker say, assessed at one instant."""

    app: str
    function: str
    slo: SLO
    objectives: tuple[ObjectiveReport, ...]


async def read_slos(broker: Broker, app: str | None = None, *, now: float) -> list[FunctionSlo]:
    """Every function with SLO records on ``broker`` (of ``app``, else of every app)."""
    grouped: dict[tuple[str, str], list[KvEntry]] = {}
    for e in await broker.kv.scan(keys.slo_counts(app)):
        fields = keys.slo_fields(e.key)
        if fields is not None:
            grouped.setdefault(fields[:2], []).append(e)
    out = []
    for (a, f), entries in sorted(grouped.items()):
        series = _parse(entries)
        if series.slo is not None:
            out.append(FunctionSlo(a, f, series.slo, report(series.slo, series, now)))
    return out


# -- a running runtime's snapshot (for /metrics) -------------------------------------------------
@dataclass(frozen=True, slots=True)
class SloSnapshot:
    """A function's SLO on this node: its counts since the node started (counters), and the
    latest assessment of the broker's records (every node's counts)."""

    slo: SLO
    counts: Counts
    objectives: tuple[ObjectiveReport, ...]


def slo_of(c: SloCounter | None) -> SloSnapshot | None:
    return None if c is None else SloSnapshot(c.slo, c.counts(), c.report)
