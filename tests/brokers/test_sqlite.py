"""SQLite only: the file is the store, shared by every instance (process) that opens it."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from swell.brokers.base import Delivery, Message, QueueSpec, QueueStats
from swell.brokers.sqlite import SqliteBroker
from swell.core.clock import Clock, ManualClock, RealClock

SPEC = QueueSpec(name="jobs", visibility_timeout_s=12, max_receives=2, dedup_window_s=60)


class Instances:
    """Opens SqliteBrokers on one file, as separate processes would; closes what is left open."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path, self.clock = path, clock
        self.open_: list[SqliteBroker] = []

    async def open(self, clock: Clock | None = None) -> SqliteBroker:
        broker = SqliteBroker(str(self.path), clock=clock or self.clock)
        self.open_.append(broker)
        await broker.declare_queue(SPEC)
        return broker

    async def close(self, broker: SqliteBroker) -> None:
        self.open_.remove(broker)
        await broker.close()


@pytest.fixture
async def instances(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Instances]:
    opened = Instances(tmp_path / "swell.db", clock)
    yield opened
    for broker in list(opened.open_):
        await opened.close(broker)


async def drain(broker: SqliteBroker, batch: int = 2) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(100):
        got = await broker.receive("jobs", batch)
        if not got:
            return out
        out.extend(d.body for d in got)
    raise AssertionError("the queue never emptied")


async def test_data_survives_reopen(instances: Instances, clock: ManualClock) -> None:
    first = await instances.open()
    await first.send("jobs", [Message(body=b"a", headers={"k": "v"}), Message(body=b"b"),
                              Message(body=b"c", delay_s=50)])
    await first.receive("jobs", 1)  # a is leased across the restart
    await instances.close(first)

    second = await instances.open()

    assert await second.queue_spec("jobs") == SPEC
    assert {s.name for s in await second.queues()} == {"jobs", "jobs.dlq"}
    assert await second.stats("jobs") == QueueStats(queue="jobs", depth=1, in_flight=1, delayed=1,
                                                    oldest_age_s=0.0)
    clock.advance(13)
    got: dict[bytes, Delivery] = {d.body: d for d in await second.receive("jobs", 10)}
    assert sorted(got) == [b"a", b"b"]
    assert (got[b"a"].headers, got[b"a"].receive_count) == ({"k": "v"}, 2)
    assert (got[b"b"].headers, got[b"b"].receive_count) == ({}, 1)


async def test_dedup_survives_reopen(instances: Instances) -> None:
    first = await instances.open()
    assert await first.send("jobs", [Message(body=b"1", dedup_id="x")]) == [True]
    await instances.close(first)

    second = await instances.open()

    assert await second.send("jobs", [Message(body=b"2", dedup_id="x")]) == [False]


async def test_two_instances_never_lease_the_same_message(instances: Instances) -> None:
    a, b = await instances.open(), await instances.open()
    sent = [f"m{i:02}".encode() for i in range(30)]
    await a.send("jobs", [Message(body=m) for m in sent])

    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    for _ in range(100):
        got_a, got_b = await a.receive("jobs", 2), await b.receive("jobs", 2)
        seen["a"] += [d.body for d in got_a]
        seen["b"] += [d.body for d in got_b]
        if not got_a and not got_b:
            break

    assert seen["a"] and seen["b"]
    assert sorted(seen["a"] + seen["b"]) == sent


async def test_two_instances_receiving_concurrently(instances: Instances) -> None:
    a, b = await instances.open(), await instances.open()
    sent = [f"m{i:02}".encode() for i in range(40)]
    await b.send("jobs", [Message(body=m) for m in sent])

    async with asyncio.timeout(10):
        from_a, from_b = await asyncio.gather(drain(a), drain(b))

    assert sorted(from_a + from_b) == sent


async def test_waiting_receive_sees_another_instances_send(instances: Instances) -> None:
    clock = RealClock()
    sender, receiver = await instances.open(clock), await instances.open(clock)
    waiting = asyncio.create_task(receiver.receive("jobs", 10, wait_s=5))
    try:
        await asyncio.sleep(0.05)  # real: let the receive start polling
        assert not waiting.done(), "receive with wait_s=5 returned before anything was sent"

        await sender.send("jobs", [Message(body=b"across")])

        async with asyncio.timeout(2):
            got = await waiting
    finally:
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    assert [d.body for d in got] == [b"across"]


async def test_settings_declared_by_one_instance_are_seen_by_another(
    instances: Instances,
) -> None:
    a, b = await instances.open(), await instances.open()
    assert await b.queue_spec("jobs") == SPEC
    updated = QueueSpec(name="jobs", visibility_timeout_s=99)

    await a.declare_queue(updated)

    assert await b.queue_spec("jobs") == updated


async def test_file_is_in_wal_mode(instances: Instances) -> None:
    await instances.open()

    with contextlib.closing(sqlite3.connect(instances.path)) as conn:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()

    assert mode == "wal"


async def test_a_receive_cancelled_mid_claim_strands_no_lease(tmp_path: Path) -> None:
    # A dispatcher stopping cancels its receive; the claim already running in the SQLite
    # thread must not leave messages leased with nobody to handle them.
    broker = SqliteBroker(str(tmp_path / "c.db"))
    await broker.declare_queue(QueueSpec(name="q", visibility_timeout_s=600))
    await broker.send("q", [Message(body=b"%d" % i) for i in range(50)])
    for _ in range(20):
        task = asyncio.ensure_future(broker.receive("q", 50))
        await asyncio.sleep(0)  # the claim is now queued to (or running in) the thread
        task.cancel()
        try:
            got = await task
        except asyncio.CancelledError:
            got = []
        if got:
            await broker.release([d.receipt for d in got])
        await asyncio.sleep(0.01)  # let an orphaned claim's release land
        assert (await broker.stats("q")).in_flight == 0
    await broker.close()
