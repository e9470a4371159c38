"""The embedded default: queues in one SQLite file (WAL), shared safely by several processes.

One connection per broker, owned by one thread; every call is one hop to that thread, so the event
loop never blocks on the database (a second thread and connection only checkpoint the WAL). Leases
are rows whose ``visible_at`` lies ahead, with a random ``token`` that every receive renews, so a
stale receipt matches no row. Writers are serialised by SQLite itself (``BEGIN IMMEDIATE``, tried
again while another process holds the lock), which is what makes two processes on one file safe: a
claim is one ``UPDATE ... RETURNING``, and no two claims can take the same row.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec

from swell.brokers.base import (
    REASON_MAX_RECEIVES,
    Delivery,
    KvEntry,
    Message,
    QueueSpec,
    QueueStats,
    Receipt,
    Record,
    StreamSpec,
    SubscriptionSpec,
    SubscriptionStats,
    TopicInfo,
    TopicSpec,
    check_sizes,
    dead_letter_headers,
    partition_of,
    redrive_headers,
)
from swell.brokers.logs import check_partition, partition_change
from swell.brokers.topics import Router, check_publish, route
from swell.brokers.waiting import Waker
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    MessageTooLarge,
    SwellError,
    UnknownQueue,
    UnknownStream,
    UnknownTopic,
)

T = TypeVar("T")
log = logging.getLogger("swell.sqlite")

COUNTS_EVERY_S = 1.0
BUSY_TIMEOUT_S = 10.0
BUSY_FIRST_PAUSE_S = 0.00005
BUSY_MAX_PAUSE_S = 0.002

SCHEMA = """
CREATE TABLE IF NOT EXISTS swell_queues (
    name TEXT PRIMARY KEY,
    spec BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS swell_messages (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    token INTEGER,
    leased INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL,
    first_received_at REAL,
    headers BLOB,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS swell_messages_ready ON swell_messages (queue, visible_at);
CREATE TABLE IF NOT EXISTS swell_kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    revision INTEGER NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS swell_counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS swell_dedup (
    queue TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (queue, dedup_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS swell_topics (
    name TEXT PRIMARY KEY,
    spec BLOB NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS swell_streams (
    name TEXT PRIMARY KEY,
    spec BLOB NOT NULL,
    appended INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS swell_log (
    stream TEXT NOT NULL,
    part INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    ts REAL NOT NULL,
    key TEXT,
    headers BLOB,
    body BLOB NOT NULL,
    PRIMARY KEY (stream, part, offset)
);
CREATE INDEX IF NOT EXISTS swell_log_time ON swell_log (stream, part, ts);
CREATE TABLE IF NOT EXISTS swell_log_heads (
    stream TEXT NOT NULL,
    part INTEGER NOT NULL,
    next INTEGER NOT NULL,
    PRIMARY KEY (stream, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS swell_subscriptions (
    topic TEXT NOT NULL,
    name TEXT NOT NULL,
    spec BLOB NOT NULL,
    matched INTEGER NOT NULL DEFAULT 0,
    filtered INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, name)
) WITHOUT ROWID;
"""

_CLAIM = """
UPDATE swell_messages
   SET visible_at = :lease_until, receive_count = receive_count + 1, token = :token, leased = 1,
       first_received_at = coalesce(first_received_at, :now)
 WHERE id IN (SELECT id FROM swell_messages
               WHERE queue = :queue AND visible_at <= :now
               ORDER BY visible_at LIMIT :max)
RETURNING id, receive_count, enqueued_at, first_received_at, headers, body
"""
_INSERT = """INSERT INTO swell_messages (queue, visible_at, enqueued_at, headers, body)
              VALUES (?, ?, ?, ?, ?)"""
# Messages per queue, for stats() without a scan. Kept by this module in the transaction that
# inserts or deletes (one statement per batch: a trigger would cost every row about 2 us on
# send and again on ack, measured). Every insert into or delete from swell_messages goes
# through _resize.
_SIZES = """CREATE TABLE swell_sizes (queue TEXT PRIMARY KEY, total INTEGER NOT NULL) WITHOUT ROWID"""
_RESIZE = """INSERT INTO swell_sizes (queue, total) VALUES (?, ?)
             ON CONFLICT (queue) DO UPDATE SET total = total + excluded.total"""
# One statement, so one snapshot. Rows whose visible_at lies ahead (leased or delayed) are
# counted on the ready index, and are few; the ready ones are the queue's total minus those.
# "Oldest" is the earliest enqueue time among those rows and the row ready longest (the first of
# the ready index): exact but for a ready message that was received before (an expired lease or
# a retry) and is older than that row.
_STATS = """
SELECT coalesce((SELECT total FROM swell_sizes WHERE queue = :q), 0),
       count(*), coalesce(sum(leased), 0), min(enqueued_at),
       (SELECT enqueued_at FROM swell_messages WHERE queue = :q AND visible_at <= :now
         ORDER BY visible_at LIMIT 1)
  FROM swell_messages WHERE queue = :q AND visible_at > :now
"""
_DEDUP = """INSERT INTO swell_dedup (queue, dedup_id, expires_at) VALUES (?, ?, ?)
            ON CONFLICT (queue, dedup_id) DO UPDATE SET expires_at = excluded.expires_at
            WHERE swell_dedup.expires_at <= ?"""

_headers_enc = msgspec.json.Encoder()
_headers_dec = msgspec.json.Decoder(dict[str, str])


def _enc_headers(h: dict[str, str] | None) -> bytes | None:
    return _headers_enc.encode(h) if h else None


def _dec_headers(raw: bytes | None) -> dict[str, str]:
    return _headers_dec.decode(raw) if raw else {}


class SqliteBroker:
    """Queues in a SQLite file. ``synchronous`` is SQLite's: ``normal`` (default) survives a process
    crash; ``full`` also survives power loss, at the cost of an fsync per commit."""

    def __init__(self, path: str, *, clock: Clock = SYSTEM_CLOCK, synchronous: str = "normal") -> None:
        if synchronous.lower() not in ("normal", "full", "extra"):
            raise ConfigError(f"synchronous must be normal, full or extra, not {synchronous!r}")
        self.path = path
        self.clock = clock
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="swell-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._synchronous = synchronous
        self._specs: dict[str, tuple[bytes, QueueSpec]] = {}  # decoded once per stored version
        self._waker = Waker(clock, self._watch)
        # per queue: the file's data_version when this process last looked at the queue (a claim,
        # or the waker's watch); written only on the broker's thread
        self._seen: dict[str, int] = {}
        # the watch's shortcut (see _watch): a connection used on the event loop's thread for
        # nothing but PRAGMA data_version, and what the last look saw
        self._tripwire: sqlite3.Connection | None = None
        self._looked: _Looked | None = None
        self._declared: set[str] = set()  # queues known to exist (for stats_many; thread only)
        self._dedup_swept_at = 0.0
        self._routers: dict[bytes, Router] = {}  # compiled per stored subscription spec
        # topic counts not yet in the file: (topic, subscription) -> [matched, filtered]
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._published: dict[str, int] = {}
        self._counts_at = 0.0
        self._trimmed_at: dict[str, float] = {}
        # small writes and publishes asked for while the connection is busy share a transaction
        self._writes: _Batcher[_Write, Any] = _Batcher(
            lambda batch: self._run(self._tx, self._apply_writes, batch))
        self._publishes: _Batcher[_Publish, _Published] = _Batcher(
            lambda batch: self._run(self._store_publishes, batch, self.clock.time()),
            after=self._wake_published)
        self._kv = SqliteKV(self)
        self._orphan_releases: set[asyncio.Task[list[Receipt]]] = set()
        self._checkpointer: _Checkpointer | None = None
        self._closed = False

    @property
    def kv(self) -> SqliteKV:
        return self._kv

    # -- plumbing ----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            folder = os.path.dirname(self.path)
            try:
                if folder:
                    os.makedirs(folder, exist_ok=True)
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout = 10000")
                conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
                _setup(conn)
                conn.execute("PRAGMA busy_timeout = 0")  # from here _call waits, more finely
                self._checkpointer = _Checkpointer(self.path, self._synchronous)
                conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer's work now
                # used on the loop's thread: never waits for a lock (a busy file is one missed
                # look, tried again at the next poll), so it cannot stall the loop
                tripwire = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                           check_same_thread=False)
            except (OSError, sqlite3.Error) as exc:
                raise BrokerUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc
            self._tripwire = tripwire
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[..., T], *args: Any, wake: Iterable[str] = ()) -> T:
        """``fn(conn, *args)`` on the broker's thread. ``wake``: queues whose receivers in this
        process look again once it is done, even if the caller was cancelled meanwhile (the work
        goes on in its thread and may store; this process's own commits are no news to the
        watcher, so only this wakes them)."""
        if self._closed:
            raise BrokerError(f"the SQLite broker on {self.path!r} is closed")
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._exec, self._call, fn, args)
        if not wake:
            return await work
        queues = tuple(wake)

        def woken(_: object) -> None:
            for queue in queues:
                self._waker.notify(queue)

        work.add_done_callback(woken)
        return await asyncio.shield(work)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """Run ``fn`` on the connection; while another process holds the write lock, run it again.

        Writes here hold the lock for well under a millisecond, but SQLite's own busy handler
        sleeps 1, 2, 5, 10 ms... between tries, which at a steady 1,000 events/s became the tail
        of the latency: so the connection has no busy timeout, and a call that finds the file busy
        is rolled back and tried again after 50 us, doubling up to 2 ms, for up to 10 s."""
        conn = self._connect()
        give_up = time.monotonic() + BUSY_TIMEOUT_S
        pause = BUSY_FIRST_PAUSE_S
        while True:
            try:
                return fn(conn, *args)
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.rollback()
                if _is_busy(exc) and time.monotonic() < give_up:
                    time.sleep(pause)
                    pause = min(2 * pause, BUSY_MAX_PAUSE_S)
                    continue
                raise BrokerError(f"SQLite error on {self.path!r}: {exc}") from exc

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a small write ``fn(conn, *args)`` in a transaction. Writes asked for while the
        connection is busy share one transaction when it is free (each in a savepoint of its own,
        so one that fails fails alone): concurrent small writes (kv) share a commit."""
        result: T = await self._writes((fn, args))
        return result

    @staticmethod
    def _apply_writes(conn: sqlite3.Connection, batch: list[_Write]) -> list[Any]:
        if len(batch) == 1:
            fn, args = batch[0]
            return [fn(conn, *args)]
        out: list[Any] = []
        for fn, args in batch:
            conn.execute("SAVEPOINT write")
            try:
                out.append(fn(conn, *args))
            except SwellError as exc:
                conn.execute("ROLLBACK TO write")
                out.append(exc)
            conn.execute("RELEASE write")
        return out

    def _tx(self, conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        return result

    # -- declarations ------------------------------------------------------------------------
    async def declare_queue(self, spec: QueueSpec) -> None:
        specs = [s for s in (spec, spec.dlq_spec()) if s is not None]
        await self._run(lambda c: self._tx(c, self._declare, specs))

    @staticmethod
    def _declare(conn: sqlite3.Connection, specs: list[QueueSpec]) -> None:
        main, *dlq = specs
        conn.execute("INSERT OR REPLACE INTO swell_queues (name, spec) VALUES (?, ?)",
                     (main.name, msgspec.json.encode(main)))
        for s in dlq:  # a DLQ that was declared as a queue of its own keeps its own settings
            conn.execute("INSERT INTO swell_queues (name, spec) VALUES (?, ?) ON CONFLICT (name) "
                         "DO UPDATE SET spec = excluded.spec "
                         "WHERE json_extract(swell_queues.spec, '$.is_dead_letter')",
                         (s.name, msgspec.json.encode(s)))

    def _spec(self, conn: sqlite3.Connection, queue: str) -> QueueSpec:
        """The stored spec, read in the caller's hop, so another process's declare is seen."""
        row = conn.execute("SELECT spec FROM swell_queues WHERE name = ?", (queue,)).fetchone()
        if row is None:
            raise UnknownQueue(queue)
        cached = self._specs.get(queue)
        if cached is None or cached[0] != row[0]:
            cached = self._specs[queue] = (row[0], msgspec.json.decode(row[0], type=QueueSpec))
        return cached[1]

    def _on_queue(self, conn: sqlite3.Connection, queue: str) -> sqlite3.Connection:
        """``conn``, once ``queue`` is known to exist (else ``UnknownQueue``)."""
        self._spec(conn, queue)
        return conn

    async def queue_spec(self, queue: str) -> QueueSpec:
        return await self._run(self._spec, queue)

    async def queues(self) -> list[QueueSpec]:
        rows = await self._run(lambda c: c.execute(
            "SELECT spec FROM swell_queues ORDER BY name").fetchall())
        return [msgspec.json.decode(r[0], type=QueueSpec) for r in rows]

    # -- send --------------------------------------------------------------------------------
    async def send(self, queue: str, messages: Sequence[Message]) -> list[bool]:
        return await self._run(lambda c: self._tx(c, self._send, queue, messages,
                                                  self.clock.time()), wake=(queue,))

    def _send(self, conn: sqlite3.Connection, queue: str, messages: Sequence[Message],
              now: float) -> list[bool]:
        spec = self._spec(conn, queue)
        check_sizes(spec, messages)
        accepted = self._fresh(conn, spec.name, spec.dedup_window_s, messages, now)
        conn.executemany(_INSERT, [(spec.name, now + m.delay_s if m.delay_s > 0 else now, now,
                                    _enc_headers(m.headers), m.body)
                                   for m, new in zip(messages, accepted, strict=True) if new])
        _resize(conn, spec.name, sum(accepted))
        return accepted

    def _fresh(self, conn: sqlite3.Connection, scope: str, window_s: float,
               messages: Sequence[Message], now: float) -> list[bool]:
        """Per message, whether its dedup id (if any) is new in ``scope`` within ``window_s``;
        records the new ones."""
        if not any(m.dedup_id for m in messages):
            return [True] * len(messages)
        if now - self._dedup_swept_at > window_s / 10:
            conn.execute("DELETE FROM swell_dedup WHERE expires_at <= ?", (now,))
            self._dedup_swept_at = now
        return [m.dedup_id is None
                or conn.execute(_DEDUP, (scope, m.dedup_id, now + window_s, now)).rowcount > 0
                for m in messages]

    # -- topics ------------------------------------------------------------------------------
    def _topic(self, conn: sqlite3.Connection, topic: str) -> TopicSpec:
        row = conn.execute("SELECT spec FROM swell_topics WHERE name = ?", (topic,)).fetchone()
        if row is None:
            raise UnknownTopic(topic)
        return msgspec.json.decode(row[0], type=TopicSpec)

    def _router(self, raw: bytes) -> Router:
        """A subscription's compiled routing, kept while its stored spec is unchanged."""
        router = self._routers.get(raw)
        if router is None:
            if len(self._routers) > 1024:
                self._routers.clear()
            router = self._routers[raw] = Router.of(msgspec.json.decode(raw, type=SubscriptionSpec))
        return router

    async def declare_topic(self, spec: TopicSpec) -> None:
        await self._run(lambda c: self._tx(c, lambda conn: conn.execute(
            "INSERT INTO swell_topics (name, spec) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec",
            (spec.name, msgspec.json.encode(spec)))))

    async def subscribe(self, spec: SubscriptionSpec) -> None:
        raw = msgspec.json.encode(spec)
        self._router(raw)  # an invalid pattern fails here, before anything is stored
        queues = [s for s in (spec.queue, spec.queue.dlq_spec()) if s is not None]

        def run(conn: sqlite3.Connection) -> None:
            self._topic(conn, spec.topic)
            self._declare(conn, queues)
            conn.execute("INSERT INTO swell_subscriptions (topic, name, spec) VALUES (?, ?, ?) "
                         "ON CONFLICT (topic, name) DO UPDATE SET spec = excluded.spec",
                         (spec.topic, spec.name, raw))

        await self._run(lambda c: self._tx(c, run))

    def _wake_published(self, published: _Published) -> None:
        for queue in published[1]:
            self._waker.notify(queue)

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[bool]:
        """Publishes made while the connection is busy are stored together when it is free, one
        transaction for the lot (each in a savepoint of its own, so one refused publish refuses
        only itself): concurrent publishers share the cost of a commit."""
        return (await self._publishes((topic, messages)))[0]

    def _store_publishes(self, conn: sqlite3.Connection, batch: list[_Publish],
                         now: float) -> list[_Published | Exception]:
        return self._counted(self._tx(conn, self._publish_all, batch, now))

    def _publish_all(self, conn: sqlite3.Connection, batch: list[_Publish],
                     now: float) -> list[_Published | Exception]:
        """Store a batch of publishes: those to one topic are routed and written together; one
        that is refused (unknown topic, oversize, bad routing key) refuses only itself."""
        out: list[_Published | Exception | None] = [None] * len(batch)
        if len(batch) == 1:  # alone: its transaction is its savepoint (a refusal raises)
            topic, messages = batch[0]
            spec = self._topic(conn, topic)
            check_publish(spec, messages)
            self._publish_together(conn, spec, [messages], [0], out, now)
            return [r for r in out if r is not None]
        by_topic: dict[str, list[int]] = {}
        for i, (topic, _) in enumerate(batch):
            by_topic.setdefault(topic, []).append(i)
        for topic, idx in by_topic.items():
            try:
                spec = self._topic(conn, topic)
            except SwellError as exc:
                for i in idx:
                    out[i] = exc
                continue
            ok = []
            for i in idx:
                try:
                    check_publish(spec, batch[i][1])
                    ok.append(i)
                except SwellError as exc:
                    out[i] = exc
            if len(ok) > 1:
                try:
                    conn.execute("SAVEPOINT publish")
                    self._publish_together(conn, spec, [batch[i][1] for i in ok], ok, out, now)
                    conn.execute("RELEASE publish")
                    continue
                except SwellError:  # one of them does not fit a subscription's queue: one by one
                    conn.execute("ROLLBACK TO publish")
                    conn.execute("RELEASE publish")
            for i in ok:
                conn.execute("SAVEPOINT publish")
                try:
                    self._publish_together(conn, spec, [batch[i][1]], [i], out, now)
                except SwellError as exc:
                    conn.execute("ROLLBACK TO publish")
                    out[i] = exc
                conn.execute("RELEASE publish")
        if now - self._counts_at >= COUNTS_EVERY_S:
            self._flush_counts(conn, now)
        return [r for r in out if r is not None]

    def _publish_together(self, conn: sqlite3.Connection, spec: TopicSpec,
                          publishes: list[Sequence[Message]], idx: list[int],
                          out: list[_Published | Exception | None], now: float) -> None:
        """Route and write several publishes to one topic at once (all or none: a refusal raises
        ``SwellError``); their results go to ``out``."""
        topic = spec.name
        accepted = [self._fresh(conn, f"#topic/{topic}", spec.dedup_window_s, ms, now)
                    for ms in publishes]
        fresh = [m for ms, acc in zip(publishes, accepted, strict=True)
                 for m, new in zip(ms, acc, strict=True) if new]
        subs = conn.execute("SELECT spec FROM swell_subscriptions WHERE topic = ?", (topic,))
        routed = route([self._router(raw) for (raw,) in subs.fetchall()], fresh)
        for r in routed:
            check_sizes(r.router.spec.queue, r.messages)
        rows, sizes, counts = [], [], []
        for r in routed:
            queue = r.router.spec.queue.name
            if r.messages:
                rows += [(queue, now + m.delay_s if m.delay_s > 0 else now, now,
                          _enc_headers(m.headers), m.body) for m in r.messages]
                sizes.append((queue, len(r.messages)))
            if r.messages or r.filtered:
                counts.append(((topic, r.router.spec.name), len(r.messages), r.filtered))
        conn.executemany(_INSERT, rows)
        conn.executemany(_RESIZE, sizes)
        # the queues to wake and the counts of the lot go with its first publish
        for k, i in enumerate(idx):
            out[i] = (accepted[k], [q for q, _ in sizes] if k == 0 else [],
                      counts if k == 0 else [], topic)

    def _counted(self, results: list[_Published | Exception]) -> list[_Published | Exception]:
        """Once a publish transaction committed: keep its counts for the next flush."""
        for r in results:
            if isinstance(r, Exception):
                continue
            for key, matched, filtered in r[2]:
                counts = self._counts.setdefault(key, [0, 0])
                counts[0] += matched
                counts[1] += filtered
            topic = r[3]
            self._published[topic] = self._published.get(topic, 0) + sum(r[0])
        return results

    def _flush_counts(self, conn: sqlite3.Connection, now: float) -> None:
        """Add this process's topic counts to the file (done at most once a second, in a
        transaction that is open anyway, so a publish does not pay a write per subscription)."""
        self._counts_at = now
        if self._counts:
            conn.executemany("UPDATE swell_subscriptions SET matched = matched + ?, "
                             "filtered = filtered + ? WHERE topic = ? AND name = ?",
                             [(m, f, t, n) for (t, n), (m, f) in self._counts.items()])
            self._counts.clear()
        if self._published:
            conn.executemany("UPDATE swell_topics SET published = published + ? WHERE name = ?",
                             [(k, t) for t, k in self._published.items()])
            self._published.clear()

    async def topics(self) -> list[TopicInfo]:
        def run(conn: sqlite3.Connection) -> list[TopicInfo]:
            if self._counts or self._published:
                self._tx(conn, self._flush_counts, self.clock.time())
            subs: dict[str, list[SubscriptionStats]] = {}
            for topic, raw, matched, filtered in conn.execute(
                    "SELECT topic, spec, matched, filtered FROM swell_subscriptions "
                    "ORDER BY topic, name"):
                subs.setdefault(topic, []).append(SubscriptionStats(
                    spec=msgspec.json.decode(raw, type=SubscriptionSpec), matched=matched,
                    filtered=filtered))
            return [TopicInfo(spec=msgspec.json.decode(raw, type=TopicSpec), published=published,
                              subscriptions=subs.get(name, []))
                    for name, raw, published in conn.execute(
                        "SELECT name, spec, published FROM swell_topics ORDER BY name")]

        return await self._run(run)

    # -- streams -----------------------------------------------------------------------------
    def _stream(self, conn: sqlite3.Connection, stream: str) -> StreamSpec:
        row = conn.execute("SELECT spec FROM swell_streams WHERE name = ?", (stream,)).fetchone()
        if row is None:
            raise UnknownStream(stream)
        return msgspec.json.decode(row[0], type=StreamSpec)

    async def declare_stream(self, spec: StreamSpec) -> None:
        def run(conn: sqlite3.Connection) -> None:
            try:
                have = self._stream(conn, spec.name)
            except UnknownStream:
                have = None
            if have is not None and have.partitions != spec.partitions:
                raise ConfigError(partition_change(have, spec))
            conn.execute("INSERT INTO swell_streams (name, spec) VALUES (?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec",
                         (spec.name, msgspec.json.encode(spec)))

        await self._run(lambda c: self._tx(c, run))

    async def stream_spec(self, stream: str) -> StreamSpec:
        return await self._run(self._stream, stream)

    async def streams(self) -> list[StreamSpec]:
        rows = await self._run(lambda c: c.execute(
            "SELECT spec FROM swell_streams ORDER BY name").fetchall())
        return [msgspec.json.decode(r[0], type=StreamSpec) for r in rows]

    async def append(self, stream: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
        return await self._run(lambda c: self._tx(c, self._append, stream, messages,
                                                  self.clock.time()))

    def _append(self, conn: sqlite3.Connection, stream: str, messages: Sequence[Message],
                now: float) -> list[tuple[int, int]]:
        spec = self._stream(conn, stream)
        for m in messages:
            if len(m.body) > spec.max_message_bytes:
                raise MessageTooLarge(stream, len(m.body), spec.max_message_bytes)
        (appended,) = conn.execute("UPDATE swell_streams SET appended = appended + ? WHERE name = ? "
                                   "RETURNING appended - ?", (len(messages), stream, len(messages))
                                   ).fetchone()
        heads = dict(conn.execute("SELECT part, next FROM swell_log_heads WHERE stream = ?",
                                  (stream,)).fetchall())
        out, rows = [], []
        for i, m in enumerate(messages):
            p = partition_of(m.key, spec.partitions, appended + i)
            offset = heads.get(p, 0)
            heads[p] = offset + 1
            rows.append((stream, p, offset, now, m.key, _enc_headers(m.headers), m.body))
            out.append((p, offset))
        conn.executemany("INSERT INTO swell_log (stream, part, offset, ts, key, headers, body) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.executemany("INSERT INTO swell_log_heads (stream, part, next) VALUES (?, ?, ?) "
                         "ON CONFLICT (stream, part) DO UPDATE SET next = excluded.next",
                         [(stream, p, n) for p, n in heads.items()])
        if now - self._trimmed_at.get(stream, 0.0) > min(60.0, spec.retention_s / 10):
            self._trimmed_at[stream] = now
            conn.execute("DELETE FROM swell_log WHERE stream = ? AND ts < ?",
                         (stream, now - spec.retention_s))
        return out

    async def read(self, stream: str, partition: int, offset: int = 0, max_records: int = 100, *,
                   since: float | None = None) -> list[Record]:
        def run(conn: sqlite3.Connection) -> list[Record]:
            check_partition(self._stream(conn, stream), partition)
            start = offset
            if since is not None:
                (first,) = conn.execute("SELECT min(offset) FROM swell_log WHERE stream = ? AND "
                                        "part = ? AND ts >= ?", (stream, partition, since)).fetchone()
                start = max(start, first if first is not None else 2 ** 62)
            rows = conn.execute("SELECT offset, ts, key, headers, body FROM swell_log WHERE "
                                "stream = ? AND part = ? AND offset >= ? ORDER BY offset LIMIT ?",
                                (stream, partition, start, max(0, max_records))).fetchall()
            return [Record(partition=partition, offset=o, timestamp=ts, key=k,
                           headers=_dec_headers(h), body=b) for o, ts, k, h, b in rows]

        return await self._run(run)

    async def end_offsets(self, stream: str) -> list[int]:
        def run(conn: sqlite3.Connection) -> list[int]:
            spec = self._stream(conn, stream)
            heads = dict(conn.execute("SELECT part, next FROM swell_log_heads WHERE stream = ?",
                                      (stream,)).fetchall())
            return [heads.get(p, 0) for p in range(spec.partitions)]

        return await self._run(run)

    async def lag(self, stream: str, offsets: Sequence[int]) -> list[int]:
        def run(conn: sqlite3.Connection) -> list[int]:
            spec = self._stream(conn, stream)
            if len(offsets) != spec.partitions:
                raise ConfigError(f"stream {stream!r} has {spec.partitions} partitions, not "
                                  f"{len(offsets)}")
            return [conn.execute("SELECT count(*) FROM swell_log WHERE stream = ? AND part = ? AND "
                                 "offset >= ?", (stream, p, o)).fetchone()[0]
                    for p, o in enumerate(offsets)]

        return await self._run(run)

    # -- receive -----------------------------------------------------------------------------
    async def receive(self, queue: str, max_messages: int, visibility_timeout_s: float | None = None,
                      wait_s: float = 0.0) -> list[Delivery]:
        async def attempt() -> tuple[list[Delivery], float | None]:
            claim = asyncio.ensure_future(self._run(self._claim, queue, max_messages,
                                                    visibility_timeout_s))
            try:
                got, due, dead = await asyncio.shield(claim)
            except asyncio.CancelledError:
                # the claim runs on in its thread: give back whatever it takes, at once
                claim.add_done_callback(self._release_orphans)
                raise
            if dead:
                self._wake_dlq(queue)
            return got, due

        return await self._waker.wait_for(queue, attempt, wait_s)

    def _claim(self, conn: sqlite3.Connection, queue: str, max_messages: int,
               lease_s: float | None) -> tuple[list[Delivery], float | None, int]:
        """Lease up to ``max_messages``: (what was leased, when the next message falls due if
        nothing was, how many went to the dead-letter queue instead)."""
        # read before the queue: a commit after this changes the version again, so the watch
        # looks at this queue once more (never less)
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        now = self.clock.time()
        spec = self._spec(conn, queue)
        self._seen[spec.name] = version
        due = self._next_due(conn, spec.name)
        if due is None or due > now:
            # nothing ready: no write lock, which a sender in another process would wait for
            # (SQLite's busy handler sleeps a millisecond or more), and no empty transaction
            return [], due, 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            lease = spec.visibility_timeout_s if lease_s is None else lease_s
            out: list[Delivery] = []
            token = _token()
            dead = 0
            while len(out) < max_messages:  # again if some of a claim went to the DLQ instead
                rows = conn.execute(_CLAIM, {"lease_until": now + lease, "token": token, "now": now,
                                             "queue": spec.name, "max": max_messages - len(out)}
                                    ).fetchall()
                over = 0
                for rid, count, enqueued_at, first_at, headers, body in rows:
                    if 0 < spec.max_receives < count:
                        self._to_dlq(conn, spec, rid, enqueued_at, headers, body,
                                     REASON_MAX_RECEIVES, None, count - 1, now)
                        over += 1
                        continue
                    out.append(Delivery(receipt=Receipt(spec.name, rid, token), body=body,
                                        headers=_dec_headers(headers), receive_count=count,
                                        enqueued_at=enqueued_at, first_received_at=first_at))
                dead += over
                if not over:
                    break
            due = None if out else self._next_due(conn, spec.name)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        out.sort(key=lambda d: d.receipt.id)
        return out, due, dead

    @staticmethod
    def _next_due(conn: sqlite3.Connection, queue: str) -> float | None:
        """When the next message of ``queue`` is (or was) visible: lease ends included."""
        due: float | None = conn.execute("SELECT min(visible_at) FROM swell_messages WHERE queue = ?",
                                         (queue,)).fetchone()[0]
        return due

    def _release_orphans(self, claim: asyncio.Future[tuple[list[Delivery], float | None, int]]
                         ) -> None:
        if claim.cancelled() or claim.exception() is not None or not claim.result()[0]:
            return
        # never given to anyone: not a delivery, so not counted as a receive
        task = asyncio.ensure_future(self.release([d.receipt for d in claim.result()[0]],
                                                  count=False))
        self._orphan_releases.add(task)
        task.add_done_callback(self._orphan_releases.discard)

    async def _watch(self, queues: AbstractSet[str]) -> dict[str, float | None]:
        """The waker's look for other processes' writes: of ``queues``, those the file changed
        under since this process last looked at them, each with its next due time. One hop for
        all of them, and no table read while nothing changed (``data_version`` moves only when
        another connection commits).

        While no connection at all committed since the last look (the tripwire's
        ``data_version``, a connection of its own, moves on every commit but its own: a cheap
        call on this thread), and every queue that started waiting since then had been looked
        at as of that look, nothing can have changed for any of them: no hop at all."""
        wire = self._tripwire
        before = None
        if wire is not None:
            try:
                before = wire.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error as exc:
                raise BrokerError(f"SQLite error on {self.path!r}: {exc}") from exc
            looked = self._looked
            if (looked is not None and looked.tripwire == before
                    and all(self._seen.get(q) == looked.version for q in queues - looked.queues)):
                return {}
        version, changed = await self._run(self._look, queues)
        if before is not None:
            self._looked = _Looked(before, version, queues)
        return changed

    def _look(self, conn: sqlite3.Connection, queues: AbstractSet[str]
              ) -> tuple[int, dict[str, float | None]]:
        version: int = conn.execute("PRAGMA data_version").fetchone()[0]
        stale = [q for q in queues if self._seen.get(q) != version]
        if not stale:
            return version, {}
        for q in stale:
            self._seen[q] = version
        # one index seek per queue (min over the ready index), not a scan of their messages
        return version, dict(conn.execute(
            "SELECT value, (SELECT min(visible_at) FROM swell_messages WHERE queue = value) "
            "FROM json_each(?)", (msgspec.json.encode(stale).decode(),)).fetchall())

    # -- settle ------------------------------------------------------------------------------
    async def ack(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        return await self._settle("DELETE FROM swell_messages", receipts, deletes=True)

    async def release(self, receipts: Sequence[Receipt], delay_s: float = 0.0, *,
                      count: bool = True) -> list[Receipt]:
        at = self.clock.time() + max(delay_s, 0.0)
        uncount = 0 if count else 1
        stale = await self._settle(
            "UPDATE swell_messages SET visible_at = ?, token = NULL, leased = 0, "
            "receive_count = max(0, receive_count - ?)", receipts, at, uncount, wake=True)
        return stale

    async def extend(self, receipts: Sequence[Receipt], seconds: float) -> list[Receipt]:
        at = self.clock.time() + seconds
        return await self._settle("UPDATE swell_messages SET visible_at = ?, leased = 1",
                                  receipts, at)

    async def _settle(self, change: str, receipts: Sequence[Receipt], *args: Any,
                      deletes: bool = False, wake: bool = False) -> list[Receipt]:
        """Apply ``change`` (an UPDATE or DELETE, with ``args`` for its placeholders) to the rows
        that ``receipts`` still hold; returns the stale receipts, which changed nothing."""
        if not receipts:
            return []
        # one statement per lease (a batch usually holds one or two), not one per row: fewer
        # statements, and each one costs this thread the GIL back from a busy event loop
        sql = f"{change} WHERE token = ? AND id IN (SELECT value FROM json_each(?))"

        def run(conn: sqlite3.Connection) -> list[Receipt]:
            leases: dict[int, list[int]] = {}
            for r in receipts:
                leases.setdefault(r.token, []).append(r.id)
            changed = sum(conn.execute(sql, (*args, token, _ids_json(ids))).rowcount
                          for token, ids in leases.items())
            stale: list[Receipt] = []
            if changed != len(receipts):  # rare: find which ones matched nothing
                conn.rollback()
                conn.execute("BEGIN IMMEDIATE")
                stale = [r for r in receipts
                         if conn.execute(sql, (*args, r.token, f"[{r.id}]")).rowcount == 0]
            if deletes:
                gone = Counter(r.queue for r in receipts)
                gone.subtract(r.queue for r in stale)
                for queue, n in gone.items():
                    _resize(conn, queue, -n)
            return stale

        return await self._run(lambda c: self._tx(c, run),
                               wake={r.queue for r in receipts} if wake else ())

    # -- dead letters --------------------------------------------------------------------------
    async def dead_letter(self, receipt: Receipt, reason: str, error: str | None = None) -> bool:
        # (woken when the move is done, even if this caller is cancelled meanwhile, as a send)
        return await self._run(lambda c: self._tx(c, self._dead_letter, receipt, reason,
                                                  error, self.clock.time()),
                               wake=self._dlq_of(receipt.queue))

    def _dlq_of(self, queue: str) -> tuple[str, ...]:
        """``queue``'s dead-letter queue, if its spec is known here (it is, for a leased one)."""
        spec = self._specs.get(queue)
        return () if spec is None or spec[1].dead_letter_queue is None else (
            spec[1].dead_letter_queue,)

    def _wake_dlq(self, queue: str) -> None:
        """Something went into ``queue``'s dead-letter queue: wake whoever waits on that."""
        for dlq in self._dlq_of(queue):
            self._waker.notify(dlq)

    def _dead_letter(self, conn: sqlite3.Connection, r: Receipt, reason: str,
                     error: str | None, now: float) -> bool:
        spec = self._spec(conn, r.queue)
        if spec.dead_letter_queue is None:
            return False
        row = conn.execute("SELECT receive_count, enqueued_at, headers, body FROM swell_messages "
                           "WHERE id = ? AND token = ?", (r.id, r.token)).fetchone()
        if row is None:
            return False
        count, enqueued_at, headers, body = row
        self._to_dlq(conn, spec, r.id, enqueued_at, headers, body, reason, error, count, now)
        return True

    @staticmethod
    def _to_dlq(conn: sqlite3.Connection, spec: QueueSpec, rid: int, enqueued_at: float,
                headers: bytes | None, body: bytes, reason: str, error: str | None,
                attempts: int, now: float) -> None:
        _resize(conn, spec.name, -conn.execute("DELETE FROM swell_messages WHERE id = ?",
                                                (rid,)).rowcount)
        name = spec.dead_letter_queue
        if name is None:
            return
        h = dead_letter_headers(_dec_headers(headers), source=spec.name, reason=reason,
                                error=error, attempts=attempts, at=now)
        conn.execute(_INSERT, (name, now, enqueued_at, _enc_headers(h), body))
        _resize(conn, name, 1)

    async def redrive(self, queue: str, max_messages: int | None = None) -> int:
        def run(conn: sqlite3.Connection) -> int:
            dlq = self._spec(conn, queue).dead_letter_queue
            if dlq is None:
                return 0
            rows = conn.execute("SELECT id, enqueued_at, headers, body FROM swell_messages "
                                "WHERE queue = ? ORDER BY id LIMIT ?",
                                (dlq, -1 if max_messages is None else max_messages)).fetchall()
            now = self.clock.time()
            conn.executemany("DELETE FROM swell_messages WHERE id = ?", [(r[0],) for r in rows])
            conn.executemany(_INSERT, [(queue, now, enq, _enc_headers(redrive_headers(
                _dec_headers(h))), body) for _, enq, h, body in rows])
            _resize(conn, dlq, -len(rows))
            _resize(conn, queue, len(rows))
            return len(rows)

        return await self._run(lambda c: self._tx(c, run), wake=(queue,))

    # -- looking -------------------------------------------------------------------------------
    async def peek(self, queue: str, max_messages: int = 100) -> list[Delivery]:
        rows = await self._run(lambda c: self._on_queue(c, queue).execute(
            "SELECT id, receive_count, enqueued_at, first_received_at, headers, body "
            "FROM swell_messages WHERE queue = ? ORDER BY id LIMIT ?",
            (queue, max_messages)).fetchall())
        return [Delivery(receipt=Receipt(queue, rid, -1), body=body, headers=_dec_headers(h),
                         receive_count=n, enqueued_at=enq, first_received_at=first)
                for rid, n, enq, first, h, body in rows]

    async def stats(self, queue: str) -> QueueStats:
        now = self.clock.time()
        row = await self._run(
            lambda c: self._on_queue(c, queue).execute(_STATS, {"now": now, "q": queue}).fetchone())
        return _stats(queue, now, row)

    async def stats_many(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        """One hop and one snapshot for all of them; a queue holding no message (by its count in
        ``swell_sizes``) costs no read of ``swell_messages``."""
        def run(conn: sqlite3.Connection) -> dict[str, QueueStats]:
            unknown = [q for q in queues if q not in self._declared]
            if unknown:  # (a queue is never undeclared: once seen, known for good)
                self._declared.update(name for (name,) in conn.execute(
                    "SELECT name FROM swell_queues WHERE name IN (SELECT value FROM json_each(?))",
                    (msgspec.json.encode(unknown).decode(),)))
            now = self.clock.time()
            conn.execute("BEGIN")
            try:
                busy = {q for (q,) in conn.execute("SELECT queue FROM swell_sizes WHERE total != 0")}
                return {q: _stats(q, now, conn.execute(_STATS, {"now": now, "q": q}).fetchone())
                        if q in busy else QueueStats(queue=q, depth=0, in_flight=0, delayed=0,
                                                     oldest_age_s=0.0)
                        for q in queues if q in self._declared}
            finally:
                conn.commit()

        return await self._run(run)

    async def purge(self, queue: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            n: int = self._on_queue(conn, queue).execute(
                "DELETE FROM swell_messages WHERE queue = ?", (queue,)).rowcount
            _resize(conn, queue, -n)
            return n
        return await self._run(lambda c: self._tx(c, run))

    async def close(self) -> None:
        if self._closed:
            return
        if self._orphan_releases:
            await asyncio.gather(*self._orphan_releases, return_exceptions=True)
        self._closed = True
        await self._waker.aclose()  # a receive still waiting returns what it has: nothing
        if self._tripwire is not None:
            self._tripwire.close()
            self._tripwire = None

        def shut() -> None:
            if self._checkpointer is not None:
                self._checkpointer.stop()
            if self._conn is not None:
                if self._counts or self._published:
                    with suppress(sqlite3.Error):
                        self._tx(self._conn, self._flush_counts, self.clock.time())
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._exec, shut)
        self._exec.shutdown(wait=True)


class _Looked(NamedTuple):
    """What the watch's last look saw: the tripwire's data_version just before it, the broker
    connection's during it, and the queues it covered."""

    tripwire: int
    version: int
    queues: AbstractSet[str]


#: a small write waiting for the connection: fn(conn, *args)
_Write = tuple[Callable[..., Any], tuple[Any, ...]]
#: a publish waiting for the connection: topic, messages
_Publish = tuple[str, Sequence[Message]]
#: a stored publish: accepted per message, queues written, counts per subscription, its topic
_Published = tuple[list[bool], list[str], list[tuple[tuple[str, str], int, int]], str]
Item = TypeVar("Item")
Result = TypeVar("Result")


class _Batcher(Generic[Item, Result]):
    """Calls made while the broker's connection is busy, stored together once it is free:
    ``store`` gets every pending item, in order, and answers each with its result or the
    exception that refused it alone (or raises, refusing the lot). ``after`` sees each stored
    result, whether its caller still waits or not (a cancelled caller's item stays stored)."""

    def __init__(self, store: Callable[[list[Item]], Awaitable[list[Result | Exception]]], *,
                 after: Callable[[Result], object] | None = None) -> None:
        self._store = store
        self._after = after
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._drainer: asyncio.Future[None] | None = None

    async def __call__(self, item: Item) -> Result:
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return await done

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._store([item for item, _ in batch])
            except Exception as exc:
                results = [exc] * len(batch)
            for (_, done), result in zip(batch, results, strict=True):
                stored = not isinstance(result, Exception)
                if stored and self._after is not None:
                    self._after(result)  # type: ignore[arg-type]
                if done.done():
                    continue
                if isinstance(result, Exception):
                    done.set_exception(result)
                else:
                    done.set_result(result)


def _setup(conn: sqlite3.Connection) -> None:
    """WAL mode and the schema. Two processes opening a new file at once can find it locked in a
    way SQLite's busy handler does not wait out (the switch to WAL), so that part is retried."""
    for attempt in range(100):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(SCHEMA)
            _add_sizes(conn)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.01 + random.random() * 0.04)


def _ids_json(ids: list[int]) -> str:
    # text, not bytes: newer SQLite reads a BLOB argument of json_each as JSONB
    return msgspec.json.encode(ids).decode()


def _add_sizes(conn: sqlite3.Connection) -> None:
    """Create ``swell_sizes``, counting the messages a file from an older swell holds already
    (in the same transaction, so that no send slips between the count and the table)."""
    def missing() -> bool:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                            "name = 'swell_sizes'").fetchone() is None

    if not missing():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if missing():
            conn.execute(_SIZES)
            conn.execute("INSERT INTO swell_sizes (queue, total) "
                         "SELECT queue, count(*) FROM swell_messages GROUP BY queue")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def _stats(queue: str, now: float, row: tuple[int, int, int, float | None, float | None]
           ) -> QueueStats:
    total, ahead, leased, oldest_ahead, oldest_ready = row
    oldest = min((t for t in (oldest_ahead, oldest_ready) if t is not None), default=None)
    # (not below zero even if the counts drifted: an older swell writing the same file keeps none)
    return QueueStats(queue=queue, depth=max(0, total - ahead), in_flight=leased,
                      delayed=ahead - leased,
                      oldest_age_s=0.0 if oldest is None else max(0.0, now - oldest))


def _resize(conn: sqlite3.Connection, queue: str, delta: int) -> None:
    if delta:
        conn.execute(_RESIZE, (queue, delta))


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


def _token() -> int:
    return random.getrandbits(62)


class _Checkpointer:
    """Copies the WAL back into the database file, from a thread and connection of its own.

    SQLite would otherwise do it in whichever commit takes the WAL past 1,000 pages: that commit
    then copies them and waits for fsync, 3 to 100 ms on the benchmark's box, holding the broker's
    one thread (at a steady 1,000 events/s these were the slowest events). A passive checkpoint
    waits for no reader or writer. But while writes never pause, the WAL cannot start over from
    its beginning, so past ``RESTART_FRAMES`` a restarting checkpoint holds writers back for a
    moment (most pages are copied by then) to keep the file's size bounded."""

    PERIOD_S = 0.1
    RESTART_FRAMES = 4000  # 16 MiB of 4 KiB pages

    def __init__(self, path: str, synchronous: str) -> None:
        self._path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        self._conn.execute("PRAGMA busy_timeout = 1000")  # a restart waits this long for writers
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="swell-sqlite-checkpoint",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopping.wait(self.PERIOD_S):
                try:
                    self._checkpoint()
                except sqlite3.Error as exc:  # a disk error, say: try again next time
                    log.warning("checkpoint of %s failed: %s", self._path, exc)
        finally:
            self._conn.close()

    def _checkpoint(self) -> None:
        _, frames, _ = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames > self.RESTART_FRAMES:
            self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()


class SqliteKV:
    """The kv store in the same file; revisions come from one counter, so none is ever reused."""

    def __init__(self, broker: SqliteBroker) -> None:
        self._b = broker

    def _live(self, conn: sqlite3.Connection, key: str) -> KvEntry | None:
        row = conn.execute("SELECT value, revision, expires_at FROM swell_kv WHERE key = ? AND "
                           "(expires_at IS NULL OR expires_at > ?)",
                           (key, self._b.clock.time())).fetchone()
        return None if row is None else KvEntry(key=key, value=row[0], revision=row[1],
                                                 expires_at=row[2])

    def _write(self, conn: sqlite3.Connection, key: str, value: bytes, ttl_s: float | None) -> int:
        rev: int = conn.execute(
            "INSERT INTO swell_counters (name, value) VALUES ('kv', 1) ON CONFLICT (name) "
            "DO UPDATE SET value = value + 1 RETURNING value").fetchone()[0]
        expires = None if ttl_s is None else self._b.clock.time() + ttl_s
        conn.execute("INSERT OR REPLACE INTO swell_kv (key, value, revision, expires_at) "
                     "VALUES (?, ?, ?, ?)", (key, bytes(value), rev, expires))
        return rev

    async def get(self, key: str) -> KvEntry | None:
        return await self._b._run(self._live, key)

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> int:
        return await self._b._write(self._write, key, value, ttl_s)

    async def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> int | None:
        def run(conn: sqlite3.Connection) -> int | None:
            return None if self._live(conn, key) else self._write(conn, key, value, ttl_s)
        return await self._b._write(run)

    async def compare_and_set(self, key: str, value: bytes, revision: int,
                              ttl_s: float | None = None) -> int | None:
        def run(conn: sqlite3.Connection) -> int | None:
            e = self._live(conn, key)
            if e is None or e.revision != revision:
                return None
            return self._write(conn, key, value, ttl_s)
        return await self._b._write(run)

    async def delete(self, key: str, revision: int | None = None) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            e = self._live(conn, key)
            if e is None or (revision is not None and e.revision != revision):
                return False
            conn.execute("DELETE FROM swell_kv WHERE key = ?", (key,))
            return True
        return await self._b._write(run)

    async def scan(self, prefix: str) -> list[KvEntry]:
        def run(conn: sqlite3.Connection) -> list[KvEntry]:
            now = self._b.clock.time()
            conn.execute("DELETE FROM swell_kv WHERE expires_at <= ?", (now,))
            # a range on the primary key, not LIKE: prefixes may hold % and _
            rows = conn.execute("SELECT key, value, revision, expires_at FROM swell_kv "
                                "WHERE key >= ? AND key < ? ORDER BY key",
                                (prefix, prefix + "\U0010ffff")).fetchall()
            return [KvEntry(key=k, value=v, revision=r, expires_at=x) for k, v, r, x in rows]
        return await self._b._run(lambda c: self._b._tx(c, run))
