"""The dispatcher's lease invariant (see ``swell.runtime.dispatcher``), checked step by step.

Every leased event is started, or released to its queue, within one visibility timeout, and at
once when the node's limit no longer covers it; a lease is renewed only while a unit works on its
event. Here two dispatchers ("nodes") share one queue on the memory broker with a manual clock;
limits, the activator flag, sends, time and stops mid-batch change at random, and the invariant is
checked after every step. At the end every event has been handled, none ran twice at once, and
nothing is left in flight.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from swell import App
from swell.brokers.memory import MemoryBroker
from swell.brokers.producer import Producer
from swell.core.clock import ManualClock
from swell.runtime.dispatcher import Dispatcher
from swell.runtime.executor import InlineExecutor

LEASE_S = 10.0


@dataclass
class World:
    clock: ManualClock
    broker: MemoryBroker
    app: App
    running: set[int] = field(default_factory=set)
    done: list[int] = field(default_factory=list)
    started: list[int] = field(default_factory=list)
    overlaps: list[int] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)


async def world(seed: int, max_receives: int = 0) -> World:
    clock = ManualClock()
    w = World(clock, MemoryBroker(clock=clock), App("inv"), rng=random.Random(seed))
    q = w.app.queue("q", visibility_timeout=LEASE_S, max_receives=max_receives)
    await w.broker.declare_queue(q.spec)

    @w.app.function("q", concurrency=4)
    async def handle(data: dict[str, float]) -> None:
        n = int(data["n"])
        if n in w.running:
            w.overlaps.append(n)  # started again while another unit still works on it
        w.running.add(n)
        w.started.append(n)
        try:
            await clock.sleep(data["s"])
        finally:
            w.running.discard(n)
        w.done.append(n)

    return w


def dispatcher(w: World) -> Dispatcher:
    fn = w.app.functions["handle"]
    producer = Producer(w.broker, source="/t", clock=w.clock)
    d = Dispatcher(fn, w.broker, producer, w.clock, fn.queue.spec,
                   InlineExecutor(fn, producer, fn.controller().max_units))
    d.start()
    return d


async def settle() -> None:
    """Let every task run until the loop is quiet (the manual clock does not move)."""
    for _ in range(3):
        await asyncio.sleep(0.003)  # past the lease loop's 2 ms re-look


async def check(w: World, nodes: list[Dispatcher]) -> None:
    now = w.clock.monotonic()
    held = 0
    for d in nodes:
        started = {dl.receipt for dl in d._workers.values() if dl is not None}
        # renewed only while a unit works on it
        assert set(d._lease_until) <= started, "a lease is kept for an event no unit works on"
        for dl, until in d._buffer:
            assert until > now, f"event {dl.receipt.id} sat in the buffer past its lease"
            assert until - now >= LEASE_S / 6, "a buffered event waited most of its lease"
        if d.limit == 0:
            assert not d._buffer, "events buffered on a node with no unit to start them"
        held += len(d._buffer) + len(started)
    stats = await w.broker.stats("q")
    assert stats.in_flight == held, f"{stats.in_flight} leased but {held} held by the nodes"


@pytest.mark.parametrize("seed", range(6))
async def test_every_leased_event_is_started_or_released(seed: int) -> None:
    w = await world(seed)
    rng = w.rng
    nodes = [dispatcher(w), dispatcher(w)]
    sent = 0
    for _step in range(160):
        action = rng.random()
        if action < 0.25:
            k = rng.randint(1, 15)
            for _ in range(k):
                # mostly short handlers; some outlive a lease (renewed while they run)
                s = rng.choice([0.0, 0.01, 0.2, 1.0, 3.0, 2.5 * LEASE_S])
                await nodes[0].producer.send("q", {"n": sent, "s": s})
                sent += 1
        elif action < 0.55:
            d = rng.choice(nodes)
            d.activator = rng.random() < 0.5
            await d.set_limit(rng.choice([0, 0, 1, 2, 3, 4]))
        elif action < 0.62:
            i = rng.randrange(len(nodes))  # a node stops mid-batch; another takes its place
            await nodes[i].stop(grace_s=rng.choice([0.0, 0.01]))
            nodes[i] = dispatcher(w)
        else:
            # a live node: time moves in steps its lease keeper can follow (a node frozen for a
            # whole lease loses its leases, and at-least-once then means a second run)
            w.clock.advance(rng.choice([0.01, 0.3, 1.0, LEASE_S / 4]))
        await settle()
        await check(w, nodes)

    for d in nodes:  # now give the work units and time to finish
        d.activator = True
        await d.set_limit(4)
    for _ in range(600):
        if len(set(w.done)) == sent:
            break
        w.clock.advance(LEASE_S / 4)
        await settle()
        await check(w, nodes)
    for d in nodes:
        await d.stop(grace_s=0.0)
    stats = await w.broker.stats("q")
    assert len(set(w.done)) == sent, f"{sent - len(set(w.done))} of {sent} events never handled"
    assert w.overlaps == [], "an event ran on two units at once"
    assert (stats.depth, stats.in_flight) == (0, 0)


async def test_a_node_whose_limit_falls_to_zero_releases_its_buffer_at_once() -> None:
    """The stranding seen with several nodes: a share of zero must not keep prefetched events."""
    w = await world(0)
    a = dispatcher(w)
    await a.set_limit(1)
    await a.producer.send("q", {"n": 100, "s": 0.0})  # a quick one: the unit now leases ahead
    await settle()
    for n in range(20):
        await a.producer.send("q", {"n": n, "s": 1.0})
    await settle()
    assert len(a._buffer) == 19 and a.in_flight == 1
    a.activator = False
    await a.set_limit(0)  # this node's share is now zero: another node works the function
    await settle()
    assert not a._buffer
    stats = await w.broker.stats("q")
    assert (stats.depth, stats.in_flight) == (19, 1)  # only the started one is still held
    # the released ones were not counted as receives
    got = await w.broker.receive("q", 50, wait_s=0)
    assert {d.receive_count for d in got} == {1}
    await w.broker.release([d.receipt for d in got], count=False)
    w.clock.advance(1.0)
    await settle()
    await a.stop(grace_s=0.0)


async def test_a_graceful_stop_is_not_an_attempt() -> None:
    """A long handler interrupted by graceful restarts on a max_receives=2 queue is not
    dead-lettered: a release at a graceful stop is not a receive."""
    w = await world(0, max_receives=2)
    producer = Producer(w.broker, source="/t", clock=w.clock)
    await producer.send("q", {"n": 0, "s": 60.0})
    for restart in range(3):
        d = dispatcher(w)
        await d.set_limit(1)
        await settle()
        assert len(w.started) == restart + 1
        await d.stop(grace_s=0.0)  # graceful, with no time to finish
    assert (await w.broker.stats("q.dlq")).depth == 0
    got = await w.broker.receive("q", 1, wait_s=0)
    assert [d.receive_count for d in got] == [1]
