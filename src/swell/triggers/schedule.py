"""Schedules: a cron expression in a time zone, or a fixed interval, as a trigger source. Each fire
time becomes one event on the schedule's channel, however many nodes run the app.

``app.schedule("nightly", cron="0 3 * * *", tz="Europe/Paris", to=...)`` and
``app.schedule("poll", every="30s", jitter="5s", to=...)`` declare a ``ScheduleSource``.

Fire times
    A cron schedule's are computed by cronsim (croniter 7.0 fires a ``30 2 * * *`` job twice on a
    fall-back day: at 02:30 CEST and again at 02:30 CET). An interval's are aligned to the epoch
    (``k * interval``), so every node computes the same ones. A fire time is an instant; its event
    has the id ``sched-<name>-<fire time in integer ms>`` and ``time`` = the fire time.

Daylight saving time (a cron schedule in a zone that has it)
    * A local time that does not exist (02:30 on a spring-forward day in Europe/Paris, where
      clocks jump from 02:00 to 03:00) fires once, at the first instant after the gap (03:00 local
      time), as Vixie cron and cronie do. It is not skipped.
    * A local time that happens twice (02:30 on a fall-back day in Europe/Paris, where 03:00 goes
      back to 02:00: the hour from 02:00 to 03:00 is repeated) fires once, at its first occurrence
      (02:30 CEST, UTC+2), never twice.
    * An expression whose hour is ``*`` (``*/15 * * * *``) is about elapsed time, not a local time:
      it fires in both passes of a repeated hour and not at all in a skipped one.

Across nodes
    Every node runs the schedule. A node claims a fire time in the kv store
    (``put_if_absent`` on ``<prefix>fire/<ms>``, for ``CLAIM_TTL_S``) before it emits; the node
    that wins emits, then marks the claim ``stored`` (kept ``DONE_TTL_S``). A node that loses
    looks again when the claim expires: a claim still unmarked by then (its holder died between
    claiming and storing, or could not reach the broker) is taken over and the event emitted. The
    event's id is its dedup id, so an event emitted twice (a holder that stored it and died before
    marking) is stored once. ``jitter`` delays when a node sends (by a random share of it), never
    the fire time or the id.

Missed fire times (swell was down)
    ``<prefix>last`` records the latest fire (its time, when it went out, the event id, the node,
    the outcome ``stored`` / ``duplicate`` / ``error: ...``). On start a node looks at the fire
    times after it, up to now: ``missed="skip"`` fires none of them, ``"latest"`` the latest one,
    ``"all"`` all of them, but no more than the ``max_catch_up`` latest. With no record (a new
    schedule) nothing was missed. A running node that falls behind (a stalled loop) fires the
    fire times late by less than ``LATE_S`` anyway, and applies ``missed`` to older ones. Events
    fired as a catch-up say so in their data (``"catch_up": true``).

Broker failures
    An emit that fails (a ``SwellError``) is counted, logged, and its claim deleted; it is tried
    again with backoff while its fire time is less than ``RETRY_FOR_S`` old: inside the channel's
    dedup window (300 s by default), so a failed emit that in fact stored the event stores it once.
    After that the fire time is given up and recorded as ``error: ...``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, ClassVar

import msgspec

from swell.brokers.base import KV
from swell.core import keys
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.config import Duration, seconds, whole
from swell.core.errors import AppError, ConfigError, SwellError
from swell.triggers.base import SourceEnv, SourceStats
from swell.triggers.firetimes import MISSED, Cron, Every, Spec, due, iso, spec_of, zone

__all__ = ["EVENT_TYPE", "MISSED", "Cron", "Every", "LastFire", "ScheduleSource", "Spec", "due",
           "iso", "read_last"]

log = logging.getLogger("swell.schedule")

EVENT_TYPE = "swell.schedule"
CLAIM_TTL_S = 60.0
"""How long a claim on a fire time holds before another node may take it over."""
RETRY_FOR_S = 240.0
"""How long a fire time whose emit failed is tried again (under the default dedup window)."""
DONE_TTL_S = RETRY_FOR_S + CLAIM_TTL_S
"""How long a stored fire time's claim is kept (longer than anyone may still try it)."""
LATE_S = 60.0
"""A running node fires a fire time it is late for by less than this, whatever ``missed`` says."""
MAX_BACKOFF_S = 30.0
"""The longest wait between two tries of a fire time."""


class LastFire(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule's latest fire, as kept at ``keys.schedule(app, name) + "last"``."""

    fire_time: float
    fired_at: float
    event_id: str
    node: str
    outcome: str
    """``"stored"``, ``"duplicate"`` or ``"error: ..."``."""


class _Claim(msgspec.Struct, frozen=True):
    node: str
    state: str  # "claimed", then "stored"


async def read_last(kv: KV, prefix: str) -> LastFire | None:
    """The ``last`` record under a schedule's key ``prefix``, if there is a readable one."""
    entry = await kv.get(prefix + "last")
    return None if entry is None else _decode_last(entry.value)


@dataclass
class _Due:
    at: float  # when to try it next
    catch_up: bool
    tries: int = 0
    error: str | None = None


_DONE, _RETRY = "done", "retry"


class ScheduleSource:
    """A schedule: an event on channel ``to`` at each fire time of ``cron`` (in ``tz``) or
    ``every`` (an interval), once across all nodes; see the module's docstring."""

    kind: ClassVar[str] = "schedule"

    def __init__(self, name: str, *, to: str, cron: str | None = None,
                 every: Duration | None = None, tz: str = "UTC", jitter: Duration = 0,
                 missed: str = "skip", max_catch_up: int = 100, data: Any = None) -> None:
        try:
            self.spec: Spec = spec_of(cron, every, tz, jitter)
            self.jitter_s = seconds(jitter, name="jitter")
            self.max_catch_up = whole(max_catch_up, name="max_catch_up", low=1)
            if not isinstance(name, str) or not name or "/" in name:
                raise AppError(f"a schedule's name is a non-empty string without '/', not {name!r}")
            if not isinstance(to, str) or not to:
                raise AppError(f"to= names the channel its events go to, not {to!r}")
            if missed not in MISSED:
                raise AppError(f"missed must be one of {', '.join(MISSED)}, not {missed!r}")
            msgspec.json.encode(data)
        except (AppError, ConfigError, TypeError) as exc:
            raise AppError(f"schedule {name!r}: {exc}") from exc
        self.name, self.target, self.missed, self.data = name, to, missed, data
        self.zone: tzinfo = self.spec.zone if cron is not None else zone(tz)
        self.stats = SourceStats()
        self.last: LastFire | None = None
        """The latest fire this node knows of (read on start, then its own)."""
        self._clock: Clock = SYSTEM_CLOCK
        self._due: dict[float, _Due] = {}
        self._rng = random.Random()

    def event_id(self, fire_time: float) -> str:
        """The id of a fire time's event: the same on every node, for every try."""
        return f"sched-{self.name}-{round(fire_time * 1000)}"

    def next_fires(self, t: float, n: int = 3) -> list[float]:
        """The ``n`` fire times after ``t``."""
        out: list[float] = []
        for _ in range(n):
            t = self.spec.next_after(t)
            out.append(t)
        return out

    def detail(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.spec.describe(), "tz": str(self.zone), "missed": self.missed,
                               "next": [iso(t, self.zone) for t in self.next_fires(self._clock.time())]}
        if self.jitter_s:
            out["jitter"] = f"{self.jitter_s:g}s"
        if self.last is not None:
            out["last"] = msgspec.to_builtins(self.last)
        return out

    # -- running -----------------------------------------------------------------------------
    async def run(self, env: SourceEnv) -> None:
        """Catch up what was missed (per ``missed``), then fire each fire time as it comes."""
        self._clock = clock = env.clock
        self._due = {}
        now = clock.time()
        try:
            self.last = await read_last(env.kv, self._prefix(env))
        except SwellError as exc:
            log.warning("schedule %s: cannot read its last fire (%s): nothing is caught up",
                        self.name, exc)
        for f in due(self.spec, self.last.fire_time if self.last else None, now, self.missed,
                     self.max_catch_up):
            self._add(f, now, catch_up=True)
        cursor = now  # fire times after it are still to plan
        nxt, nxt_at = self._plan(cursor)
        while True:
            self.stats.pending = len(self._due)
            await clock.sleep(min([nxt_at, *(d.at for d in self._due.values())]) - clock.time())
            now = clock.time()
            if now >= nxt_at:
                cursor = self._take(cursor, nxt, now)
                nxt, nxt_at = self._plan(cursor)
            await self._work(env)

    def _plan(self, after: float) -> tuple[float, float]:
        """The next fire time after ``after``, and when this node sends it (jitter added)."""
        nxt = self.spec.next_after(after)
        return nxt, nxt + (self._rng.uniform(0, self.jitter_s) if self.jitter_s else 0.0)

    def _take(self, cursor: float, nxt: float, now: float) -> float:
        """Take in the fire times after ``cursor`` up to ``nxt``, whose time has come, and any
        later ones that passed while the loop was busy: those late by less than ``LATE_S`` (beyond
        the jitter) fire; older ones go by ``missed``. Returns the new cursor."""
        upto = max(nxt, now - self.jitter_s)  # later ones are still in their jitter: planned
        late_from = max(cursor, upto - LATE_S)
        for f in due(self.spec, cursor, late_from, self.missed, self.max_catch_up):
            self._add(f, now, catch_up=True)
        for f in self.spec.fires_between(late_from, upto, self.max_catch_up):
            self._add(f, now, catch_up=False)
        return upto

    def _add(self, fire_time: float, now: float, *, catch_up: bool) -> None:
        if fire_time not in self._due:
            self._due[fire_time] = _Due(at=now, catch_up=catch_up)
            self.stats.received += 1

    async def _work(self, env: SourceEnv) -> None:
        """Try the fire times whose turn it is, oldest first."""
        ready = sorted(f for f, d in self._due.items() if d.at <= env.clock.time())
        for f in ready:
            d = self._due[f]
            outcome = await self._fire(env, f, d)
            now = env.clock.time()
            if outcome == _DONE:
                del self._due[f]
            elif now - f > RETRY_FOR_S:
                del self._due[f]
                await self._give_up(env, f, d)
            else:  # failed, or held by another node until (at the latest) ``outcome``
                d.tries += 1
                d.at = now + min(MAX_BACKOFF_S, 2.0 ** (d.tries - 1))
                if isinstance(outcome, float):
                    d.at, d.error = min(d.at, outcome), None  # another node's to store now
        self.stats.pending = len(self._due)
        failed = [f for f, d in self._due.items() if d.error is not None]
        if failed:  # behind: by the oldest fire time still to store
            self.stats.lag_s = max(0.0, env.clock.time() - min(failed))

    async def _fire(self, env: SourceEnv, f: float, d: _Due) -> str | float:
        """Claim ``f`` and emit its event: ``_DONE``, ``_RETRY`` (it failed), or when the claim
        another node holds expires (it is looked at again before: the holder marks it stored)."""
        key = f"{self._prefix(env)}fire/{round(f * 1000)}"
        try:
            rev = await env.kv.put_if_absent(key, _encode(_Claim(env.node, "claimed")),
                                              ttl_s=CLAIM_TTL_S)
            if rev is None:
                return await self._held(env, key)
            try:
                [new] = await env.emitter.emit([self._event(env, f, d.catch_up)])
            except BaseException:  # (a stop that cancels the emit too: nothing holds the claim)
                # another try, here or on another node, may claim it; if the event was stored
                # after all, its id makes the next copy a duplicate
                await asyncio.shield(_quietly(env.kv.delete(key, revision=rev)))
                raise
        except Exception as exc:  # never end the loop: a broker error (or a bug) is tried again
            self.stats.errors += 1
            self.stats.last_error = d.error = f"{type(exc).__name__}: {exc}"
            (log.warning if isinstance(exc, SwellError) else log.exception)(
                "schedule %s: fire time %s not emitted (%s); trying again", self.name,
                iso(f, self.zone), d.error)
            return _RETRY
        fired_at = env.clock.time()
        self.stats.lag_s = max(0.0, fired_at - f)
        await _quietly(env.kv.compare_and_set(key, _encode(_Claim(env.node, "stored")), rev,
                                              ttl_s=DONE_TTL_S))
        await self._record(env, LastFire(fire_time=f, fired_at=fired_at, event_id=self.event_id(f),
                                         node=env.node, outcome="stored" if new else "duplicate"))
        return _DONE

    async def _held(self, env: SourceEnv, key: str) -> str | float:
        """Another node's claim: done if it stored the event, else look again at its expiry."""
        entry = await env.kv.get(key)
        now = env.clock.time()
        if entry is None:
            return now  # released just now: try again at once
        try:
            stored = msgspec.json.decode(entry.value, type=_Claim).state == "stored"
        except msgspec.DecodeError:
            stored = False
        if stored:  # (not a duplicate: this node stored nothing)
            return _DONE
        expires = entry.expires_at if entry.expires_at is not None else now + CLAIM_TTL_S
        return float(min(max(expires, now), now + CLAIM_TTL_S) + 0.001)

    def _event(self, env: SourceEnv, f: float, catch_up: bool) -> Any:
        data: dict[str, Any] = {"schedule": self.name, "scheduled_time": iso(f, self.zone),
                                "fired_at": iso(env.clock.time(), self.zone), "catch_up": catch_up}
        if self.data is not None:
            data["data"] = self.data
        return env.emitter.event(data, time=datetime.fromtimestamp(f, UTC), type=EVENT_TYPE,
                                 id=self.event_id(f))

    async def _give_up(self, env: SourceEnv, f: float, d: _Due) -> None:
        if d.error is None:  # another node held it all along: its business
            return
        log.error("schedule %s: gave up fire time %s after %d tries: %s", self.name,
                  iso(f, self.zone), d.tries + 1, d.error)
        await self._record(env, LastFire(fire_time=f, fired_at=env.clock.time(),
                                         event_id=self.event_id(f), node=env.node,
                                         outcome=f"error: {d.error}"))

    async def _record(self, env: SourceEnv, rec: LastFire) -> None:
        """Write ``rec`` as the last fire unless a later one is recorded (compare-and-set, so
        two nodes never take it backwards)."""
        key = self._prefix(env) + "last"
        try:
            for _ in range(5):
                entry = await env.kv.get(key)
                if entry is None:
                    ok = await env.kv.put_if_absent(key, _encode(rec))
                else:
                    old = _decode_last(entry.value)
                    if old is not None and old.fire_time >= rec.fire_time:
                        self.last = old
                        return
                    ok = await env.kv.compare_and_set(key, _encode(rec), entry.revision)
                if ok is not None:
                    self.last = rec
                    return
        except SwellError as exc:
            log.warning("schedule %s: cannot record its last fire (%s)", self.name, exc)

    def _prefix(self, env: SourceEnv) -> str:
        return keys.schedule(env.app, self.name)

    def __repr__(self) -> str:
        return f"ScheduleSource({self.name!r}, {self.spec!r}, to={self.target!r})"


def _encode(value: msgspec.Struct) -> bytes:
    return msgspec.json.encode(value)


def _decode_last(raw: bytes) -> LastFire | None:
    try:
        return msgspec.json.decode(raw, type=LastFire)
    except msgspec.DecodeError:
        return None


async def _quietly(call: Awaitable[object]) -> None:
    """Bookkeeping that may fail with the broker: a TTL or a later try covers it."""
    try:
        await call
    except SwellError as exc:
        log.debug("schedule bookkeeping failed: %s", exc)
