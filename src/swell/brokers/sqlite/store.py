"""The base every part of the SQLite broker stands on: the file (WAL) and its schema, and one
connection owned by one thread.

Every call is one hop to that thread, so the event loop never blocks on the database (a second
thread and connection only checkpoint the WAL). Writers are serialised by SQLite itself (``BEGIN
IMMEDIATE``, tried again while another process holds the lock), which is what makes two processes
on one file safe.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from swell.brokers.sqlite.batching import Batcher
from swell.brokers.sqlite.checkpoint import Checkpointer
from swell.brokers.sqlite.watch import Watch
from swell.brokers.waiting import Waker
from swell.core.clock import Clock
from swell.core.errors import BrokerError, BrokerUnavailable, ConfigError, SwellError

T = TypeVar("T")

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

# Messages per queue, for stats() without a scan (see swell.brokers.sqlite.messages.resize).
_SIZES = """CREATE TABLE swell_sizes (queue TEXT PRIMARY KEY, total INTEGER NOT NULL) WITHOUT ROWID"""

#: a small write waiting for the connection: fn(conn, *args)
_Write = tuple[Callable[..., Any], tuple[Any, ...]]


class SqliteStore:
    """One SQLite file, its connection and the thread that owns it; the wake-ups of receivers
    waiting in this process (``waker``), and the one watch for other processes' writes that the
    waker asks (``watch``). ``synchronous`` is SQLite's."""

    def __init__(self, path: str, *, clock: Clock, synchronous: str) -> None:
        if synchronous.lower() not in ("normal", "full", "extra"):
            raise ConfigError(f"synchronous must be normal, full or extra, not {synchronous!r}")
        self.path = path
        self.clock = clock
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="swell-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._synchronous = synchronous
        # a connection used on the event loop's thread for nothing but PRAGMA data_version (the
        # watch's shortcut); opened with the broker's connection
        self.tripwire: sqlite3.Connection | None = None
        self.watch = Watch(self)
        self.waker = Waker(clock, self.watch)
        # small writes asked for while the connection is busy share a transaction
        self._writes: Batcher[_Write, Any] = Batcher(
            lambda batch: self.run(transaction, _apply_writes, batch))
        self._checkpointer: Checkpointer | None = None
        self.closed = False

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
                self._checkpointer = Checkpointer(self.path, self._synchronous)
                conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer's work now
                # used on the loop's thread: never waits for a lock (a busy file is one missed
                # look, tried again at the next poll), so it cannot stall the loop
                tripwire = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                           check_same_thread=False)
            except (OSError, sqlite3.Error) as exc:
                raise BrokerUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc
            self.tripwire = tripwire
            self._conn = conn
        return self._conn

    async def run(self, fn: Callable[..., T], *args: Any, wake: Iterable[str] = ()) -> T:
        """``fn(conn, *args)`` on the broker's thread. ``wake``: queues whose receivers in this
        process look again once it is done, even if the caller was cancelled meanwhile (the work
        goes on in its thread and may store; this process's own commits are no news to the
        watcher, so only this wakes them)."""
        if self.closed:
            raise BrokerError(f"the SQLite broker on {self.path!r} is closed")
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._exec, self._call, fn, args)
        if not wake:
            return await work
        queues = tuple(wake)

        def woken(_: object) -> None:
            for queue in queues:
                self.waker.notify(queue)

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

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a small write ``fn(conn, *args)`` in a transaction. Writes asked for while the
        connection is busy share one transaction when it is free (each in a savepoint of its own,
        so one that fails fails alone): concurrent small writes (kv) share a commit."""
        result: T = await self._writes((fn, args))
        return result

    async def close(self, last: Callable[[sqlite3.Connection], object]) -> None:
        """Close for good: a receive still waiting returns what it has (nothing); ``last(conn)``
        runs on the broker's thread just before its connection closes."""
        self.closed = True
        await self.waker.aclose()
        if self.tripwire is not None:
            self.tripwire.close()
            self.tripwire = None

        def shut() -> None:
            if self._checkpointer is not None:
                self._checkpointer.stop()
            if self._conn is not None:
                last(self._conn)
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._exec, shut)
        self._exec.shutdown(wait=True)


def transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    """``fn(conn, *args)`` in a write transaction, committed if it returns."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return result


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


def _add_sizes(conn: sqlite3.Connection) -> None:
    """Create ``swell_sizes``, counting the messages a file from an older swell holds already
    (in the same transaction, so that no send slips between the count and the table)."""
    def missing() -> bool:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                            "name = 'swell_sizes'").fetchone() is None

    def create(conn: sqlite3.Connection) -> None:
        if missing():
            conn.execute(_SIZES)
            conn.execute("INSERT INTO swell_sizes (queue, total) "
                         "SELECT queue, count(*) FROM swell_messages GROUP BY queue")

    if missing():
        transaction(conn, create)


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY
