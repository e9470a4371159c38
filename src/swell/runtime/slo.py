"""SLO counts kept in the broker, so that they survive restarts and cover every node, and read
back as burn rates, error budget left and alerts (the arithmetic is ``swell.core.slo``'s).

Each node counts its functions' finished events (``settle`` into ``metrics.SloCounter``) and,
every ``FLUSH_S`` of its tick, adds what it counted since its last flush to two kv records per
function with compare-and-set, so any number of nodes add up (see ``swell.core.keys``):

- ``.../m/<hour>``: counts per minute of one hour, kept ``MINUTES_TTL_S`` (over the 6 h window,
  the longest read at minute resolution);
- ``.../h/<day>``: counts per hour of one day, and the SLO itself (so ``swell slo`` needs only the
  broker), kept for the SLO's window (or the 3 d alert window, if longer) and a day more.

A count reaches a record at most once: the two levels are flushed (and remembered as flushed)
apart, and a failed flush is tried again at the next one. Then the node reads one scan of the
function's records and assesses each objective; on the function's leader a new alert is logged
as a WARNING and one that cleared as INFO (once per cluster, not once per node).
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
CAS_TRIES = 8


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
    """Add what ``c`` counted since its last flush to the function's minute and hour records
    (the hour record at least once a day even with nothing new: it keeps the SLO)."""
    now = c.clock.time()
    counts = c.counts()
    hour = int(now // HOUR_S * HOUR_S)
    day = int(now // DAY_S * DAY_S)
    minutes = _delta(counts, c.flushed.get("m"))
    if any(minutes):
        key = keys.slo_minutes(app, function, hour)
        if await _add(kv, key, int((now - hour) // MINUTE_S), minutes, MINUTES_TTL_S):
            c.flushed["m"] = counts
    hours = _delta(counts, c.flushed.get("h"))
    if any(hours) or c.spec_day != day:
        key = keys.slo_hours(app, function, day)
        if await _add(kv, key, int((now - day) // HOUR_S), hours, _hours_ttl_s(c.slo),
                      _spec(c.slo)):
            c.flushed["h"] = counts
            c.spec_day = day


def _delta(counts: Counts, flushed: Counts | None) -> Counts:
    if flushed is None:
        return counts
    a, b, x, y = (n - f for n, f in zip(counts, flushed, strict=True))
    return a, b, x, y


async def _add(kv: KV, key: str, slot: int, delta: Counts, ttl_s: float,
               spec: _Spec | None = None) -> bool:
    """Add ``delta`` to ``slot`` of the record at ``key`` (compare-and-set, a few tries under
    contention); whether it was added."""
    for _ in range(CAS_TRIES):
        entry = await kv.get(key)
        record = _record(entry) or _Record()
        row = [*record.counts.get(slot, ()), 0, 0, 0, 0][:4]
        record.counts[slot] = [n + d for n, d in zip(row, delta, strict=True)]
        if spec is not None:
            record.slo = spec
        data = _encode(record)
        if entry is None:
            if await kv.put_if_absent(key, data, ttl_s) is not None:
                return True
        elif await kv.compare_and_set(key, data, entry.revision, ttl_s) is not None:
            return True
    log.info("%s: SLO record busy; the counts wait for the next flush", key)
    return False


def _record(entry: KvEntry | None) -> _Record | None:
    if entry is None:
        return None
    try:
        return _decode(entry.value)
    except msgspec.DecodeError:  # another swell version's: counted afresh
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
    minutes: dict[float, Counts] = {}
    hours: dict[float, Counts] = {}
    newest, slo = -1, None
    for e in entries:
        _, level, start = e.key.rsplit("/", 2)
        record = _record(e)
        if record is None or level not in ("m", "h") or not start.isdigit():
            continue
        base = int(start)
        size, into = (MINUTE_S, minutes) if level == "m" else (HOUR_S, hours)
        for slot, row in record.counts.items():
            a, b, x, y = [*row, 0, 0, 0, 0][:4]
            into[base + slot * size] = (a, b, x, y)
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
        parts = e.key[len(keys.SLOS):].split("/")
        if len(parts) == 4:
            grouped.setdefault((parts[0], parts[1]), []).append(e)
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
