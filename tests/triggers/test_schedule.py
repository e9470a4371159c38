"""Schedules: cron and interval fire times (time zones, DST), the catch-up rule, and the source on
a manual clock: one event per fire time across three nodes, through broker failures and a claim
holder that died."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest
from rich.console import Console

from swell.brokers.base import Message, QueueSpec
from swell.brokers.memory import MemoryBroker
from swell.brokers.producer import Producer
from swell.cli.schedules import read_schedules, schedules_table
from swell.core import keys
from swell.core.clock import ManualClock
from swell.core.errors import AppError, BrokerUnavailable
from swell.core.event import Event
from swell.triggers.base import Emitter, Source, SourceEnv
from swell.triggers.schedule import (
    CLAIM_TTL_S,
    EVENT_TYPE,
    Cron,
    Every,
    LastFire,
    ScheduleSource,
    due,
)

PARIS = ZoneInfo("Europe/Paris")
APP = "shop"
QUEUE = "ticks"


def paris(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=PARIS).timestamp()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


def fires(spec: Cron | Every, start: float, end: float) -> list[float]:
    out, t = [], start
    while (t := spec.next_after(t)) <= end:
        out.append(t)
    return out


# -- fire times -------------------------------------------------------------------------------
def test_every_is_aligned_to_the_epoch_and_strictly_after() -> None:
    every = Every("30s")
    assert every.next_after(100.0) == 120.0
    assert every.next_after(120.0) == 150.0
    assert every.next_after(119.999) == 120.0
    assert Every(0.1).next_after(0.3) > 0.3
    assert every.fires_between(100.0, 200.0, 100) == [120.0, 150.0, 180.0]
    assert every.fires_between(100.0, 200.0, 2) == [150.0, 180.0]
    assert every.fires_between(120.0, 150.0, 10) == [150.0]


def test_cron_reads_its_expression_in_its_zone() -> None:
    nightly = Cron("0 3 * * *", tz="Europe/Paris")
    assert nightly.next_after(utc(2026, 1, 10, 12)) == utc(2026, 1, 11, 2)  # 03:00 CET
    assert nightly.next_after(utc(2026, 7, 10, 12)) == utc(2026, 7, 11, 1)  # 03:00 CEST
    assert nightly.next_after(utc(2026, 7, 11, 1)) == utc(2026, 7, 12, 1)  # strictly after
    assert Cron("0 3 * * *").next_after(utc(2026, 1, 10, 12)) == utc(2026, 1, 11, 3)
    assert Cron("@daily", tz="Europe/Paris").next_after(utc(2026, 1, 10, 12)) == utc(2026, 1, 10, 23)


def test_spring_forward_a_missing_local_time_fires_once_right_after_the_gap() -> None:
    # 2026-03-29 in Paris: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day
    job = Cron("30 2 * * *", tz="Europe/Paris")
    got = fires(job, paris(2026, 3, 28), paris(2026, 3, 31, 12))
    assert [datetime.fromtimestamp(t, PARIS).isoformat() for t in got] == [
        "2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00"]


def test_fall_back_an_ambiguous_local_time_fires_once_at_its_first_occurrence() -> None:
    # 2026-10-25 in Paris: 03:00 CEST goes back to 02:00 CET; 02:00-03:00 happens twice
    job = Cron("30 2 * * *", tz="Europe/Paris")
    day = fires(job, paris(2026, 10, 25), paris(2026, 10, 26))
    assert day == [utc(2026, 10, 25, 0, 30)]  # 02:30 CEST, not also 02:30 CET (01:30 UTC)
    # a node that starts inside the second pass does not go back to it
    assert job.next_after(utc(2026, 10, 25, 1, 10)) == paris(2026, 10, 26, 2, 30)
    # 01:30 is not ambiguous in Paris: once, as every day
    assert fires(Cron("30 1 * * *", tz="Europe/Paris"), paris(2026, 10, 25),
                 paris(2026, 10, 26)) == [utc(2026, 10, 24, 23, 30)]


def test_an_hourly_wildcard_follows_elapsed_time_through_both_transitions() -> None:
    every_half_hour = Cron("*/30 * * * *", tz="Europe/Paris")
    # the repeated hour fires in both passes: 4 firings between 02:00 CEST and 03:00 CET
    assert len(fires(every_half_hour, utc(2026, 10, 25, 0) - 1, utc(2026, 10, 25, 2) - 1)) == 4
    # the skipped hour does not fire: 01:00, 01:30, 03:00, 03:30 local
    assert len(fires(every_half_hour, paris(2026, 3, 29, 0, 59), paris(2026, 3, 29, 3, 30))) == 4


@pytest.mark.parametrize("expr", ["30 2 * * *", "*/30 * * * *", "0 3 * * 0", "15 2,3 * * *"])
def test_cron_backward_agrees_with_forward_across_both_transitions(expr: str) -> None:
    job = Cron(expr, tz="Europe/Paris")
    for start, end in [(paris(2026, 3, 27), paris(2026, 4, 1)),
                       (paris(2026, 10, 23), paris(2026, 10, 28))]:
        forward = fires(job, start, end)
        assert job.fires_between(start, end, 1000) == forward
        assert job.fires_between(start, end, 3) == forward[-3:]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cron": "61 * * * *"}, "bad cron expression '61 * * * *'"),
    ({"cron": "* * *"}, "bad cron expression"),
    ({"cron": "0 0 30 2 *"}, "bad cron expression"),
    ({"cron": "0 3 * * *", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"every": 0}, "every must be above zero"),
    ({"every": "-1s"}, "every '-1s' is not a duration"),
    ({"every": "30s", "jitter": "30s"}, "jitter (30 s) must be less than the interval"),
    ({"cron": "0 3 * * *", "every": "1h"}, "exactly one"),
    ({}, "exactly one"),
    ({"every": "1s", "missed": "sometimes"}, "missed must be one of skip, latest, all"),
    ({"every": "1s", "max_catch_up": 0}, "max_catch_up must be at least 1"),
    ({"every": "1s", "data": object()}, "schedule 'job'"),
])
def test_a_bad_declaration_fails_when_declared(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(AppError, match="schedule 'job'") as info:
        ScheduleSource("job", to=QUEUE, **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_due_skip_latest_all_and_the_cap() -> None:
    every = Every("10s")
    assert due(every, None, 1000.0, "all", 100) == []  # no record: nothing was missed
    assert due(every, 900.0, 1000.0, "skip", 100) == []
    assert due(every, 900.0, 1000.0, "latest", 100) == [1000.0]
    assert due(every, 900.0, 1000.0, "all", 100) == [910.0 + 10 * k for k in range(10)]
    assert due(every, 900.0, 1000.0, "all", 3) == [980.0, 990.0, 1000.0]  # the latest three
    assert due(every, 1000.0, 1000.0, "all", 100) == []
    assert due(every, 1005.0, 1000.0, "latest", 100) == []  # a record ahead of this clock
    nightly = Cron("30 2 * * *", tz="Europe/Paris")
    assert due(nightly, paris(2026, 3, 27, 12), paris(2026, 3, 30, 12), "all", 100) == [
        paris(2026, 3, 28, 2, 30), utc(2026, 3, 29, 1), paris(2026, 3, 30, 2, 30)]
    with pytest.raises(AppError, match="missed must be"):
        due(every, 0.0, 1.0, "never", 1)


# -- the source on a manual clock ------------------------------------------------------------
class Flaky(MemoryBroker):
    """A memory broker whose sends fail while ``down``, and let other tasks run first while
    ``slow`` (as a network round trip does)."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.down = False
        self.slow = False
        self.bugs = 0
        self.failures = 0

    async def send(self, queue: str, messages: Sequence[Message]) -> list[bool]:
        if self.down:
            self.failures += 1
            raise BrokerUnavailable("the broker is down")
        if self.bugs:
            self.bugs -= 1
            raise RuntimeError("a bug below the emitter")
        if self.slow:
            for _ in range(3):
                await asyncio.sleep(0)
        return await super().send(queue, messages)


class World:
    """A broker, a queue and a manual clock shared by the nodes of a test."""

    def __init__(self, start: float) -> None:
        self.clock = ManualClock(start)
        self.broker = Flaky(self.clock)
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, source: ScheduleSource, node: str) -> None:
        producer = Producer(self.broker, source="/test", clock=self.clock)
        emitter = Emitter(producer, self.broker.kv, QUEUE, source.stats,
                          source=f"/schedules/{source.name}")
        env = SourceEnv(app=APP, node=node, emitter=emitter, kv=self.broker.kv, clock=self.clock)
        self.tasks.append(asyncio.create_task(source.run(env)))

    async def settle(self) -> None:
        for _ in range(30):
            await asyncio.sleep(0)

    async def advance(self, seconds: float, step: float = 0.25) -> None:
        await self.settle()
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            await self.settle()

    async def events(self) -> list[Event[object]]:
        return [Event.from_json(d.body) for d in await self.broker.peek(QUEUE, 10_000)]

    async def record(self, name: str, last: LastFire) -> None:
        await self.broker.kv.put(keys.schedule(APP, name) + "last", msgspec.json.encode(last))

    async def last(self, name: str) -> LastFire:
        entry = await self.broker.kv.get(keys.schedule(APP, name) + "last")
        assert entry is not None
        return msgspec.json.decode(entry.value, type=LastFire)


START = 1_800_000_000.0  # a whole minute: 2027-01-15 08:00:00 UTC


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World(START)
    await w.broker.declare_queue(QueueSpec(name=QUEUE))
    yield w
    for task in w.tasks:
        task.cancel()
    await asyncio.gather(*w.tasks, return_exceptions=True)
    for task in w.tasks:
        assert task.cancelled(), "a schedule's loop ended on its own"


def ids_and_times(events: list[Event[object]]) -> list[tuple[str, float]]:
    return sorted((e.id, e.time.timestamp()) for e in events if e.time is not None)


async def test_every_emits_one_event_per_fire_time_with_the_scheduled_time(world: World) -> None:
    source = ScheduleSource("poll", to=QUEUE, every="1s", data={"region": "eu"})
    assert isinstance(source, Source)
    world.start(source, "a")
    await world.advance(5)
    events = await world.events()
    expected = [START + k for k in range(1, 6)]
    assert ids_and_times(events) == [(f"sched-poll-{round(t * 1000)}", t) for t in expected]
    first = events[0]
    assert first.type == EVENT_TYPE
    assert first.source == "/schedules/poll"
    assert first.data == {"schedule": "poll", "scheduled_time": "2027-01-15T08:00:01+00:00",
                          "fired_at": "2027-01-15T08:00:01+00:00", "catch_up": False,
                          "data": {"region": "eu"}}
    assert (source.stats.received, source.stats.emitted, source.stats.errors) == (5, 5, 0)
    assert source.stats.lag_s == 0.0
    last = await world.last("poll")
    assert (last.fire_time, last.node, last.outcome) == (START + 5, "a", "stored")


async def test_three_nodes_fire_each_time_once(world: World) -> None:
    nodes = [ScheduleSource("poll", to=QUEUE, every="1s") for _ in range(3)]
    for i, source in enumerate(nodes):
        world.start(source, f"node-{i}")
    await world.advance(20)
    got = ids_and_times(await world.events())
    assert [t for _, t in got] == [START + k for k in range(1, 21)]
    assert len({i for i, _ in got}) == 20
    assert sum(s.stats.emitted for s in nodes) == 20
    assert sum(s.stats.received for s in nodes) == 60
    assert sum(s.stats.errors for s in nodes) == 0


async def test_nodes_that_lose_a_claim_see_it_stored_soon_after(world: World) -> None:
    world.broker.slow = True  # the losers look while the winner is still sending
    nodes = [ScheduleSource("poll", to=QUEUE, every="1s") for _ in range(3)]
    for i, source in enumerate(nodes):
        world.start(source, f"node-{i}")
    await world.advance(20)
    got = ids_and_times(await world.events())
    assert [t for _, t in got] == [START + k for k in range(1, 21)]
    assert sum(s.stats.emitted for s in nodes) == 20
    # each loser looked again a second later and found it stored, so it let the fire time go
    # (the last one's losers still wait) and stored nothing: no duplicate reached the queue
    assert sum(s.stats.pending for s in nodes) == 2
    assert sum(s.stats.duplicates for s in nodes) == 0


async def test_jitter_delays_the_send_never_the_fire_time(world: World) -> None:
    nodes = [ScheduleSource("poll", to=QUEUE, every="10s", jitter="5s") for _ in range(3)]
    for i, source in enumerate(nodes):
        world.start(source, f"node-{i}")
    await world.advance(60, step=0.5)
    deliveries = await world.broker.peek(QUEUE, 100)
    events = [Event.from_json(d.body) for d in deliveries]
    assert [t for _, t in ids_and_times(events)] == [START + 10 * k for k in range(1, 6)]
    for d, e in zip(deliveries, events, strict=True):
        assert e.time is not None
        assert e.time.timestamp() <= d.enqueued_at < e.time.timestamp() + 5


@pytest.mark.parametrize(("missed", "cap", "caught_up"), [
    ("skip", 100, []),
    ("latest", 100, [START]),
    ("all", 100, [START - 9 + k for k in range(10)]),
    ("all", 4, [START - 3, START - 2, START - 1, START]),
])
async def test_missed_runs_on_start(world: World, missed: str, cap: int,
                                    caught_up: list[float]) -> None:
    await world.record("poll", LastFire(fire_time=START - 10, fired_at=START - 10,
                                        event_id="sched-poll-old", node="gone", outcome="stored"))
    source = ScheduleSource("poll", to=QUEUE, every="1s", missed=missed, max_catch_up=cap)
    world.start(source, "a")
    await world.advance(2)
    events = await world.events()
    back = sorted(e.time.timestamp() for e in events if e.data["catch_up"])  # type: ignore[index, union-attr]
    on_time = sorted(e.time.timestamp() for e in events if not e.data["catch_up"])  # type: ignore[index, union-attr]
    assert back == caught_up
    assert on_time == [START + 1, START + 2]
    assert (await world.last("poll")).fire_time == START + 2


@pytest.mark.parametrize(("missed", "cap", "caught_up"), [
    ("skip", 100, []),
    ("latest", 100, [START + 241]),
    ("all", 100, [START + 142 + k for k in range(100)]),
])
async def test_a_stalled_loop_fires_the_recent_and_applies_missed_to_the_older(
        world: World, missed: str, cap: int, caught_up: list[float]) -> None:
    source = ScheduleSource("poll", to=QUEUE, every="1s", missed=missed, max_catch_up=cap)
    world.start(source, "a")
    await world.advance(1)
    world.clock.advance(300)  # the node was frozen for 5 minutes (a suspended VM, a GC pause)
    await world.advance(0.25)
    events = await world.events()
    back = sorted(e.time.timestamp() for e in events if e.data["catch_up"])  # type: ignore[index, union-attr]
    on_time = sorted(e.time.timestamp() for e in events if not e.data["catch_up"])  # type: ignore[index, union-attr]
    assert back == caught_up
    assert on_time == [START + 1] + [START + 242 + k for k in range(60)]  # late by under LATE_S


async def test_no_record_means_nothing_was_missed(world: World) -> None:
    source = ScheduleSource("nightly", to=QUEUE, cron="* * * * *", missed="all")
    world.start(source, "a")
    await world.advance(30)
    assert await world.events() == []
    await world.advance(31)
    assert [t for _, t in ids_and_times(await world.events())] == [START + 60]


async def test_the_last_record_never_goes_backwards(world: World) -> None:
    ahead = LastFire(fire_time=START + 100, fired_at=START + 100, event_id="x", node="fast",
                     outcome="stored")
    await world.record("poll", ahead)
    source = ScheduleSource("poll", to=QUEUE, every="1s", missed="all")
    world.start(source, "a")
    await world.advance(3)
    assert len(await world.events()) == 3
    assert await world.last("poll") == ahead


async def test_a_broker_outage_delays_fires_but_stores_each_once(world: World) -> None:
    nodes = [ScheduleSource("poll", to=QUEUE, every="1s") for _ in range(3)]
    for i, source in enumerate(nodes):
        world.start(source, f"node-{i}")
    await world.advance(3)
    world.broker.down = True
    await world.advance(8)
    assert world.broker.failures > 0
    assert len(await world.events()) == 3
    world.broker.down = False
    lags = []
    for _ in range(40):  # backoff is at most 30 s
        await world.advance(1)
        lags += [s.stats.lag_s or 0.0 for s in nodes]
    got = ids_and_times(await world.events())
    assert [t for _, t in got] == [START + k for k in range(1, 52)]
    assert sum(s.stats.errors for s in nodes) == world.broker.failures
    assert all(s.stats.pending == 0 for s in nodes)
    assert max(lags) > 1  # the delayed ones went out late, and said so
    assert (await world.last("poll")).fire_time == START + 51


async def test_an_unexpected_error_is_retried_not_fatal(world: World) -> None:
    world.broker.bugs = 1
    source = ScheduleSource("poll", to=QUEUE, every="1s")
    world.start(source, "a")
    await world.advance(4)
    assert source.stats.errors == 1
    assert source.stats.last_error == "RuntimeError: a bug below the emitter"
    assert [t for _, t in ids_and_times(await world.events())] == [START + k for k in range(1, 5)]


async def test_a_kv_outage_is_survived(world: World) -> None:
    source = ScheduleSource("poll", to=QUEUE, every="1s")
    kv = world.broker.kv
    real = kv.put_if_absent
    down = True

    async def refuse(key: str, value: bytes, ttl_s: float | None = None) -> int | None:
        if down:
            raise BrokerUnavailable("kv down")
        return await real(key, value, ttl_s)

    kv.put_if_absent = refuse  # type: ignore[method-assign]
    world.start(source, "a")
    await world.advance(3)
    assert await world.events() == []
    assert source.stats.errors >= 3
    down = False
    await world.advance(5)
    assert [t for _, t in ids_and_times(await world.events())] == [START + k for k in range(1, 9)]


async def test_a_claim_whose_holder_died_is_taken_over_after_its_ttl(world: World) -> None:
    fire = START + 2
    claim = keys.schedule(APP, "poll") + f"fire/{round(fire * 1000)}"
    await world.broker.kv.put(claim, b'["ghost","claimed"]', ttl_s=CLAIM_TTL_S)
    source = ScheduleSource("poll", to=QUEUE, every="1s")
    world.start(source, "a")
    await world.advance(10)
    times = [t for _, t in ids_and_times(await world.events())]
    assert fire not in times
    assert source.stats.pending == 1
    await world.advance(CLAIM_TTL_S)
    times = [t for _, t in ids_and_times(await world.events())]
    assert times.count(fire) == 1
    assert times == [START + k for k in range(1, 71)]
    assert source.stats.pending == 0


@pytest.mark.parametrize(("start", "expected"), [
    (paris(2026, 3, 29, 0), [utc(2026, 3, 29, 1)]),  # 03:00 CEST, right after the gap
    (paris(2026, 10, 25, 0), [utc(2026, 10, 25, 0, 30)]),  # 02:30 CEST, first pass only
])
async def test_a_dst_night_fires_the_0230_job_once(start: float, expected: list[float]) -> None:
    w = World(start)
    await w.broker.declare_queue(QueueSpec(name=QUEUE))
    nodes = [ScheduleSource("night", to=QUEUE, cron="30 2 * * *", tz="Europe/Paris")
             for _ in range(2)]
    for i, source in enumerate(nodes):
        w.start(source, f"node-{i}")
    try:
        await w.advance(5 * 3600, step=60)
        assert [t for _, t in ids_and_times(await w.events())] == expected
        tomorrow = datetime.fromtimestamp(start, PARIS).date() + timedelta(days=1)
        assert nodes[0].detail()["next"][0].startswith(tomorrow.isoformat())
    finally:
        for task in w.tasks:
            task.cancel()
        await asyncio.gather(*w.tasks, return_exceptions=True)


async def test_detail_and_the_schedules_table(world: World) -> None:
    nightly = ScheduleSource("nightly", to="reports", cron="0 3 * * *", tz="Europe/Paris",
                             missed="latest")
    poll = ScheduleSource("poll", to=QUEUE, every="1s", jitter="0.5s")
    world.start(poll, "node-a")
    await world.advance(2.75)  # the fire at +2 is sent by +2.5
    detail = poll.detail()
    assert detail["every"] == "1s"
    assert detail["jitter"] == "0.5s"
    assert detail["next"] == ["2027-01-15T08:00:03+00:00", "2027-01-15T08:00:04+00:00",
                              "2027-01-15T08:00:05+00:00"]
    assert detail["last"]["fire_time"] == START + 2
    assert nightly.detail()["cron"] == "0 3 * * *"
    assert nightly.detail()["tz"] == "Europe/Paris"
    assert "last" not in nightly.detail()

    views = await read_schedules(world.broker.kv, APP, [poll, nightly], world.clock.time())
    assert [v.source.name for v in views] == ["nightly", "poll"]
    assert views[0].last is None
    assert views[1].last is not None and views[1].last.outcome == "stored"
    console = Console(width=80, record=True, color_system=None)
    console.print(schedules_table(views, APP))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for needle in ("nightly", "cron 0 3 * * *", "Europe/Paris", "2027-01-16 03:00:00", "never",
                   "every 1s", "stored", "node-a", "→ reports"):
        assert needle in text, needle
