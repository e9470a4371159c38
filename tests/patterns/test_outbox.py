"""The transactional outbox: events written in the user's transaction go out if and only if it
commits, in order, with their ids; crashes between commit and publish, and between publish and
the mark, lose nothing, and consumers that claim their effects do them once.

Crashes are injected with real small fakes: a memory broker that dies (a ``BaseException``, as a
killed process stops) right after it stored a batch or while it is storing one, and a ``swell
run`` process that SIGKILLs itself as its relay marks rows sent."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from support.eventually import until
from support.swellprocs import EXIT_S, READY_S, wait_for
from swell import (
    App,
    AppError,
    ConfigError,
    Context,
    Event,
    Message,
    MessageTooLarge,
    Retry,
    Runtime,
)
from swell.brokers.base import Broker
from swell.brokers.memory import MemoryBroker
from swell.brokers.sqlite import SqliteBroker
from swell.core.clock import ManualClock
from swell.core.errors import BrokerUnavailable
from swell.patterns.outbox import Relay, relay_once
from swell.patterns.sinks import claim

APP_FILE = Path(__file__).parent / "apps" / "outbox_app.py"


class Crash(BaseException):
    """The process dies here: nothing after it runs, no handler catches it."""


T = TypeVar("T")


class Faulty(MemoryBroker):
    """A memory broker that can die right after storing a batch (``crash_after``), die while
    storing one (``hang``: it waits forever, until the task is cancelled), or refuse the next
    ``refuse`` calls as unavailable."""

    def __init__(self) -> None:
        super().__init__()
        self.crash_after = False
        self.hang = False
        self.refuse = 0
        self.calls = 0

    async def _store(self, store: Callable[[], Awaitable[T]]) -> T:
        self.calls += 1
        if self.refuse:
            self.refuse -= 1
            raise BrokerUnavailable("the broker is down")
        if self.hang:
            await asyncio.Event().wait()
        out = await store()
        if self.crash_after:
            raise Crash
        return out

    async def send(self, queue: str, messages: Sequence[Message]) -> list[bool]:
        return await self._store(lambda: super(Faulty, self).send(queue, messages))

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[bool]:
        return await self._store(lambda: super(Faulty, self).publish(topic, messages))

    async def append(self, stream: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
        return await self._store(lambda: super(Faulty, self).append(stream, messages))


def make_app() -> App:
    app = App("shop")
    app.queue("emails")
    orders = app.topic("orders")
    orders.subscribe("billing", subject="orders.*.created")
    app.stream("clicks", partitions=2)
    return app


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
    conn.close()
    return path


@pytest.fixture
async def broker() -> AsyncIterator[Faulty]:
    b = Faulty()
    yield b
    await b.close()


def connector(db: Path) -> Callable[[], sqlite3.Connection]:
    return lambda: sqlite3.connect(db, timeout=10)


def place(app: App, db: Path, orders: Sequence[str], target: str = "emails", *,
          commit: bool = True, **attrs: Any) -> list[str]:
    """A user's transaction: the orders and one event per order; the event ids."""
    conn = sqlite3.connect(db)
    try:
        ids = []
        conn.execute("BEGIN")
        for order in orders:
            conn.execute("INSERT INTO orders VALUES (?)", (order,))
            with app.outbox(conn) as outbox:
                ids.append(outbox.publish(target, {"order": order}, **attrs))
        if commit:
            conn.commit()
        else:
            conn.rollback()
        return ids
    finally:
        conn.close()


def unsent(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM swell_outbox WHERE sent IS NULL").fetchone()[0])
    finally:
        conn.close()


async def queued_ids(broker: Broker, queue: str) -> list[str]:
    return [Event.from_json(d.body).id for d in await broker.peek(queue, 10_000)]


async def declared(app: App, broker: Broker) -> Broker:
    from swell.runtime.app import declare

    await declare(app, broker)
    return broker


# -- the outbox, in the user's transaction -----------------------------------------------------
async def test_committed_events_go_out_in_order_with_their_ids(db: Path, broker: Faulty) -> None:
    app = make_app()
    await declared(app, broker)
    first = place(app, db, ["o-1", "o-2", "o-3"])
    second = place(app, db, ["o-4", "o-5"])
    billed = place(app, db, ["o-6"], "orders", subject="orders.eu.created")
    clicks = place(app, db, ["o-7", "o-8"], "clicks", key="customer-7")

    assert await relay_once(app, broker, connector(db)) == 8
    assert await queued_ids(broker, "emails") == first + second
    [delivery] = await broker.peek("orders.billing")
    event = Event.from_json(delivery.body)
    assert (event.id, event.subject, event.source, event.data) == (
        billed[0], "orders.eu.created", "/swell/shop/outbox", {"order": "o-6"})
    records = [r for p in range(2) for r in await broker.read("clicks", p)]
    assert [Event.from_json(r.body).id for r in records] == clicks  # one key: one partition
    assert {r.key for r in records} == {"customer-7"}
    assert unsent(db) == 0
    assert await relay_once(app, broker, connector(db)) == 0  # nothing twice


async def test_a_rolled_back_transaction_publishes_nothing(db: Path, tmp_path: Path) -> None:
    app = make_app()
    app.outbox_relay(connector(db), interval="20ms")
    async with Runtime(app, f"sqlite:///{tmp_path / 'swell.db'}") as rt:
        place(app, db, ["o-1", "o-2"], commit=False)
        marker = place(app, db, ["o-3"])  # committed after: once it is out, the relay has run
        await until(lambda: queued_ids(rt.broker, "emails"), "the committed event")
        assert await queued_ids(rt.broker, "emails") == marker
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT event_id FROM swell_outbox").fetchall() == [(marker[0],)]
        assert conn.execute("SELECT id FROM orders").fetchall() == [("o-3",)]
    finally:
        conn.close()


async def test_the_outbox_refuses_what_the_relay_could_never_send(db: Path) -> None:
    app = make_app()
    app.queue("small", max_message_bytes=300)
    conn = sqlite3.connect(db)
    try:
        async with app.outbox(conn) as outbox:
            with pytest.raises(AppError, match="declares"):
                outbox.publish("nowhere", {})
            with pytest.raises(MessageTooLarge):
                outbox.publish("small", {"text": "x" * 400})
            outbox.publish(app.queues["small"], {"text": "x"})  # a Queue object is a target too
        with pytest.raises(AppError, match="after its with block"):
            outbox.publish("small", {})
        conn.commit()
        assert conn.execute("SELECT target FROM swell_outbox").fetchall() == [("small",)]
    finally:
        conn.close()
    auto = sqlite3.connect(db, isolation_level=None)
    try:
        with pytest.raises(ConfigError, match="open transaction"), app.outbox(auto) as outbox:
            outbox.publish("emails", {})  # it would commit alone, whatever became of the rest
    finally:
        auto.close()
    with pytest.raises(ConfigError, match="sqlite3 or psycopg"):
        app.outbox(object())


# -- crashes -------------------------------------------------------------------------------------
async def test_a_relay_killed_before_it_published_loses_nothing(db: Path, broker: Faulty) -> None:
    """Between commit and publish: the rows are committed, the relay dies while publishing them
    (its task is cancelled inside the broker call); a relay started later sends them all."""
    app = make_app()
    app.outbox_relay(connector(db), interval="20ms")
    ids = place(app, db, [f"o-{i}" for i in range(10)])
    broker.hang = True
    async with Runtime(app, broker):
        await until(lambda: broker.calls, "the relay to start publishing")
    assert await queued_ids(broker, "emails") == []
    assert unsent(db) == 10

    broker.hang = False
    async with Runtime(app, broker) as rt:
        await until(lambda: unsent(db) == 0, "the rows to be sent")
        assert await queued_ids(rt.broker, "emails") == ids


async def test_a_crash_between_publish_and_mark_stores_each_event_once(db: Path,
                                                                       broker: Faulty) -> None:
    """Between publish and mark: the broker stores the first batch and the relay dies before it
    marks it sent; the next relay publishes it again, the queue's dedup window drops the copies,
    and a consumer that also crashes after its commit (before its ack) writes each effect once."""
    app = make_app()
    await declared(app, broker)
    ids = place(app, db, [f"o-{i}" for i in range(25)])
    broker.crash_after = True
    with pytest.raises(Crash):
        await relay_once(app, broker, connector(db), batch=10)
    assert await queued_ids(broker, "emails") == ids[:10]
    assert unsent(db) == 25  # published, but not marked

    broker.crash_after = False
    while await relay_once(app, broker, connector(db), batch=10):
        pass
    assert unsent(db) == 0
    assert await queued_ids(broker, "emails") == ids  # each once, in order

    effects = db.parent / "effects.db"
    calls = await consume(app, broker, effects)
    assert sorted(calls) == sorted(ids + ids)  # every event handled twice ...
    assert sent_emails(effects) == sorted(ids)  # ... and its effect written once


async def test_a_stream_keeps_the_copies_and_the_consumers_claim_drops_them(db: Path,
                                                                          broker: Faulty) -> None:
    """A stream has no dedup window: after a crash between publish and mark the batch is in
    it twice, and a consumer that claims each event id does each effect once."""
    app = make_app()
    await declared(app, broker)
    ids = place(app, db, [f"o-{i}" for i in range(6)], "clicks", key="k")
    broker.crash_after = True
    with pytest.raises(Crash):
        await relay_once(app, broker, connector(db))
    broker.crash_after = False
    assert await relay_once(app, broker, connector(db)) == 6
    records = [r for p in range(2) for r in await broker.read("clicks", p)]
    assert [Event.from_json(r.body).id for r in records] == ids + ids

    conn = sqlite3.connect(db.parent / "effects.db")
    try:
        conn.execute("CREATE TABLE sent (event_id TEXT, address TEXT)")
        for r in records:
            event = Event.from_json(r.body)
            with conn:
                if claim(conn, event.id, scope="count_click"):
                    conn.execute("INSERT INTO sent VALUES (?, ?)", (event.id, "-"))
        assert sorted(e for (e,) in conn.execute("SELECT event_id FROM sent")) == sorted(ids)
    finally:
        conn.close()


async def test_broker_failures_are_retried_and_nothing_is_skipped(db: Path,
                                                                  broker: Faulty) -> None:
    app = make_app()
    app.outbox_relay(connector(db), interval="20ms", batch=3)
    broker.refuse = 3  # the first three publishes fail: backoffs of 0.1, 0.2 and 0.4 s
    ids = place(app, db, [f"o-{i}" for i in range(7)])
    async with Runtime(app, broker) as rt:
        await until(lambda: unsent(db) == 0, "the rows to be sent")
        assert await queued_ids(rt.broker, "emails") == ids
    assert broker.calls == 3 + 3  # three refused, then 3 + 3 + 1 rows in three calls


async def test_one_relay_per_app_at_a_time(db: Path, broker: Faulty) -> None:
    """Two runtimes of one app on one broker: one holds the relay's lease and the other waits,
    so a stream (which keeps every copy) gets each event once."""
    app = make_app()
    app.outbox_relay(connector(db), interval="10ms", batch=2)
    async with Runtime(app, broker), Runtime(app, broker):
        ids = []
        for i in range(10):
            ids += place(app, db, [f"o-{i}a", f"o-{i}b"], "clicks", key="k")
            await asyncio.sleep(0.01)
        await until(lambda: unsent(db) == 0, "the rows to be sent")
        lease = await broker.kv.get("swell/outbox/shop")
        assert lease is not None
    records = [r for p in range(2) for r in await broker.read("clicks", p)]
    assert [Event.from_json(r.body).id for r in records] == ids
    assert await broker.kv.get("swell/outbox/shop") is None  # let go at stop


async def test_rows_sent_more_than_a_day_ago_are_deleted(db: Path, broker: Faulty) -> None:
    app = make_app()
    await declared(app, broker)
    clock = ManualClock()
    place(app, db, ["o-1", "o-2"])
    relay = Relay(app, connector(db), clock=clock)
    try:
        assert await relay.once(broker) == 2
        place(app, db, ["o-3"])
        clock.advance(86400 - 1)
        assert await relay.clean() == 0
        clock.advance(2)
        assert await relay.clean() == 2
        assert unsent(db) == 1  # unsent rows are never deleted
    finally:
        relay.close()


# -- a real process, killed between publish and mark -------------------------------------------
@pytest.mark.slow
def test_sigkill_between_publish_and_mark_loses_nothing_and_doubles_nothing(tmp_path: Path,
                                                                            db: Path) -> None:
    app = App("outbox-test")
    app.queue("emails", visibility_timeout=2, max_receives=20)
    n = 50
    conn = sqlite3.connect(db)
    try:
        ids = []
        for k in range(0, n, 10):  # five transactions
            with conn, app.outbox(conn) as outbox:
                ids += [outbox.publish("emails", {"to": f"{i}@example.com"}) for i in range(k, k + 10)]
    finally:
        conn.close()
    effects, calls = tmp_path / "effects.db", tmp_path / "calls.txt"
    with sqlite3.connect(effects) as c:
        c.execute("CREATE TABLE sent (event_id TEXT, address TEXT)")
    c.close()
    broker_url = f"sqlite:///{tmp_path / 'swell.db'}"
    env = {**os.environ, "SWELL_TEST_DB": str(db), "SWELL_TEST_EFFECTS": str(effects),
           "SWELL_TEST_CALLS": str(calls)}
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(**extra: str) -> subprocess.Popen[bytes]:
        log = tmp_path / f"swell-{len(procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "swell", "run", str(APP_FILE), "--broker", broker_url,
                 "--grace", "5s", "--http", "off"],
                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env={**env, **extra})
        procs.append((proc, log))
        return proc

    try:
        first = start(SWELL_TEST_CRASH="before-mark")
        assert first.wait(READY_S) == -signal.SIGKILL  # it killed itself as it marked
        assert unsent(db) == n  # nothing was marked, but the first batch was published:
        stored = asyncio.run(stored_ids(broker_url))
        handled = calls.read_text().split() if calls.exists() else []
        assert set(stored) | set(handled) == set(ids[:20])  # in the queue, or handled and acked

        second = start()
        wait_for(lambda: unsent(db) == 0, 20, "the outbox to be sent")
        wait_for(lambda: len(sent_emails(effects)) == n, 20, "every e-mail to be sent")
        wait_for(lambda: not asyncio.run(stored_ids(broker_url)), 10, "the queue to drain")
        second.send_signal(signal.SIGTERM)
        assert second.wait(EXIT_S) == 0
        assert sent_emails(effects) == sorted(ids)  # every committed event, each effect once
        print(f"\nat the kill: {len(stored)} stored, {len(handled)} handled; "
              f"calls in all: {len(calls.read_text().split())} for {n} events")
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            print(f"----- {log.name}: exit {proc.returncode} -----\n{log.read_text(errors='replace')}")


# -- helpers ---------------------------------------------------------------------------------------


def sent_emails(effects: Path) -> list[str]:
    conn = sqlite3.connect(effects, timeout=10)
    try:
        return sorted(e for (e,) in conn.execute("SELECT event_id FROM sent"))
    finally:
        conn.close()


async def stored_ids(url: str) -> list[str]:
    """The ids of the events in ``emails`` (leased or not) on a SQLite broker."""
    broker = SqliteBroker(url.removeprefix("sqlite:///"))
    try:
        return await queued_ids(broker, "emails")
    finally:
        await broker.close()


async def consume(app: App, broker: Broker, effects: Path) -> list[str]:
    """Work ``emails`` with a handler that commits its effect under a claim, then fails on its
    first attempt (as if the process died before the ack): each event is handled twice."""
    with sqlite3.connect(effects) as c:
        c.execute("CREATE TABLE sent (event_id TEXT, address TEXT)")
    c.close()
    calls: list[str] = []
    consumer = App(app.name)
    consumer.queue("emails", max_receives=5)

    @consumer.function("emails", concurrency=4, retry=Retry(backoff=0.01))
    def send_email(data: dict[str, str], ctx: Context) -> None:
        calls.append(ctx.event.id)
        conn = sqlite3.connect(effects, timeout=10)
        try:
            with conn:
                if claim(conn, ctx.event.id, scope="send_email"):
                    conn.execute("INSERT INTO sent VALUES (?, ?)", (ctx.event.id, data["order"]))
        finally:
            conn.close()
        if ctx.attempt == 1:
            raise RuntimeError("died before the ack")

    async with Runtime(consumer, broker):
        await until(lambda: _drained(broker), "the queue to drain")
    return calls


async def _drained(broker: Broker) -> bool:
    return (await broker.stats("emails")).total == 0
