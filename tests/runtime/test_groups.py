"""Consumer groups in one process: every event once, in order per key; retries hold the partition;
a poison event goes to the group's dead-letter queue; checkpoints; the sticky assignment."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.eventually import until
from swell import App, Event, Retry, Runtime
from swell.brokers.base import Message
from swell.brokers.logs import committed
from swell.runtime.assignment import assign
from swell.runtime.groups import GroupDispatcher
from swell.triggers.base import SourceEnv, SourceStats


def events(n: int, keys: int) -> list[Message]:
    from swell import Producer
    from swell.brokers.memory import MemoryBroker

    producer = Producer(MemoryBroker(), source="/t")
    out = []
    for i in range(n):
        key = f"k{i % keys}"
        e = producer.event("clicks", {"i": i, "key": key}, key=key)
        out.append(Message(body=e.to_json(), key=key))
    return out


@pytest.fixture(params=["sqlite", "nats"])
def group_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A broker URL that two Runtimes in turn can open: a SQLite file, or a NATS server of the
    tests' own with a namespace of this test's."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 's.db'}"
    server: str = request.getfixturevalue("nats_server")
    return f"{server}?namespace=g{uuid.uuid4().hex[:10]}"


async def test_a_group_handles_every_event_once_in_order_per_key(group_url: str) -> None:
    app = App("g")
    clicks = app.stream("clicks", partitions=4)
    seen: list[tuple[str, int]] = []

    @app.function(clicks.group("analytics", checkpoint_every=10), concurrency=4)
    async def count(event: Event[dict[str, Any]]) -> None:
        assert event.data is not None
        seen.append((event.data["key"], event.data["i"]))

    n = 1000
    async with Runtime(app, group_url) as rt:
        await rt.broker.append("clicks", events(n, 20))
        await until(lambda: len(seen) >= n)
        await asyncio.sleep(0.2)
    assert len(seen) == n and len(set(seen)) == n
    by_key: dict[str, list[int]] = {}
    for key, i in seen:
        by_key.setdefault(key, []).append(i)
    assert all(xs == sorted(xs) for xs in by_key.values()), "order per key was lost"

    async with Runtime(app, group_url) as rt:  # a graceful stop committed
        done = await committed(rt.broker.kv, "clicks", "analytics")
        assert done == dict(enumerate(await rt.broker.end_offsets("clicks")))
        await asyncio.sleep(0.3)
    assert len(seen) == n, "a restart after a graceful stop handled events again"


async def test_retries_hold_the_partition_and_a_poison_event_is_dead_lettered() -> None:
    app = App("g")
    s = app.stream("s", partitions=1)
    seen: list[int] = []
    tries: Counter[int] = Counter()

    @app.function(s.group("g"), retry=Retry(attempts=3, backoff=0.01, jitter=False))
    async def h(data: dict[str, Any]) -> None:
        tries[data["i"]] += 1
        if data["i"] == 3 or (data["i"] == 5 and tries[5] < 2):
            raise RuntimeError(f"boom {data['i']}")
        seen.append(data["i"])

    from swell.brokers.memory import MemoryBroker

    async with Runtime(app, MemoryBroker()) as rt:
        await rt.broker.append("s", events(8, 1))
        await until(lambda: len(seen) == 7)
        dlq = await rt.broker.peek("s.g.dlq")
        m = rt.functions["h"].dispatcher.metrics
    assert seen == [0, 1, 2, 4, 5, 6, 7], "the partition did not wait for the retries"
    assert tries[3] == 3 and tries[5] == 2
    assert len(dlq) == 1 and dlq[0].headers["swell-offset"] == "3"
    assert dlq[0].headers["swell-dlq-reason"] == "failed after 3 attempt(s)"  # as a queue's
    assert (m.succeeded, m.dead_lettered, m.attempts, m.errors, m.retried) == (7, 1, 11, 4, 3)


@given(st.integers(1, 16), st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True),
       st.data())
def test_the_assignment_is_balanced_and_sticky(partitions: int, nodes: list[str],
                                               data: st.DataObject) -> None:
    first = assign(partitions, nodes, {})
    loads = Counter(first.values())
    assert sorted(first) == list(range(partitions))
    assert max(loads.values()) - min(loads.get(n, 0) for n in nodes) <= 1
    # one node joins, or one leaves: the others keep what they can
    joined = [*nodes, "z"]
    after = assign(partitions, joined, first)
    moved = sum(1 for p in range(partitions) if after[p] != first[p])
    assert moved <= -(-partitions // len(joined)), (first, after)
    if len(nodes) > 1:
        gone = data.draw(st.sampled_from(nodes))
        left = [n for n in nodes if n != gone]
        after = assign(partitions, left, first)
        assert all(after[p] == first[p] for p in range(partitions) if first[p] != gone)


@pytest.mark.parametrize("partitions", [8])
async def test_two_runtimes_split_the_partitions(tmp_path: Path, partitions: int) -> None:
    app = App("g")
    s = app.stream("s", partitions=partitions)
    seen: list[tuple[int, int]] = []

    @app.function(s.group("g"), concurrency=8)
    async def h(data: dict[str, Any]) -> None:
        seen.append((data["i"], id(asyncio.current_task())))

    url = f"sqlite:///{tmp_path / 's.db'}"

    def owned(rt: Runtime) -> set[int]:
        d = rt.functions["h"].dispatcher
        assert isinstance(d, GroupDispatcher)
        return set(d.partitions)

    async with Runtime(app, url, tick_s=0.1) as a:
        await a.broker.append("s", events(200, 40))
        await until(lambda: len(owned(a)) == partitions)  # alone, it works them all
        async with Runtime(app, url, tick_s=0.1) as b:
            # b joins once it has been seen for a while; a hands half over
            await until(lambda: len(owned(a)) == len(owned(b)) == partitions // 2)
            assert not owned(a) & owned(b)
            await a.broker.append("s", events(200, 40))
            await until(lambda: len(seen) >= 400)
    assert len(seen) == 400 and len({i for i, _ in seen}) == 200


async def test_a_node_with_no_unit_holds_no_partition(tmp_path: Path) -> None:
    """``concurrency=1`` over two nodes: one node's share is zero, so the leader assigns it no
    partition; every event is handled (none waits on a node with no unit to run it)."""
    app = App("g")
    s = app.stream("s", partitions=4)
    seen: list[int] = []

    @app.function(s.group("g"), concurrency=1)
    async def h(data: dict[str, Any]) -> None:
        seen.append(data["i"])

    url = f"sqlite:///{tmp_path / 's.db'}"

    def state(rt: Runtime) -> tuple[int, set[int]]:
        d = rt.functions["h"].dispatcher
        assert isinstance(d, GroupDispatcher)
        return d.limit, set(d.partitions)

    async with Runtime(app, url, tick_s=0.1) as a, Runtime(app, url, tick_s=0.1) as b:
        await a.broker.append("s", events(200, 40))
        await until(lambda: len(seen) >= 200, "every event handled")
        await until(lambda: sorted(state(rt)[0] for rt in (a, b)) == [0, 1], "the split: 1 + 0")
        await asyncio.sleep(1.5)  # past JOIN_AFTER_S: both nodes are members of the group now
        idle = [rt for rt in (a, b) if state(rt)[0] == 0]
        await until(lambda: not state(idle[0])[1], "the node with no unit to let its partitions go")
        await asyncio.sleep(0.5)
        assert not state(idle[0])[1], "a node with no unit took partitions again"
        await a.broker.append("s", events(200, 40))
        await until(lambda: len(seen) >= 400, "every later event handled")
    assert sorted(seen) == sorted([*range(200), *range(200)])


class Held:
    """A source that holds events it has not appended yet (an MQTT burst being stored)."""

    kind: ClassVar[str] = "test"

    def __init__(self, target: str) -> None:
        self.name, self.target, self.stats = "held", target, SourceStats()

    async def run(self, env: SourceEnv) -> None:
        await asyncio.Event().wait()

    def detail(self) -> dict[str, Any]:
        return {}


async def test_what_a_source_holds_for_the_stream_counts_in_the_groups_lag() -> None:
    from swell.brokers.memory import MemoryBroker

    app = App("g")
    s = app.stream("s", partitions=2)
    held = app.sources["held"] = Held("s")
    app.sources["other"] = Held("elsewhere")
    app.sources["other"].stats.pending = 1000

    @app.function(s.group("g"))
    async def h(data: dict[str, Any]) -> None:
        await asyncio.Event().wait()  # (keeps what it takes in flight)

    async with Runtime(app, MemoryBroker()) as rt:
        d = rt.functions["h"].dispatcher
        assert isinstance(d, GroupDispatcher)
        await rt.broker.append("s", events(3, 3))
        held.stats.pending = 40
        assert await d.lag() == 3 + 40  # not the other stream's source's
