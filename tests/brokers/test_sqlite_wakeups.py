"""SQLite: a receive waiting in one process is woken by a send from another, whatever else that
process claims meanwhile and however many queues it waits on (issue 11, item 2).

Two ``SqliteBroker`` instances on one file stand for two processes: each has its own connection,
so a commit by one is "another process" to the other. A lost wake-up shows as a receive that
returns only when its wait (5 s here) runs out; the bounds below (2 s) only that misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from swell.brokers.base import Delivery, Message, QueueSpec
from swell.brokers.sqlite import SqliteBroker
from swell.core.clock import RealClock

WAIT_S = 5.0
LOST_S = 2.0  # well under WAIT_S: only a lost wake-up takes this long


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SqliteBroker, SqliteBroker]]:
    """(consumer, producer): two instances on one file; queues ``a`` and ``b`` (and their DLQs)."""
    path = str(tmp_path / "swell.db")
    consumer, producer = SqliteBroker(path, clock=RealClock()), SqliteBroker(path, clock=RealClock())
    for name in ("a", "b"):
        await producer.declare_queue(QueueSpec(name=name, visibility_timeout_s=30, max_receives=1))
    try:
        yield consumer, producer
    finally:
        await consumer.close()
        await producer.close()


async def within(receive: asyncio.Future[list[Delivery]], limit_s: float = LOST_S) -> list[Delivery]:
    try:
        async with asyncio.timeout(limit_s):
            return await receive
    except TimeoutError:
        raise AssertionError(f"the waiting receive was not woken within {limit_s:g} s") from None
    finally:
        receive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receive


async def test_a_claim_on_one_queue_does_not_swallow_anothers_change(
        pair: tuple[SqliteBroker, SqliteBroker]) -> None:
    # The watch says which queues the file changed under since each was last looked at: a claim
    # on "a" (which reads the file's version) must not make "b" look unchanged.
    consumer, producer = pair
    await consumer.receive("b", 1)  # b looked at: nothing
    await consumer._watch(frozenset({"a", "b"}))  # and a too
    await producer.send("b", [Message(body=b"x")])
    assert await consumer.receive("a", 1) == []  # a claim on a, after the send

    changed = await consumer._watch(frozenset({"a", "b"}))
    due = changed.get("b")
    assert due is not None and due <= time.time(), changed
    assert await consumer._watch(frozenset({"a", "b"})) == {}, "b reported again, unchanged"


async def test_an_event_for_the_second_queue_wakes_its_receive_while_the_first_is_claimed(
        pair: tuple[SqliteBroker, SqliteBroker]) -> None:
    consumer, producer = pair
    stop = asyncio.Event()

    async def claim_a() -> None:  # another function of the same process, busy on its own queue
        while not stop.is_set():
            await consumer.receive("a", 10)
            await asyncio.sleep(0.001)

    claims = asyncio.create_task(claim_a())
    try:
        for i in range(3):
            waiting = asyncio.ensure_future(consumer.receive("b", 10, wait_s=WAIT_S))
            await asyncio.sleep(0.3)  # idle: the watcher backs off
            assert not waiting.done()
            await producer.send("b", [Message(body=b"%d" % i)])
            assert [d.body for d in await within(waiting)] == [b"%d" % i]
    finally:
        stop.set()
        await claims


async def test_many_waiting_queues_are_each_woken(pair: tuple[SqliteBroker, SqliteBroker],
                                                  tmp_path: Path) -> None:
    consumer, producer = pair
    names = [f"q{i}" for i in range(50)]
    for name in names:
        await producer.declare_queue(QueueSpec(name=name))
    waiting = {name: asyncio.ensure_future(consumer.receive(name, 1, wait_s=WAIT_S))
               for name in names}
    await asyncio.sleep(0.2)
    for name in (names[-1], names[0], names[25]):
        await producer.send(name, [Message(body=name.encode())])
        assert [d.body for d in await within(waiting.pop(name))] == [name.encode()]
    for receive in waiting.values():
        receive.cancel()
    await asyncio.gather(*waiting.values(), return_exceptions=True)


async def test_a_quiet_queue_still_sees_what_came_while_nobody_waited(
        pair: tuple[SqliteBroker, SqliteBroker]) -> None:
    # A receive whose wait ran out leaves its queue "quiet": the next one skips its first look.
    # What another process sent in between must still wake it (the watcher looks within a poll).
    consumer, producer = pair
    assert await consumer.receive("b", 1, wait_s=0.05) == []  # gave up: b is quiet
    await producer.send("b", [Message(body=b"between")])
    got = await within(asyncio.ensure_future(consumer.receive("b", 1, wait_s=WAIT_S)))
    assert [d.body for d in got] == [b"between"]


async def test_a_quiet_queue_sees_a_send_and_a_dead_letter_of_this_process(
        pair: tuple[SqliteBroker, SqliteBroker]) -> None:
    # No other connection writes here: only this process's own notifies can wake the receive.
    consumer, _ = pair
    assert await consumer.receive("b", 1, wait_s=0.05) == []
    await consumer.send("b", [Message(body=b"mine")])
    got = await within(asyncio.ensure_future(consumer.receive("b", 1, wait_s=WAIT_S)))
    assert [d.body for d in got] == [b"mine"]

    assert await consumer.receive("b.dlq", 1, wait_s=0.05) == []  # the DLQ is quiet too
    await consumer.dead_letter(got[0].receipt, "failed", "boom")
    dead = await within(asyncio.ensure_future(consumer.receive("b.dlq", 1, wait_s=WAIT_S)))
    assert [d.body for d in dead] == [b"mine"]

    # a lease running out past max_receives also goes to the DLQ, in a claim
    await consumer.send("b", [Message(body=b"again")])
    await consumer.receive("b", 1, visibility_timeout_s=0.05)
    assert await consumer.receive("b.dlq", 1, wait_s=0.05) == []
    await asyncio.sleep(0.1)
    assert await consumer.receive("b", 1) == []  # over max_receives: dead-lettered
    dead = await within(asyncio.ensure_future(consumer.receive("b.dlq", 1, wait_s=WAIT_S)))
    assert [d.body for d in dead] == [b"again"]
