"""The transactional outbox: events that go out if, and only if, the database transaction that
wrote them commits.

Inside their own transaction, users write their rows and the events that tell of them::

    with conn:                                           # sqlite3: commit, or roll back on error
        conn.execute("INSERT INTO orders (id, amount) VALUES (?, ?)", ("o-1", 12.5))
        with app.outbox(conn) as outbox:
            outbox.publish("emails", {"order": "o-1"}, key="customer-7")

``publish`` builds the CloudEvent at once (its id is returned) and inserts it into the table
``swell_outbox`` through that same connection: the events commit with the rows or roll back with
them. The relay (``app.outbox_relay(connect)``, run by ``swell run`` beside the functions) reads
the rows not yet sent in id order, publishes them with the event id as their dedup id, and then
marks them sent.

Guarantees: an event of a committed transaction is published at least once, and one of a rolled
back transaction never is. Rows go out in id order (on SQLite, the order of the commits; on
PostgreSQL, ids are drawn before commit, so concurrent transactions may interleave) and none is
skipped: a failed publish is tried again, after a backoff, until it succeeds, and holds the rows
behind it until then. A crash between publishing and marking publishes those rows again; within a
queue's or topic's dedup window (5 minutes by default) the broker stores them once; a stream
keeps no dedup ids, and an outage longer than the window gets past it, so consumers dedup too
(``swell.patterns.sinks.claim``). One relay per app relays at a time (a 5-second lease in the broker's kv
store); sent rows are deleted after a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

from swell.brokers.base import Broker, Message, StreamSpec, TopicSpec
from swell.brokers.lease import Lease
from swell.brokers.producer import Declared, Producer, Target
from swell.core import keys
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.config import Duration, seconds
from swell.core.errors import AppError, ConfigError, MessageTooLarge, UnknownStream
from swell.patterns.host import Declarations, Host
from swell.patterns.sinks import SQLITE, Dialect, check_transaction, dialect, is_async

__all__ = ["Outbox", "Relay", "relay_once"]

log = logging.getLogger("swell.patterns.outbox")

T = TypeVar("T")
Kind = Literal["queue", "topic", "stream"]

TABLE = "swell_outbox"
KEEP_SENT_S = 86400.0
CLEAN_EVERY_S = 3600.0
LEASE_S = 5.0
"""How long a dead relay's lease holds the outbox of its app before another relay takes it."""
MAX_BACKOFF_S = 30.0


def _ddl(d: Dialect) -> tuple[str, ...]:
    return (f"CREATE TABLE IF NOT EXISTS {TABLE} (id {d.serial}, event_id TEXT NOT NULL UNIQUE, "
            f"target TEXT NOT NULL, body {d.blob} NOT NULL, subject TEXT, key TEXT, "
            f"created {d.real} NOT NULL, sent {d.real})",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_unsent ON {TABLE} (id) WHERE sent IS NULL")


_INSERT = (f"INSERT INTO {TABLE} (event_id, target, body, subject, key, created) "
           "VALUES (?, ?, ?, ?, ?, ?)")
_UNSENT = (f"SELECT id, event_id, target, body, subject, key FROM {TABLE} WHERE sent IS NULL "
           "ORDER BY id LIMIT ?")
_MARK_CHUNK = 500  # ids per UPDATE: well under SQLite's limit of bound parameters
_CLEAN = f"DELETE FROM {TABLE} WHERE sent IS NOT NULL AND sent < ?"


def _execute(conn: Any, d: Dialect, *statements: tuple[str, tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Run statements on a cursor of ``conn``; the rows of the last one, if it returns any."""
    cur = conn.cursor()
    try:
        for sql, params in statements:
            cur.execute(d.sql(sql), params)
        return list(cur.fetchall()) if cur.description is not None else []
    finally:
        cur.close()


def _create(conn: Any, d: Dialect) -> None:
    """Create the table and its index if absent. On PostgreSQL only then: ``CREATE INDEX IF NOT
    EXISTS`` locks the table against writes until the transaction ends, even when the index is
    there, which would make concurrent transactions writing to the outbox wait for each other."""
    if d is not SQLITE and _execute(conn, d, ("SELECT to_regclass(?) IS NOT NULL AND "
                                              "to_regclass(?) IS NOT NULL",
                                              (TABLE, f"{TABLE}_unsent")))[0][0]:
        return
    _execute(conn, d, *((sql, ()) for sql in _ddl(d)))



class Outbox:
    """Events written in the caller's transaction: ``with app.outbox(conn) as outbox:`` (or
    ``async with``). Entering and leaving neither commits nor rolls back: the caller's
    transaction does, and the events go with it."""

    def __init__(self, app: Declarations, conn: Any, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.app = app
        self.conn = conn
        self._dialect = dialect(conn)
        if is_async(conn):
            raise ConfigError("the outbox writes through a sync connection (sqlite3, psycopg "
                              "Connection), not an async one")
        # only ``event`` is used, which needs no broker
        self._events = Producer(cast("Broker", None), source=f"/swell/{app.name}/outbox", clock=clock)
        self._clock = clock
        self._ready = False
        self._closed = False

    def publish(self, target: Target, data: Any, *, subject: str | None = None,
                key: str | None = None, attributes: Mapping[str, Any] | None = None,
                **attrs: Any) -> str:
        """Write an event for ``target`` (a queue, topic or stream the app declares) into the
        outbox, in the connection's current transaction; returns its id. The event is built now
        (its ``time`` is now); ``key`` is its ordering key (a stream's partition key), ``subject``
        its routing key on a topic; ``attributes`` and ``attrs`` as for ``Producer.event``
        (an explicit ``id`` is the event's id, and a second row with it is refused)."""
        if self._closed:
            raise AppError("this outbox was used after its with block: open another one")
        name, limit = self._target(target)
        event = self._events.event(name, data, subject=subject, key=key, attributes=attributes,
                                   **attrs)
        body = event.to_json()
        if len(body) > limit:
            raise MessageTooLarge(name, len(body), limit)
        check_transaction(self.conn, "the outbox")
        if not self._ready:
            _create(self.conn, self._dialect)
            self._ready = True
        _execute(self.conn, self._dialect,
                 (_INSERT, (event.id, name, body, subject, key, self._clock.time())))
        return event.id

    def _target(self, target: Target) -> tuple[str, int]:
        name = target if isinstance(target, str) else target.name
        declared = _declared(self.app, name)
        if declared is None:
            raise AppError(f"the outbox publishes to what the app declares: no queue, topic or "
                           f"stream {name!r} (declare it with app.queue({name!r}), ...)")
        return name, declared.spec.max_message_bytes

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._closed = True

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._closed = True


def _declared(app: Declarations, name: str) -> Declared | None:
    return app.topics.get(name) or app.streams.get(name) or app.queues.get(name)


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    event_id: str
    target: str
    body: bytes
    subject: str | None
    key: str | None


class Relay:
    """Publishes what the outbox of ``connect()``'s database holds, in id order.

    Its database work runs in one thread of its own, where its one connection lives (a sqlite3
    connection may only be used in the thread that made it); a connection that fails is closed
    and made again. ``await relay.once(broker)`` is one pass (tests, scripts); ``run`` is the
    loop ``app.outbox_relay`` registers."""

    def __init__(self, app: Declarations, connect: Callable[[], Any], *, interval: Duration = "100ms",
                 batch: int = 100, clock: Clock = SYSTEM_CLOCK) -> None:
        if batch < 1:
            raise ConfigError(f"the outbox relay's batch must be at least 1, got {batch}")
        self.app = app
        self.connect = connect
        self.interval_s = seconds(interval, name="interval")
        self.batch = batch
        self.clock = clock
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="swell-outbox")
        self._conn: Any = None
        self._kinds: dict[str, Kind] = {}
        self._cleaned_at: float | None = None
        self._closed = False

    # -- the database, in the relay's thread --------------------------------------------------
    def _connection(self) -> tuple[Any, Dialect]:
        if self._conn is None:
            conn = self.connect()
            d = dialect(conn)
            if is_async(conn):
                conn.close()
                raise ConfigError("the outbox relay needs a sync connection from connect()")
            try:
                _create(conn, d)
                conn.commit()
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn, dialect(self._conn)

    def _in_thread(self, work: Callable[[Any, Dialect], T]) -> T:
        conn, d = self._connection()
        try:
            out = work(conn, d)
            conn.commit()  # ends a read's transaction too, so the next read sees new commits
            return out
        except BaseException:
            self._conn = None
            with contextlib.suppress(Exception):  # its own error is the one to report
                conn.close()
            raise

    async def _db(self, work: Callable[[Any, Dialect], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(self._in_thread, work))

    # -- one pass -----------------------------------------------------------------------------
    async def once(self, broker: Broker) -> int:
        """Publish up to ``batch`` unsent rows in id order and mark them sent; returns how many.
        A failure stops the pass there: the rows published before it are marked, the others
        stay for the next pass."""
        rows = await self._db(lambda c, d: [_Row(r[0], r[1], r[2], bytes(r[3]), r[4], r[5])
                                            for r in _execute(c, d, (_UNSENT, (self.batch,)))])
        done: list[int] = []
        try:
            for target, run in groupby(rows, key=lambda r: r.target):
                batch = list(run)
                await self._publish(broker, target, batch)
                done.extend(r.id for r in batch)
        finally:
            if done:
                await self._mark(done)
        return len(done)

    async def _mark(self, ids: list[int]) -> None:
        now = self.clock.time()
        chunks = [ids[i:i + _MARK_CHUNK] for i in range(0, len(ids), _MARK_CHUNK)]
        await self._db(lambda c, d: _execute(c, d, *(
            (f"UPDATE {TABLE} SET sent = ? WHERE id IN ({', '.join('?' * len(chunk))})",
             (now, *chunk)) for chunk in chunks)))

    async def _publish(self, broker: Broker, target: str, rows: list[_Row]) -> None:
        kind = await self._kind(broker, target)
        if kind == "stream":
            await broker.append(target, [Message(body=r.body, key=r.key, dedup_id=r.event_id)
                                         for r in rows])
            return
        messages = [Message(body=r.body, dedup_id=r.event_id, subject=r.subject) for r in rows]
        stored = await (broker.publish if kind == "topic" else broker.send)(target, messages)
        if not all(stored):
            log.info("outbox: %d of %d event(s) to %r were sent before (dedup)",
                     stored.count(False), len(rows), target)

    async def _kind(self, broker: Broker, target: str) -> Kind:
        """What ``target`` is: by the app's declarations, else by what the broker knows."""
        kind = self._kinds.get(target)
        if kind is None:
            declared = _declared(self.app, target)
            if declared is not None:
                kind = ("topic" if isinstance(declared.spec, TopicSpec) else
                        "stream" if isinstance(declared.spec, StreamSpec) else "queue")
            elif await Producer(broker, source="").is_topic(target):
                kind = "topic"
            else:
                try:
                    await broker.stream_spec(target)
                    kind = "stream"
                except UnknownStream:
                    kind = "queue"  # and if it is none, send says so (UnknownQueue)
            self._kinds[target] = kind
        return kind

    async def clean(self) -> int:
        """Delete the rows sent more than a day ago; returns how many."""
        cutoff = self.clock.time() - KEEP_SENT_S

        def work(conn: Any, d: Dialect) -> int:
            cur = conn.cursor()
            try:
                cur.execute(d.sql(_CLEAN), (cutoff,))
                return int(cur.rowcount)
            finally:
                cur.close()

        return await self._db(work)

    # -- the loop -----------------------------------------------------------------------------
    async def run(self, runtime: Host) -> None:
        """Relay until cancelled: while this relay holds its app's lease, pass after pass
        (at once after a full one, else after ``interval``); after a failure, again after a
        backoff that doubles up to 30 s. Closes its connection when cancelled."""
        lease = Lease(runtime.broker.kv, keys.outbox_lease(self.app.name), runtime.node, self.clock,
                      ttl_s=LEASE_S)
        failures = 0
        try:
            while True:
                try:
                    if not await lease.hold():
                        await self.clock.sleep(max(self.interval_s, LEASE_S / 5))
                        continue
                    await self._clean_now_and_then()
                    sent = await self.once(runtime.broker)
                    failures = 0
                except Exception as exc:  # a broker or database failure: try again, skip nothing
                    failures += 1
                    delay = min(MAX_BACKOFF_S, max(self.interval_s, 0.1) * 2 ** min(failures - 1, 10))
                    log.warning("outbox relay failed (%s: %s); trying again in %.1fs",
                                type(exc).__name__, exc, delay)
                    await self.clock.sleep(delay)
                    continue
                if sent < self.batch:
                    await self.clock.sleep(self.interval_s)
        finally:
            self.close()
            await lease.release()

    async def _clean_now_and_then(self) -> None:
        now = self.clock.monotonic()
        if self._cleaned_at is None or now - self._cleaned_at >= CLEAN_EVERY_S:
            self._cleaned_at = now
            deleted = await self.clean()
            if deleted:
                log.info("outbox: deleted %d row(s) sent more than a day ago", deleted)

    def close(self) -> None:
        """Close the connection and the relay's thread, without waiting: a database call still
        running (the relay was cancelled in it) finishes first."""
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        self._pool.submit(close)
        self._pool.shutdown(wait=False)


async def relay_once(app: Declarations, broker: Broker, connect: Callable[[], Any], *, batch: int = 100,
                     clock: Clock = SYSTEM_CLOCK) -> int:
    """One relay pass without a Runtime (tests, scripts): up to ``batch`` rows published and
    marked; returns how many. It takes no lease: a relay running beside it may send the same
    rows too (the dedup ids absorb that on queues and topics)."""
    relay = Relay(app, connect, batch=batch, clock=clock)
    try:
        return await relay.once(broker)
    finally:
        relay.close()


def relay_service(app: Declarations, connect: Callable[[], Any], *, interval: Duration = "100ms",
                  batch: int = 100) -> Callable[[Host], Coroutine[Any, Any, None]]:
    """The service ``app.outbox_relay`` adds to ``app.services``."""
    seconds(interval, name="interval")  # a bad one fails at declaration, not in the service
    if batch < 1:
        raise ConfigError(f"the outbox relay's batch must be at least 1, got {batch}")

    async def outbox_relay(runtime: Host) -> None:
        relay = Relay(app, connect, interval=interval, batch=batch, clock=runtime.clock)
        await relay.run(runtime)

    return outbox_relay
