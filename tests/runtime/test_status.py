"""The read side (``swell.runtime.status``): what runs on a broker, as typed values, read from the
records the runtime nodes publish; and a Runtime's snapshot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from swell import App, Event
from swell.brokers.memory import MemoryBroker
from swell.core import keys
from swell.runtime.runtime import Runtime
from swell.runtime.status import (
    dead_letter_queue,
    read_dead_letter_queues,
    read_dead_letters,
    read_functions,
    read_status,
    snapshot_of,
)


def shop() -> App:
    app = App("shop")
    orders = app.queue("orders", max_receives=1)
    clicks = app.stream("clicks", partitions=2)

    @app.function(orders)
    async def charge(order: dict[str, Any]) -> None:
        raise ValueError("declined")

    @app.function(clicks.group("g"))
    async def count(event: Event[dict[str, Any]]) -> None:
        pass

    return app


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    b = MemoryBroker()
    yield b
    await b.close()


async def test_a_running_app_reads_as_functions_nodes_queues_and_streams(broker: MemoryBroker) -> None:
    rt = Runtime(shop(), broker, tick_s=0.05)
    await rt.start()
    try:
        await rt.tick()
        status = await read_status(broker, "shop")
    finally:
        await rt.stop(1.0)
    assert [f.name for f in status.functions] == ["shop.charge", "shop.count"]
    charge, count = status.functions
    assert charge.queue == "orders" and charge.group is None
    assert [(n.node, n.leads) for n in charge.nodes] == [(rt.node, True)]
    assert charge.signals.depth == 0  # typed: a Signals, not a dict
    assert count.group == "clicks/g" and len(count.lags) == 2
    assert count.nodes[0].partitions == (0, 1)
    assert [n.node for n in status.nodes] == [rt.node]
    assert {q.queue for q in status.queues} >= {"orders", "orders.dlq"}
    assert [q.queue for q in status.dead_letter_queues] == ["orders.dlq", "clicks.g.dlq"]
    (stream,) = status.streams
    assert stream.spec.name == "clicks" and stream.kept == (0, 0)


async def test_another_apps_records_and_undecodable_ones_are_left_out(broker: MemoryBroker) -> None:
    rt = Runtime(shop(), broker)
    await rt.start()
    try:
        await broker.kv.put(f"{keys.STATUS}shop/charge/old-node", b'{"app": "shop"}')
        assert [f.function for f in await read_functions(broker)] == ["charge", "count"]
        assert await read_functions(broker, "other") == []
    finally:
        await rt.stop(1.0)
    assert await read_functions(broker) == []  # a stopped node takes its records away


async def test_dead_letters_are_read_from_the_queues_dead_letter_queue(broker: MemoryBroker) -> None:
    app = shop()
    rt = Runtime(app, broker, tick_s=0.05)
    await rt.start()
    try:
        await rt.send("orders", {"id": 1})
        for _ in range(200):
            if (await broker.stats("orders.dlq")).total:
                break
            await rt.clock.sleep(0.01)
    finally:
        await rt.stop(1.0)
    assert await dead_letter_queue(broker, "orders") == "orders.dlq"
    assert await dead_letter_queue(broker, "orders.dlq") == "orders.dlq"
    found = await read_dead_letters(broker, "orders", 10)
    assert found.queue == "orders.dlq" and found.total == 1 and len(found.letters) == 1
    assert [q.queue for q in await read_dead_letter_queues(broker, ["orders"])] == ["orders.dlq"]


async def test_a_snapshot_is_an_immutable_copy_of_the_runtime_now(broker: MemoryBroker) -> None:
    rt = Runtime(shop(), broker)
    assert snapshot_of(rt).functions == ()
    await rt.start()
    try:
        snap = snapshot_of(rt)
    finally:
        await rt.stop(1.0)
    assert snap.app == "shop" and snap.node == rt.node
    assert [(f.name, f.queue) for f in snap.functions] == [("charge", "orders"),
                                                           ("count", "clicks/g")]
    with pytest.raises(AttributeError):
        snap.functions[0].desired = 3  # type: ignore[misc]
    msgspec.json.encode(snap)  # plain data: a dashboard can send it as it is
