"""SQLite stats without a scan: the kept per-queue counts agree with the rows, whatever moved them."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from swell.brokers.base import Message, QueueSpec
from swell.brokers.sqlite import SqliteBroker
from swell.brokers.sqlite.queues import STATS
from swell.core.clock import ManualClock

SPEC = QueueSpec(name="jobs", visibility_timeout_s=10, max_receives=2, dedup_window_s=60)
QUEUES = ("jobs", "jobs.dlq")


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "swell.db")


@pytest.fixture
async def broker(path: str, clock: ManualClock) -> AsyncIterator[SqliteBroker]:
    b = SqliteBroker(path, clock=clock)
    await b.declare_queue(SPEC)
    yield b
    await b.close()


def scanned(path: str, queue: str, now: float) -> tuple[int, int, int, float]:
    """(depth, in flight, delayed, age of the oldest) by a scan of every row of ``queue``."""
    with closing(sqlite3.connect(path)) as conn:
        depth, in_flight, delayed, oldest = conn.execute(
            "SELECT coalesce(sum(visible_at <= :now), 0), coalesce(sum(visible_at > :now AND leased), 0),"
            " coalesce(sum(visible_at > :now AND NOT leased), 0), min(enqueued_at)"
            " FROM swell_messages WHERE queue = :q", {"now": now, "q": queue}).fetchone()
    return depth, in_flight, delayed, 0.0 if oldest is None else now - oldest


async def assert_agree(broker: SqliteBroker, path: str, clock: ManualClock) -> None:
    for queue in QUEUES:
        s = await broker.stats(queue)
        assert (s.depth, s.in_flight, s.delayed, s.oldest_age_s) == pytest.approx(
            scanned(path, queue, clock.time())), queue


async def test_counts_follow_every_way_messages_come_and_go(
        broker: SqliteBroker, path: str, clock: ManualClock) -> None:
    await broker.send("jobs", [Message(body=b"%d" % i) for i in range(5)])
    await broker.send("jobs", [Message(body=b"x", dedup_id="x"), Message(body=b"x", dedup_id="x"),
                               Message(body=b"y", dedup_id="y")])
    await broker.send("jobs", [Message(body=b"later", delay_s=30)])
    clock.advance(1)
    await assert_agree(broker, path, clock)

    got = await broker.receive("jobs", 4)
    assert await broker.ack([got[0].receipt, got[1].receipt, got[0].receipt]) == [got[0].receipt]
    await broker.release([got[2].receipt], delay_s=5)
    assert await broker.dead_letter(got[3].receipt, "bad")
    await assert_agree(broker, path, clock)

    for _ in range(3):  # leases run out until the receive count passes max_receives: to the DLQ
        await broker.receive("jobs", 100)
        clock.advance(11)
        await assert_agree(broker, path, clock)
    assert await broker.redrive("jobs") > 0
    await assert_agree(broker, path, clock)

    await broker.purge("jobs")
    await assert_agree(broker, path, clock)
    assert (await broker.stats("jobs")).total == 0


async def test_a_file_from_before_the_counts_is_counted_when_opened(path: str,
                                                                     clock: ManualClock) -> None:
    older = SqliteBroker(path, clock=clock)
    await older.declare_queue(SPEC)
    await older.send("jobs", [Message(body=b"a"), Message(body=b"b", delay_s=30)])
    await older.receive("jobs", 1)
    await older.close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TABLE swell_sizes")  # as a file written by an older swell
        conn.commit()

    broker = SqliteBroker(path, clock=clock)
    try:
        s = await broker.stats("jobs")
        assert (s.depth, s.in_flight, s.delayed) == (0, 1, 1)
        await broker.send("jobs", [Message(body=b"c")])
        await assert_agree(broker, path, clock)
    finally:
        await broker.close()


async def test_reading_the_stats_scans_no_queue(broker: SqliteBroker, path: str) -> None:
    # cost independent of the backlog: only index searches (the rows ahead of now are leased or
    # delayed ones), never a scan of the messages
    with closing(sqlite3.connect(path)) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {STATS}",
                                               {"q": "jobs", "now": 0.0})]
    assert plan and not [step for step in plan if step.startswith("SCAN")], plan
