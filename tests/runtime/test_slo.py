"""SLOs: declared and checked, counted as events finish (``settle``), kept in the broker's kv
(``swell.runtime.slo``) across restarts and nodes, and read back as the SRE workbook's burn-rate
alerts, on a manual clock over hours of traffic."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from support.eventually import until
from swell import SLO, App, ConfigError, ManualClock, Retry
from swell.brokers.base import KV, Delivery, KvEntry, Receipt
from swell.brokers.memory import MemoryBroker
from swell.brokers.sqlite import SqliteBroker
from swell.core import keys
from swell.core.outcome import Outcome
from swell.core.slo import ALERTS, DAY_S, HOUR_S, Tally, assess, burn_rate
from swell.runtime.metrics import FunctionMetrics, SloCounter
from swell.runtime.runtime import Runtime
from swell.runtime.settle import Settle
from swell.runtime.slo import FunctionSlo, flush, read_slos, step
from swell.runtime.status import snapshot_of

OK = Outcome("ok")
FAILED = Outcome("failed", "boom")
FAST, PAGE_SLOW, TICKET = (a.name for a in ALERTS)


# -- declaring ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "field"), [
    ({"latency": "soon"}, "SLO latency"), ({"latency": 0}, "SLO latency"),
    ({"target": 1.0}, "SLO target"), ({"target": 0}, "SLO target"),
    ({"success": 1.5}, "SLO success"), ({"window": "30m"}, "SLO window"),
    ({"measure_from": "arrival"}, "SLO measure_from"),
    ({"latency": None, "success": None}, "SLO latency and success"),
])
def test_a_bad_slo_is_refused_when_declared_naming_its_field(kwargs: dict[str, Any],
                                                             field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        SLO(**kwargs)


def test_a_function_keeps_its_slo_and_refuses_anything_else() -> None:
    app = App("shop")
    slo = SLO(latency="250ms", target=0.95, success=None, window="7d")

    @app.function(app.queue("orders"), slo=slo)
    async def charge(order: dict[str, int]) -> None: ...

    assert app.functions["charge"].slo == slo
    assert slo.objectives() == (("latency", 0.95),)
    with pytest.raises(Exception, match="slo must be an SLO"):
        app.function(app.queue("refunds"), slo={"latency": "2s"})  # type: ignore[arg-type]


def test_burn_rate_and_an_alert_needs_both_of_its_windows() -> None:
    assert burn_rate(Tally(990, 10), 0.99) == pytest.approx(1.0)
    assert burn_rate(Tally(), 0.99) == 0.0
    hot_short_only = {300.0: Tally(0, 100)}  # all failing for the last 5 minutes, none before
    r = assess("success", 0.999, 86400.0,
               lambda w: hot_short_only.get(w, Tally(100_000, 100)))
    assert dict(r.burn_rates)["5m"] == pytest.approx(1000.0)
    assert r.firing == ()  # the 1 h window burns at ~1x: a blip, not a page
    assert r.budget_left == pytest.approx(0.0, abs=0.01)


# -- counting ------------------------------------------------------------------------------------
def delivery(enqueued_at: float, body: bytes = b"{}") -> Delivery:
    return Delivery(receipt=Receipt("q", 1, 0), body=body, headers={}, receive_count=1,
                    enqueued_at=enqueued_at, first_received_at=enqueued_at)


def counted(slo: SLO, clock: ManualClock) -> tuple[Settle, SloCounter]:
    m = FunctionMetrics()
    m.slo = SloCounter(slo, clock)
    return Settle(Retry(attempts=1), 1, m), m.slo


def test_settle_counts_finished_events_and_latency_from_enqueue_or_event_time() -> None:
    clock = ManualClock()
    now = clock.time()
    rules, c = counted(SLO(latency="2s"), clock)
    rules(OK, 1, delivery=delivery(now - 1.0))
    rules(OK, 1, delivery=delivery(now - 5.0))
    rules(Outcome("duplicate"), 1, delivery=delivery(now - 50.0))  # acked, never ran
    rules(FAILED, 1, delivery=delivery(now))  # last attempt: dead-lettered
    rules(Outcome("throttled"), 1, delivery=delivery(now))  # not finished
    rules(Outcome("invalid", "bad"), 1, delivery=delivery(now))
    assert c.counts() == (3, 2, 1, 1)

    rules, c = counted(SLO(latency="2s", measure_from="event_time"), clock)
    recent = datetime.fromtimestamp(now - 0.5, UTC).isoformat()
    rules(OK, 1, delivery=delivery(now - 1.0, b'{"id": "e", "time": "2000-01-01T00:00:00Z"}'))
    rules(OK, 1, delivery=delivery(now - 9.0, b'{"id": "e", "time": "%s"}' % recent.encode()))
    rules(OK, 1, delivery=delivery(now - 1.0, b"not json"))  # no event time: from its enqueue
    assert (c.fast, c.slow) == (2, 1)


def test_a_function_without_an_slo_counts_nothing_more() -> None:
    m = FunctionMetrics()
    Settle(Retry(), 3, m)(OK, 1, delivery=delivery(0.0))
    assert m.slo is None and m.succeeded == 1


# -- alerts over hours, on a manual clock ------------------------------------------------------
class Traffic:
    """Events through ``Settle`` minute by minute, flushed and assessed once a minute."""

    def __init__(self, slo: SLO) -> None:
        self.clock = ManualClock(1_700_000_000.0 - 1_700_000_000.0 % 3600)  # on the hour
        self.broker = MemoryBroker(clock=self.clock)
        self.rules, self.counter = counted(slo, self.clock)
        self.minute = 0
        self.history: list[set[str]] = []

    async def minutes(self, n: int, per_minute: int, bad: int, late_s: float = 0.1) -> None:
        """``n`` minutes of ``per_minute`` events, ``bad`` of them dead-lettered, the others
        acked ``late_s`` after their enqueue."""
        for _ in range(n):
            for i in range(per_minute):
                self.rules(FAILED if i < bad else OK, 1,
                           delivery=delivery(self.clock.time() - late_s))
            self.clock.advance(59.0)
            await step(self.broker.kv, "shop", "charge", self.counter)
            self.history.append({a.name for r in self.counter.report for a in r.firing})
            self.clock.advance(1.0)
            self.minute += 1

    def first(self, alert: str, since: int, firing: bool = True) -> int:
        """The first minute from ``since`` on at which ``alert`` fired (or, not: no longer)."""
        return next(m for m in range(since, len(self.history))
                    if (alert in self.history[m]) == firing)


async def test_a_ten_minute_fault_pages_within_two_minutes_and_clears_after(
        caplog: pytest.LogCaptureFixture) -> None:
    t = Traffic(SLO(latency=None, success=0.999))
    await t.minutes(60, 100, 0)  # an hour of clean traffic
    assert not any(t.history)
    with caplog.at_level(logging.INFO, logger="swell.slo"):
        await t.minutes(10, 100, 100)  # every event dead-lettered for ten minutes
        await t.minutes(40, 100, 0)
    fired = t.first(FAST, 60)
    assert 60 <= fired <= 61, t.history[58:64]
    assert all(FAST in t.history[m] for m in range(fired, 72))  # on through the fault, and after
    cleared = t.first(FAST, 70, firing=False)
    assert 74 <= cleared <= 76, t.history[70:78]  # its 5 m window is clean again
    assert PAGE_SLOW in t.history[fired + 1]  # the 6 h / 30 m page too, clearing later
    assert 99 <= t.first(PAGE_SLOW, 70, firing=False) <= 101
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.WARNING, "charge: SLO success alert firing (page): its error budget burns "
            "over 14.4x its rate in both windows 1h/5m") in said
    assert (logging.INFO, "charge: SLO success alert cleared (page, 1h/5m)") in said


async def test_a_slow_error_rate_fires_only_the_slow_alert() -> None:
    t = Traffic(SLO(latency=None, success=0.999))
    await t.minutes(7 * 60, 1000, 3)  # 0.3 %: three times the budget's rate, for seven hours
    assert set().union(*t.history) == {TICKET}
    assert all(TICKET in h for h in t.history[60:])
    (report,) = t.counter.report
    assert dict(report.burn_rates)["6h"] == pytest.approx(3.0, rel=0.01)


async def test_latency_too_slow_for_ten_minutes_pages_on_the_latency_objective() -> None:
    t = Traffic(SLO(latency="2s", target=0.99, success=0.999))
    await t.minutes(30, 50, 0)
    await t.minutes(10, 50, 0, late_s=10.0)  # every event ten seconds late, none failing
    latency, success = t.counter.report
    assert FAST in {a.name for a in latency.firing} and not success.firing


# -- kept in the broker: restarts, nodes ---------------------------------------------------------
async def test_two_nodes_flushes_add_up_and_a_new_reader_sees_them() -> None:
    clock = ManualClock()
    broker = MemoryBroker(clock=clock)
    slo = SLO(latency="1s", success=0.99)
    nodes = [counted(slo, clock) for _ in range(2)]
    for n, (rules, c) in enumerate(nodes):
        for i in range(10 * (n + 1)):
            rules(FAILED if i == 0 else OK, 1, delivery=delivery(clock.time()))
        await step(broker.kv, "shop", "charge", c)
    clock.advance(30.0)
    rules, c = nodes[0]
    rules(OK, 1, delivery=delivery(clock.time()))
    await step(broker.kv, "shop", "charge", c)  # only what is new is added
    (seen,) = await read_slos(broker, "shop", now=clock.time())
    assert (seen.function, seen.slo) == ("charge", slo)
    latency, success = seen.objectives
    assert success.window == Tally(good=29, bad=2)
    assert latency.window == Tally(good=29, bad=0)
    assert await read_slos(broker, "other", now=clock.time()) == []


def app_with_slo(name: str = "shop") -> App:
    app = App(name)

    @app.function(app.queue("orders"), retry=Retry(attempts=1), concurrency=4,
                  slo=SLO(latency="30s", success=0.99))
    async def charge(order: dict[str, bool]) -> None:
        if order["bad"]:
            raise RuntimeError("declined")

    @app.function(app.queue("refunds"))
    async def refund(order: dict[str, bool]) -> None: ...

    return app


def reported(rt: Runtime) -> bool:
    s = snapshot_of(rt).functions[0].slo
    return s is not None and bool(s.objectives)


async def done(rt: Runtime, n: int) -> None:
    m = rt.functions["charge"].dispatcher.metrics
    await until(lambda: m.finished >= n, f"{n} events finished")


async def test_counts_survive_a_restart_and_reach_the_snapshot(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    for run, bad in enumerate((2, 1)):
        rt = Runtime(app_with_slo(), url, tick_s=0.05)
        await rt.start()
        try:
            for i in range(10):
                await rt.send("orders", {"bad": i < bad})
            await done(rt, 10)
            if run == 0:
                await until(partial(reported, rt), "a report of the broker's counts")
                snap = snapshot_of(rt)
                assert [f.slo is None for f in snap.functions] == [False, True]
        finally:
            await rt.stop()  # flushes what it counted since its last flush
    broker = SqliteBroker(str(tmp_path / "s.db"))
    try:
        (seen,) = await read_slos(broker, now=time.time())
    finally:
        await broker.close()
    assert isinstance(seen, FunctionSlo)
    latency, success = seen.objectives
    assert success.window == Tally(good=17, bad=3)
    assert latency.window == Tally(good=17, bad=0)
    assert success.budget_left == pytest.approx(1 - 0.15 / 0.01)


async def test_a_consumer_groups_events_count_too() -> None:
    app = App("shop")
    clicks = app.stream("clicks", partitions=2)

    @app.function(clicks.group("g"), retry=Retry(attempts=1), slo=SLO(latency="1m", success=0.9))
    async def count(click: dict[str, int]) -> None:
        if click["i"] == 0:
            raise RuntimeError("no")

    rt = Runtime(app, MemoryBroker())
    await rt.start()
    try:
        for i in range(6):
            await rt.send("clicks", {"i": i}, key=f"k{i}")
        c = rt.functions["count"].dispatcher.metrics.slo
        assert c is not None
        await until(lambda: c.good + c.bad == 6, "six events counted")
        assert c.counts() == (5, 1, 5, 0)
    finally:
        await rt.stop()


async def test_nodes_flushing_at_once_lose_nothing(tmp_path: Path) -> None:
    broker = SqliteBroker(str(tmp_path / "s.db"))
    clock = ManualClock(time.time())
    try:
        nodes = [counted(SLO(latency=None), clock) for _ in range(4)]
        for rules, _ in nodes:
            for _ in range(25):
                rules(OK, 1)
        await asyncio.gather(*(step(broker.kv, "shop", "charge", c) for _, c in nodes))
        (seen,) = await read_slos(broker, now=clock.time())
        assert seen.objectives[0].window == Tally(good=100, bad=0)
    finally:
        await broker.close()


class CommittedThenCancelled:
    """A kv whose write number ``n`` commits and then has its caller cancelled, as when
    ``Runtime.stop`` cancels a flush that SQLite's own thread goes on to commit."""

    def __init__(self, kv: KV, n: int) -> None:
        self.kv, self.writes, self.n = kv, 0, n

    async def _wrote(self, revision: int | None) -> int | None:
        self.writes += 1
        if self.writes == self.n:
            raise asyncio.CancelledError
        return revision

    async def get(self, key: str) -> KvEntry | None:
        return await self.kv.get(key)

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> int:
        revision = await self.kv.put(key, value, ttl_s)
        await self._wrote(revision)
        return revision

    async def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None
                            ) -> int | None:
        return await self._wrote(await self.kv.put_if_absent(key, value, ttl_s))

    async def compare_and_set(self, key: str, value: bytes, revision: int,
                              ttl_s: float | None = None) -> int | None:
        return await self._wrote(await self.kv.compare_and_set(key, value, revision, ttl_s))

    async def delete(self, key: str, revision: int | None = None) -> bool:
        return await self.kv.delete(key, revision)

    async def scan(self, prefix: str) -> list[KvEntry]:
        return await self.kv.scan(prefix)


@pytest.mark.parametrize("n", [1, 2])
async def test_a_flush_cancelled_after_its_write_committed_counts_nothing_twice(n: int) -> None:
    clock = ManualClock(1_700_000_000.0)
    broker = MemoryBroker(clock=clock)
    rules, c = counted(SLO(latency=None, success=0.99), clock)
    for _ in range(100):
        rules(OK, 1)
    with pytest.raises(asyncio.CancelledError):
        await step(CommittedThenCancelled(broker.kv, n), "shop", "charge", c)
    for _ in range(10):
        rules(FAILED, 1)
    await flush(broker.kv, "shop", "charge", c)  # the final flush of Runtime.stop
    (seen,) = await read_slos(broker, now=clock.time())
    (success,) = seen.objectives
    assert success.window == Tally(good=100, bad=10)  # the hour records
    assert dict(success.burn_rates)["5m"] == pytest.approx(10 / 110 / 0.01)  # the minute ones


async def test_a_slash_in_a_name_neither_hides_a_function_nor_mixes_two() -> None:
    clock = ManualClock(1_700_000_000.0)
    broker = MemoryBroker(clock=clock)
    names = [("a/b", "c"), ("a", "b/c"), ("a", "b%2Fc")]
    for good, (app, function) in enumerate(names, 1):
        rules, c = counted(SLO(latency=None), clock)
        for _ in range(good):
            rules(OK, 1)
        await step(broker.kv, app, function, c)
    seen = await read_slos(broker, now=clock.time())
    assert [(f.app, f.function, f.objectives[0].window.good) for f in seen] == [
        ("a", "b%2Fc", 3), ("a", "b/c", 2), ("a/b", "c", 1)]
    assert [f.function for f in await read_slos(broker, "a/b", now=clock.time())] == ["c"]


async def test_a_months_records_stay_bounded_per_node_and_add_up() -> None:
    """Three nodes flushing every hour for 30 days, then one restarted: a scan of the function
    reads each node's live minute and day records only, and their sum is every event."""
    clock = ManualClock(1_700_000_000.0 - 1_700_000_000.0 % DAY_S)
    broker = MemoryBroker(clock=clock)
    nodes = [counted(SLO(latency=None, success=0.99), clock) for _ in range(3)]
    for _ in range(30 * 24):
        for rules, c in nodes:
            rules(OK, 1)
            await flush(broker.kv, "shop", "charge", c)
        clock.advance(HOUR_S)
    assert all(len(c.records) <= 2 for _, c in nodes)  # the current hour's and day's only
    rules, c = nodes[0] = counted(SLO(latency=None, success=0.99), clock)  # a restart
    rules(OK, 1)
    await flush(broker.kv, "shop", "charge", c)
    records = await broker.kv.scan(keys.slo_counts("shop", "charge"))
    # per node: 31 day records (the 28 d window, a day more, today), 9 minute ones (8 h)
    assert len(records) <= 3 * (31 + 9) + 2, len(records)
    (seen,) = await read_slos(broker, now=clock.time())
    assert seen.objectives[0].window == Tally(good=3 * 28 * 24 + 1, bad=0)
