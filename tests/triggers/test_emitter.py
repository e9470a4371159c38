"""The Emitter stores each event once: on a queue by its dedup window, on a stream (which has
none) by a claim per id in the kv store, so two deliveries of one id never both append."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from swell.brokers.base import Broker, StreamSpec
from swell.brokers.producer import Producer
from swell.brokers.url import open_broker
from swell.core.errors import BrokerError
from swell.triggers.base import Emitter, SourceStats


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    b = open_broker(f"sqlite:///{tmp_path / 'b.db'}")
    await b.declare_stream(StreamSpec(name="hooks", partitions=2))
    try:
        yield b
    finally:
        await b.close()


def emitter(broker: Broker) -> Emitter:
    return Emitter(Producer(broker, source="/t"), broker.kv, "hooks", SourceStats(), source="/t")


async def appended(broker: Broker) -> int:
    return sum(await broker.end_offsets("hooks"))


async def test_one_id_is_appended_once_however_many_deliver_it(broker: Broker) -> None:
    em = emitter(broker)
    results = await asyncio.gather(*(em.emit([em.event({"n": i}, id="d-1")]) for i in range(8)),
                                   return_exceptions=True)
    stored = [r for r in results if r == [True]]
    assert len(stored) == 1
    # the others were told it is a duplicate, or (while it was being appended) to retry
    assert all(r == [False] or isinstance(r, BrokerError) for r in results if r != [True])
    assert await em.emit([em.event({"n": 9}, id="d-1")]) == [False]  # later: a duplicate
    assert await appended(broker) == 1
    assert em.stats.emitted == 1


async def test_a_failed_append_frees_the_id(broker: Broker) -> None:
    em = emitter(broker)
    await broker.close()  # the append fails
    with pytest.raises(BrokerError):
        await em.emit([em.event({"n": 1}, id="d-2")])
