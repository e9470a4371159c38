"""Apps with many queues (issue 11, items 2 and 3): an event from another process is picked up
at once whichever queue it goes to; a node with a thousand idle functions starts, keeps its
heartbeat and its status records, and costs little per tick.

The process tests run ``swell run`` on ``apps/many_queues_app.py`` (N queues, one function each)
and send from this process. No wall-clock figure is asserted: a bound here is one that only a lost
wake-up (the receive wait is 5 s) or a missed heartbeat (its TTL is 5 s) would miss.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
import pytest

from support.swellprocs import AppConfig, Swell, complete_lines
from swell import App, Producer, open_broker
from swell.brokers.base import Broker, QueueStats
from swell.brokers.memory import MemoryBroker
from swell.core.clock import ManualClock
from swell.runtime.cluster import NODES_PREFIX, STATUS_PREFIX, NodeInfo
from swell.runtime.runtime import REST_TICKS, Runtime

APP = Path(__file__).parent / "apps" / "many_queues_app.py"
CONFIG = AppConfig(visibility_s=30, max_receives=5, sleep_s=0, concurrency="auto")  # (unused)
LOST_S = 2.0  # well under the 5 s receive wait
TTL_S = 5.0  # a node's records outlive its last write by this long


def start(swell: Swell, monkeypatch: pytest.MonkeyPatch, queues: int,
          ready_s: float = 60.0) -> int:
    """``swell run`` the app with ``queues`` queues; its pid once it runs."""
    monkeypatch.setenv("SWELL_TEST_QUEUES", str(queues))
    proc = swell.start(CONFIG, app=APP)
    deadline = time.monotonic() + ready_s
    while "swell: running" not in swell.log(proc):
        assert proc.poll() is None, f"swell run exited:\n{swell.log(proc)}"
        assert time.monotonic() < deadline, f"not started within {ready_s:g} s"
        time.sleep(0.05)
    return proc.pid


async def picked_up(swell: Swell, producer: Producer, queue: int) -> float:
    """Send one event to ``q<queue>``; how long until its handler started (fails past LOST_S)."""
    sent = time.time()
    await producer.send(f"q{queue}", {"sent": sent})
    deadline = time.monotonic() + LOST_S
    while time.monotonic() < deadline:
        for line in complete_lines(swell.sink):
            q, at, started = line.split()
            if int(q) == queue and float(at) == sent:
                return float(started) - sent
        await asyncio.sleep(0.005)
    raise AssertionError(f"an event to q{queue} was not picked up within {LOST_S:g} s "
                         f"(a lost wake-up waits out the 5 s receive)")


async def test_an_event_to_the_second_of_two_queues_is_picked_up_at_once(
        swell: Swell, monkeypatch: pytest.MonkeyPatch) -> None:
    start(swell, monkeypatch, 2)
    broker = open_broker(swell.url)
    try:
        producer = Producer(broker, source="/tests/many")
        for gap_s in (1.0, 0.3, 2.0):  # idle in between: every receive waits, the poll backs off
            await asyncio.sleep(gap_s)
            await picked_up(swell, producer, 1)
        await picked_up(swell, producer, 0)
    finally:
        await broker.close()


@pytest.mark.timeout(150)
async def test_a_thousand_queue_app_starts_keeps_its_heartbeat_and_picks_up(
        swell: Swell, monkeypatch: pytest.MonkeyPatch) -> None:
    start(swell, monkeypatch, 1000)
    broker = open_broker(swell.url)
    try:
        oldest = 0.0
        watch_until = time.monotonic() + 2 * TTL_S  # past one TTL: records must have been renewed
        while time.monotonic() < watch_until:
            nodes = await broker.kv.scan(f"{NODES_PREFIX}many/")
            assert nodes, "the node's heartbeat expired: its peers would think it dead"
            seen = msgspec.json.decode(nodes[0].value, type=NodeInfo).seen
            oldest = max(oldest, time.time() - seen)
            await asyncio.sleep(0.2)
        assert oldest < TTL_S, f"the heartbeat went {oldest:.1f} s without a write"
        statuses = await broker.kv.scan(f"{STATUS_PREFIX}many/")
        assert len(statuses) == 1000, "status records of idle functions lapsed"

        producer = Producer(broker, source="/tests/many")
        for queue in (999, 0, 500):
            await picked_up(swell, producer, queue)
    finally:
        await broker.close()


# -- in one process, on a manual clock ------------------------------------------------------------


def idle_app(n: int, handled: list[int] | None = None) -> App:
    """``n`` queues, one function each, that note which function handled an event."""
    app = App("many")

    def handler(i: int) -> Callable[[dict[str, float]], Awaitable[None]]:
        async def handle(data: dict[str, float]) -> None:
            if handled is not None:
                handled.append(i)
        return handle

    for i in range(n):
        app.function(app.queue(f"q{i}"), name=f"h{i}")(handler(i))
    return app


async def manual_runtime(app: App, broker: Broker, clock: ManualClock) -> Runtime:
    """A started runtime whose ticks the test drives (its own tick loop is stopped)."""
    rt = Runtime(app, broker, clock=clock)
    await rt.start()
    assert rt._scaler is not None
    rt._scaler.cancel()
    await asyncio.gather(rt._scaler, return_exceptions=True)
    return rt


async def ticks(rt: Runtime, clock: ManualClock, n: int) -> None:
    for _ in range(n):
        clock.advance(rt.tick_s)
        await asyncio.sleep(0)
        await rt.tick()


async def test_unchanged_status_records_are_renewed_before_they_lapse_not_every_tick() -> None:
    clock = ManualClock()
    broker = MemoryBroker(clock=clock)
    rt = await manual_runtime(idle_app(3), broker, clock)
    try:
        key = f"{STATUS_PREFIX}many/h1/{rt.node}"
        revisions = set()
        for _ in range(40):  # 20 s
            await ticks(rt, clock, 1)
            entry = await broker.kv.get(key)
            assert entry is not None, f"the record lapsed at {clock.monotonic():g} s"
            revisions.add(entry.revision)
        assert 20 / TTL_S <= len(revisions) < 40 / 2, revisions
    finally:
        await rt.stop()


async def test_a_function_at_rest_is_sampled_seldom_and_at_once_again_when_work_comes() -> None:
    clock = ManualClock()
    broker = MemoryBroker(clock=clock)
    handled: list[int] = []
    rt = await manual_runtime(idle_app(2, handled), broker, clock)
    try:
        st = rt.functions["h1"]
        await ticks(rt, clock, 4)  # two samples that say the same: at rest
        before = len(st.history)
        await ticks(rt, clock, 2 * REST_TICKS)
        assert len(st.history) - before <= 2, "a function at rest was sampled every tick"
        assert st.decision.desired == 0

        await rt.send("q1", {"sent": 0.0})
        for _ in range(100):  # the activator takes it, without a tick
            if handled:
                break
            await asyncio.sleep(0)
        assert handled == [1]
        before = len(st.history)
        await ticks(rt, clock, 4)
        assert len(st.history) - before >= 3, "work came, but the function was not sampled"
        samples = list(st.history)
        woke = next(i for i, x in enumerate(samples) if x.attempts)  # the first with the work
        assert samples[woke].t - samples[woke - 1].t == pytest.approx(rt.tick_s), (
            "its controller saw the rest as one long tick")
    finally:
        await rt.stop()


class StuckStats(MemoryBroker):
    """Its ``stats_many`` hangs while ``stuck`` is set, as a slow backend would."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.stuck = False
        self.calls = 0
        self._free = asyncio.Event()

    async def stats_many(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        self.calls += 1
        if self.stuck:
            await self._free.wait()
        return await super().stats_many(queues)


async def test_the_heartbeat_beats_while_a_tick_is_stuck() -> None:
    clock = ManualClock()
    broker = StuckStats(clock)
    rt = Runtime(idle_app(2), broker, clock=clock)
    await rt.start()
    try:
        broker.stuck = True
        for _ in range(12):  # 6 s: past the TTL
            clock.advance(rt.tick_s)
            for _ in range(20):
                await asyncio.sleep(0)
            entry = await broker.kv.get(f"{NODES_PREFIX}many/{rt.node}")
            assert entry is not None, "the heartbeat lapsed behind a stuck tick"
            seen = msgspec.json.decode(entry.value, type=NodeInfo).seen
            assert clock.time() - seen <= rt.tick_s, "the heartbeat waited for the tick"
        assert broker.calls == 1, "the tick was not stuck after all"
    finally:
        await rt.stop()
