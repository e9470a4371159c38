"""SQLite change data capture: ``app.sqlite_changes("orders-cdc", path="shop.db",
tables=["orders"], to=stream)``.

SQLite has no log to read, so swell puts triggers on each table (``AFTER INSERT``, ``UPDATE``,
``DELETE``) that add a row per change to a change table of the same database,
``swell_changes_<source>``: the table, the operation, the primary key and the new and old rows as
JSON. The triggers run inside the writer's transaction, whichever process writes: a rolled-back
transaction leaves no change row, and since SQLite commits one writer at a time the rows'
``seq`` (``AUTOINCREMENT``, never reused) is commit order. The source reads the rows in ``seq``
order, appends one event per row, writes the last stored ``seq`` to the kv store, then deletes the
rows (the table is trimmed as it is drained). A crash between the append and the checkpoint
repeats at most those rows; a failed delete only leaves them to the next batch's. A row too large
for the channel is a dead letter with its key, not its values.

The cost is on the writer: each row written also writes a change row (measured in
``bench/sqlite_changes.py``). The triggers list the table's columns as they were when the source
started: ``swell run`` reinstalls them at each start, so a column added later is captured from
the next start on. A value SQLite holds as a BLOB is captured as its hex text (JSON has no
bytes). One node drains a change table at a time (a kv lease)."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sqlite3
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from swell.brokers.lease import Lease
from swell.core import keys
from swell.core.config import Duration, seconds, whole
from swell.core.errors import AppError, ConfigError, MessageTooLarge, SwellError
from swell.core.event import Event
from swell.triggers.base import SourceEnv, SourceStats, unbroken

__all__ = ["SqliteChangesSource"]

log = logging.getLogger("swell.sources")

MAX_BACKOFF_S = 30.0
LEASE_TTL_S = 15.0  # a node that stopped renewing is replaced after this (at once if it died here)
OPS = ("insert", "update", "delete")
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"  # (unixepoch('subsec') needs SQLite 3.42)


@dataclass(frozen=True)
class Change:
    """A row of the change table."""

    seq: int
    table: str
    op: str
    key: list[Any]
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    at: float
    pk: tuple[str, ...]


class SqliteChangesSource:
    """The source ``app.sqlite_changes`` declares."""

    kind: ClassVar[str] = "sqlite_changes"

    def __init__(self, name: str, *, path: str | Path, tables: Sequence[str], to: str,
                 batch: int = 1000, poll: Duration = "50ms",
                 dead_letter: str | None = None) -> None:
        what = f"sqlite_changes {name!r}"
        if isinstance(tables, str) or not tables:
            raise AppError(f"{what}: tables= takes a list of table names, such as ['orders']")
        for t in tables:
            if not isinstance(t, str) or not t:
                raise AppError(f"{what}: {t!r} is not a table name")
        self.name = name
        self.path = Path(path)
        self.tables = list(dict.fromkeys(tables))
        self.target = to
        try:
            self.batch = whole(batch, name="batch", low=1, high=100_000)
            self.poll_s = seconds(poll, name="poll", positive=True)
        except ConfigError as exc:
            raise AppError(f"{what}: {exc}") from None
        self.dead_letter = dead_letter
        self.stats = SourceStats()
        self.change_table = f"swell_changes_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
        self._keys: dict[str, tuple[str, ...]] = {}
        self._token = ""
        self._conn: sqlite3.Connection | None = None
        self._state = "starting"
        self._backoff_s = 0.0

    def detail(self) -> dict[str, Any]:
        return {"path": str(self.path), "tables": self.tables, "state": self._state,
                "change_table": self.change_table}

    # -- start ---------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Check the database and its tables, and (re)install the change table and triggers."""
        self._conn = await asyncio.to_thread(self._open)
        try:
            self._keys, self._token = await asyncio.to_thread(
                install, self._conn, self.name, self.change_table, self.tables)
        except sqlite3.Error as exc:
            raise ConfigError(f"sqlite_changes {self.name!r}: cannot install the capture in "
                              f"{self.path}: {exc}") from None

    def _open(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise ConfigError(f"sqlite_changes {self.name!r}: no database at {self.path} (the "
                              "path is relative to where swell runs)")
        try:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise ConfigError(f"sqlite_changes {self.name!r}: cannot open {self.path}: "
                              f"{exc}") from None
        return conn

    # -- run -----------------------------------------------------------------------------------
    async def run(self, env: SourceEnv) -> None:
        if self._conn is None:
            await self.prepare()
        lease = Lease(env.kv, keys.source_state(env.app, self.name, "lease"), env.node, env.clock,
                      ttl_s=LEASE_TTL_S)
        checkpoint = keys.source_state(env.app, self.name, "position")
        stored = version = -1
        try:
            while True:
                if not await lease.hold():
                    self._state, stored = "standby", -1
                    self.stats.pending, self.stats.lag_s = 0, None
                    await env.clock.sleep(1.0)  # (a lease given up is taken within a second)
                    continue
                if stored < 0:  # the lease just taken: go on from what its last holder stored
                    stored = await self._checkpoint(env, checkpoint)
                self._state = "reading"
                try:
                    now_version = await asyncio.to_thread(self._data_version)
                    if now_version == version and self.stats.pending == 0:
                        await env.clock.sleep(self.poll_s)
                        continue
                    rows = await asyncio.to_thread(self._read, stored)
                    if not rows:
                        version = now_version
                        self.stats.pending, self.stats.lag_s = 0, 0.0
                        await env.clock.sleep(self.poll_s)
                        continue
                    await unbroken(self._store(env, rows, checkpoint))
                    stored = rows[-1].seq
                    self._backoff_s = 0.0
                    with suppress(sqlite3.Error):  # (else the next batch's trim takes them)
                        await asyncio.to_thread(self._trim, stored)
                except (SwellError, sqlite3.Error) as exc:
                    self.stats.errors += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("sqlite_changes %s: %s (will retry)", self.name, exc)
                    self._backoff_s = min(max(self._backoff_s * 2, self.poll_s), MAX_BACKOFF_S)
                    await env.clock.sleep(self._backoff_s)
        finally:
            await lease.release()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _checkpoint(self, env: SourceEnv, key: str) -> int:
        """The last ``seq`` stored by an earlier run (of this database's capture), else 0."""
        try:
            entry = await env.kv.get(key)
        except SwellError:
            return 0
        if entry is None:
            return 0
        token, _, seq = entry.value.decode().partition(":")
        return int(seq) if token == self._token and seq.isdigit() else 0

    async def _store(self, env: SourceEnv, rows: list[Change], checkpoint: str) -> None:
        """The rows' events (a row too large for the channel: a dead letter with its key, not its
        values), then the checkpoint."""
        self.stats.received += len(rows)
        events = [self._event(env, c) for c in rows]
        try:
            await env.emitter.emit(events, dedup=False)
        except MessageTooLarge:  # one at a time, in order
            for c, e in zip(rows, events, strict=True):
                try:
                    await env.emitter.emit([e], dedup=False)
                except MessageTooLarge as exc:
                    await env.emitter.dead_letter([(self._event(env, c, whole=False), "too_large",
                                                    f"{exc}: the dead letter has its key")])
        with suppress(SwellError):  # (the rows go next: only a crash right now repeats them)
            await env.kv.put(checkpoint, f"{self._token}:{rows[-1].seq}".encode())

    def _event(self, env: SourceEnv, c: Change, *, whole: bool = True) -> Event[Any]:
        key = c.key[0] if len(c.key) == 1 else c.key
        data = {"op": c.op, "table": c.table, "key": dict(zip(c.pk, c.key, strict=False)),
                "new": c.new if whole else None, "old": c.old if whole else None}
        return env.emitter.event(
            data, time=datetime.fromtimestamp(c.at, UTC), id=f"{self._token}:{c.seq}",
            type=f"sqlite.{c.op}", subject=c.table,
            key=key if isinstance(key, str) else msgspec.json.encode(key).decode(),
            attributes={"sqliteseq": c.seq})

    # -- the database (called in a thread) -----------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.OperationalError("the database is closed")
        return self._conn

    def _data_version(self) -> int:
        version: int = self._db().execute("PRAGMA data_version").fetchone()[0]
        return version

    def _read(self, after: int) -> list[Change]:
        conn = self._db()
        rows = conn.execute(
            f'SELECT seq, tbl, op, key, new, old, at FROM "{self.change_table}" WHERE seq > ? '
            "ORDER BY seq LIMIT ?", (after, self.batch)).fetchall()
        head = conn.execute(f'SELECT max(seq) FROM "{self.change_table}"').fetchone()[0]
        out = [Change(seq, tbl, op, msgspec.json.decode(key),
                      None if new is None else msgspec.json.decode(new),
                      None if old is None else msgspec.json.decode(old), at,
                      self._keys.get(tbl, ()))
               for seq, tbl, op, key, new, old, at in rows]
        if out:
            self.stats.pending = max(0, (head or 0) - after)
            self.stats.lag_s = max(0.0, datetime.now(UTC).timestamp() - out[0].at)
        return out

    def _trim(self, upto: int) -> None:
        self._db().execute(f'DELETE FROM "{self.change_table}" WHERE seq <= ?', (upto,))


# -- installing the capture ----------------------------------------------------------------------
def install(conn: sqlite3.Connection, source: str, change_table: str,
            tables: Sequence[str]) -> tuple[dict[str, tuple[str, ...]], str]:
    """Create the change table and this source's triggers (replacing the ones of an earlier
    start), in one transaction; the primary key columns of each table, and the capture's token
    (an id of this database's capture, so a checkpoint of another file is never applied)."""
    keys: dict[str, tuple[str, ...]] = {}
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS swell_capture (source TEXT PRIMARY KEY, "
                     "token TEXT NOT NULL, tables TEXT NOT NULL)")
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{change_table}" ('
                     "seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, "
                     "op TEXT NOT NULL, key TEXT NOT NULL, new TEXT, old TEXT, "
                     f"at REAL NOT NULL DEFAULT {_NOW})")
        row = conn.execute("SELECT token, tables FROM swell_capture WHERE source = ?",
                           (source,)).fetchone()
        token = row[0] if row else secrets.token_hex(6)
        for old in msgspec.json.decode(row[1]) if row else []:
            _drop_triggers(conn, change_table, old)
        for table in tables:
            columns, pk = _columns(conn, source, table)
            keys[table] = pk
            _drop_triggers(conn, change_table, table)
            for op in OPS:
                conn.execute(_trigger(change_table, table, op, columns, pk))
        conn.execute("INSERT INTO swell_capture (source, token, tables) VALUES (?, ?, ?) "
                     "ON CONFLICT (source) DO UPDATE SET tables = excluded.tables",
                     (source, token, msgspec.json.encode(list(tables)).decode()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return keys, token


def _columns(conn: sqlite3.Connection, source: str, table: str) -> tuple[list[str], tuple[str, ...]]:
    found = conn.execute("SELECT type FROM sqlite_master WHERE name = ? AND type IN "
                         "('table', 'view')", (table,)).fetchone()
    if found is None or found[0] != "table":
        raise ConfigError(f"sqlite_changes {source!r}: no table {table!r} in the database")
    info = conn.execute(f"PRAGMA table_info({_ident(table)})").fetchall()
    columns = [r[1] for r in info]
    pk = tuple(r[1] for r in sorted((r for r in info if r[5] > 0), key=lambda r: r[5]))
    if not pk:
        raise ConfigError(f"sqlite_changes {source!r}: table {table!r} has no primary key: swell "
                          "keys each change by it (declare one, such as id INTEGER PRIMARY KEY)")
    return columns, pk


def _trigger(change_table: str, table: str, op: str, columns: list[str],
             pk: tuple[str, ...]) -> str:
    row = "NEW" if op != "delete" else "OLD"
    new = _json_row("NEW", columns) if op != "delete" else "NULL"
    old = _json_row("OLD", columns) if op != "insert" else "NULL"
    key = "json_array(" + ", ".join(_value(row, c) for c in pk) + ")"
    return (f"CREATE TRIGGER {_ident(_trigger_name(change_table, table, op))} "
            f"AFTER {op.upper()} ON {_ident(table)} BEGIN "
            f'INSERT INTO "{change_table}" (tbl, op, key, new, old) '
            f"VALUES ({_literal(table)}, '{op}', {key}, {new}, {old}); END")


def _drop_triggers(conn: sqlite3.Connection, change_table: str, table: str) -> None:
    for op in OPS:
        conn.execute(f"DROP TRIGGER IF EXISTS {_ident(_trigger_name(change_table, table, op))}")


def _trigger_name(change_table: str, table: str, op: str) -> str:
    return f"{change_table}__{table}__{op}"


def _json_row(alias: str, columns: list[str]) -> str:
    return "json_object(" + ", ".join(f"{_literal(c)}, {_value(alias, c)}" for c in columns) + ")"


def _value(alias: str, column: str) -> str:
    ref = f"{alias}.{_ident(column)}"
    return f"CASE typeof({ref}) WHEN 'blob' THEN hex({ref}) ELSE {ref} END"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
