"""PostgreSQL change data capture: ``app.pg_changes("orders-cdc", dsn=..., tables=["public.orders"],
to=stream)`` puts one event on ``to`` per row inserted, updated or deleted in ``tables``, in commit
order, keyed by primary key, read from a logical replication slot, so changes made while swell is
down wait in the slot.

Why the ``pgoutput`` plugin, read through SQL functions
    psycopg 3 has no replication protocol, but ``pg_logical_slot_peek_binary_changes`` and
    ``pg_replication_slot_advance`` work through any client. ``pgoutput`` is built into every
    PostgreSQL >= 10 (managed services included), filters tables on the server by a PUBLICATION,
    and sends each table's columns with their type OIDs, key flags and replica identity.
    ``test_decoding`` is a test plugin whose text format would have to be parsed ad hoc;
    ``wal2json`` is not in a stock server. Peek returns whole transactions (it re-sends a table's
    Relation message before its first change in each call), so a batch never splits one.

Durable before confirmed: a write-ahead buffer
    Each round peeks up to ``batch`` messages (whole transactions) committed before the server's
    flushed WAL position ``L`` (read again once the slot reaches it). Their bytes, as the server
    sent them, are written to one kv record (``ahead``: with the slot, the server's system id and
    the position past them: ``L`` when the peek reached it, so a slot whose tables are idle keeps
    up with the WAL of others, else the batch's last commit end), and only then is the slot
    advanced (after a full batch, in one trip with the next peek). Their events are stored
    (``emit(dedup=False)``), then the last commit's end LSN is written to the kv ``position``,
    while the server advances the slot and decodes the next peek; the next batch's buffer is
    written only once that is done (one batch outstanding). A batch that could not be stored (the
    broker down) is tried again from the buffer, and no further peek is made until it is. On
    start, a buffer of this slot and server is stored first, skipping the transactions at or
    below the kv position. As safe as storing before advancing: every change is, at each moment,
    in the slot (not yet advanced past it) or in the buffer (which is only overwritten once its
    batch is stored), so a crash loses nothing, and it (or a broker failing while a batch is
    stored, which is then stored again) repeats at most part of the one batch being stored (the
    part stored and not yet named by the kv position), with the same event ids
    (``<slot>:<commit LSN>:<n>``, ``n`` the change's index in its transaction). The buffer is
    written by compare-and-set on the revision the node last saw (and so stored), so a node that
    lost its lease unawares cannot overwrite a batch another has not stored. A batch of more than
    ``AHEAD_MAX_BYTES`` (a NATS kv value is capped near 1 MiB) is stored before the slot advances,
    as every batch was before; the next peek waits for it.

Events
    ``type`` ``pg.insert`` / ``pg.update`` / ``pg.delete``, ``subject`` the table, ``time`` the
    commit time, extensions ``pglsn`` (the commit LSN, ``X/Y``) and ``pgxid``; ``key`` the primary
    key (one column: its value as text; several: a JSON array) or, without one, the replica
    identity's columns. ``data`` is ``{"op", "table", "key": {col: value}, "new", "old"}`` (see
    ``pgoutput.row_data``): ``old`` is the full old row under ``REPLICA IDENTITY FULL``, else the
    old key of a delete or of an update that changed it; an unchanged TOASTed value, which
    PostgreSQL does not send, is left out of ``new`` and named in ``data["unchanged"]``. A
    TRUNCATE cannot be ordered per key, so each table it empties is one dead letter (reason
    ``truncate``) on ``<name>.dlq``, as is a row too large for the channel (``too_large``).

One reader, lag, failures
    Only the node holding a kv lease reads the slot; the others stand by and take over when it
    lapses (``LEASE_TTL_S``). ``stats.lag_s``: the age of the oldest commit read and not yet
    stored (``stats.pending``: its changes); ``detail()["lag_bytes"]``: the server's WAL position
    (as last read: while a backlog is read, the one it ends at) minus the slot's confirmed one.
    A lost connection or broker is retried with backoff, logged once per outage, shown as
    ``last_error``: the source never stops. Bad set-up (``wal_level``, privileges, tables, the
    publication) stops ``swell run`` in ``prepare()`` with one line; a slot swell read that is
    gone is reported and waited for, never made again silently. kv keys
    ``swell/source-state/<app>/<source>/``: ``slot`` (the slot read), ``position``, ``ahead``,
    ``lease``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from swell.brokers.lease import Lease
from swell.core import keys
from swell.core.config import Duration, seconds, whole
from swell.core.errors import AppError, ConfigError, MessageTooLarge, SwellError
from swell.core.event import Event
from swell.triggers import pgoutput, pgsetup
from swell.triggers.base import SourceEnv, SourceStats, unbroken
from swell.triggers.pgoutput import Truncate, format_lsn, parse_lsn
from swell.triggers.pgsetup import slot_name

if TYPE_CHECKING:
    import psycopg

    from swell.triggers.pgoutput import Relation, Transaction

Keys = dict[int, tuple[str, ...]]

__all__ = ["AHEAD_MAX_BYTES", "LEASE_TTL_S", "PgChangesSource", "slot_name"]

log = logging.getLogger("swell.sources")

LEASE_TTL_S = 10.0
"""How long the reading node's lease holds; a standby takes over within about 1.3 times this."""
MAX_BACKOFF_S = 30.0
AHEAD_MAX_BYTES = 512 * 1024
"""A batch of more bytes is stored before the slot advances, not written ahead (module doc)."""


class _Mark(msgspec.Struct, frozen=True):
    """What the kv store keeps of a slot (its ``slot`` record) or of a position in it."""

    slot: str
    system: str
    lsn: str = ""


class _Batch(msgspec.Struct, frozen=True):
    """One peek: its messages and the position past them (the ``ahead`` record, in msgpack)."""

    slot: str
    system: str
    upto: int
    rows: list[bytes]


_AHEAD = msgspec.msgpack.Encoder()

class PgChangesSource:
    """Row changes of PostgreSQL ``tables`` (``"schema.table"``) as events on ``to``, read from
    ``slot`` through ``publication`` (both ``swell_<name>`` unless named; made if missing). Each
    read takes up to ``batch`` decoder messages (one per change, two more per transaction; whole
    transactions); an idle read waits ``poll``. See the module's docstring."""

    kind: ClassVar[str] = "pg_changes"

    def __init__(self, name: str, *, dsn: str, tables: Sequence[str], to: str,
                 slot: str | None = None, publication: str | None = None, batch: int = 1000,
                 poll: Duration = "200ms", dead_letter: str | None = None) -> None:
        try:
            if not isinstance(dsn, str) or not dsn.strip():
                raise AppError("dsn must be a PostgreSQL connection string "
                               "('postgresql://user@host:5432/db' or 'host=... dbname=...')")
            if isinstance(tables, str) or not tables or not all(
                    isinstance(t, str) and re.fullmatch(r"[^.\s]+(\.[^.\s]+)?", t) for t in tables):
                raise AppError(f"tables must be a list of 'schema.table' names, not {tables!r}")
            if slot is not None and not re.fullmatch(r"[a-z0-9_]{1,63}", str(slot)):
                raise AppError(f"slot {slot!r}: a slot name is 1-63 lowercase letters, digits, _")
            if publication is not None and not (isinstance(publication, str) and publication):
                raise AppError(f"publication must be a name, not {publication!r}")
            self.batch = whole(batch, name="batch", low=1, high=1_000_000)
            self.poll_s = seconds(poll, name="poll", positive=True)
        except (AppError, ConfigError) as exc:
            raise AppError(f"pg_changes {name!r}: {exc}") from exc
        self.name, self.target, self.dsn = name, to, dsn
        self.tables = tuple(t if "." in t else f"public.{t}" for t in tables)
        self.slot = slot or slot_name(name)
        self.publication = publication or slot_name(name)
        self.dead_letter = dead_letter
        self.stats = SourceStats()
        self.lag_bytes: int | None = None
        self.standby, self.position = False, 0
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._keys: Keys = {}
        self._confirmed, self._system, self._backoff_s, self._outage = 0, "", 0.0, False
        self._flushed, self._owed = 0, False  # (owed: the slot is to advance to _confirmed)
        # the batch written ahead and not yet stored (with its tables' keys), the task storing it
        # (none: not tried yet, or failed), and the buffer's revision this node last saw
        self._ahead: tuple[_Batch, Keys] | None = None
        self._task: asyncio.Future[None] | None = None
        self._ahead_rev: int | None = None
        self._base: Event[Any] | None = None
        self._pub = '"' + self.publication.replace('"', '""') + '"'  # as publication_names takes it

    def detail(self) -> dict[str, Any]:
        return {"slot": self.slot, "publication": self.publication, "tables": list(self.tables),
                "lag_bytes": self.lag_bytes, "position": format_lsn(self.position),
                "standby": self.standby}

    async def prepare(self) -> None:
        """Before the app runs: the server is reachable, ``wal_level`` is logical, the role may
        replicate, every table exists with a primary key or replica identity, and the
        publication is (or is made) the one for them; else one clear ``ConfigError``."""
        conn = await pgsetup.connect(self.dsn, self.name)
        try:
            await pgsetup.check_server(conn, self.name, self.tables, self.publication)
        finally:
            await conn.close()

    async def run(self, env: SourceEnv) -> None:
        """Hold the lease and read the slot, or stand by; until cancelled."""
        import psycopg

        lease = Lease(env.kv, keys.source_state(env.app, self.name, "lease"), env.node, env.clock,
                      ttl_s=LEASE_TTL_S)
        try:
            while True:
                try:
                    if not await lease.hold():
                        await self._stand_by()
                        await env.clock.sleep(LEASE_TTL_S / 3)
                        continue
                    self.standby = False
                    await self._round(env)
                except (psycopg.Error, SwellError, pgoutput.PgOutputError) as exc:  # said, tried again
                    self._failure(exc)
                    if isinstance(exc, psycopg.Error):
                        await self._close()
                    await env.clock.sleep(self._next_backoff())
        finally:
            if self._task is not None:  # a stop waits for the batch being stored
                with contextlib.suppress(Exception):
                    await self._task
            await self._close()
            await lease.release()

    async def _stand_by(self) -> None:
        """Another node holds the lease: the batch being stored is finished, and one not stored
        is left to the buffer (the holder stores it first)."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        self._ahead, self._task = None, None
        self.standby, self.stats.pending, self.stats.lag_s, self.lag_bytes = True, 0, None, None
        await self._close()

    # -- one round: peek (the last batch stored meanwhile), write ahead, advance -----------------
    async def _round(self, env: SourceEnv) -> None:
        conn = await self._connection(env)  # (a slot dropped meanwhile: the peek fails, and the
        # connection is made again, which finds it gone)
        if self._ahead is not None and self._task is None:  # from the buffer, or failed: stored
            await self._settle(env)  # before any further peek
        if self._flushed <= self._confirmed:  # (while a backlog before it is read, not again)
            row = await (await conn.execute("SELECT pg_current_wal_flush_lsn()::text")).fetchone()
            self._flushed = parse_lsn(row[0] if row else "0/0")
        flushed, confirmed = self._flushed, self._confirmed
        self.lag_bytes, rows = max(flushed - confirmed, 0), []
        if flushed > confirmed:
            cur = conn.cursor(binary=True)
            async with pgsetup.one_trip(conn):  # the advance owed (after a full batch) and the peek
                if self._owed:
                    await self._advance(conn, confirmed)
                await cur.execute("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, "
                                  "%s::pg_lsn, %s, 'proto_version', '1', 'publication_names', %s)",
                                  (self.slot, format_lsn(flushed), self.batch, self._pub))
                rows = [bytes(r[0]) for r in await cur.fetchall()]
        elif self._owed:
            await self._advance(conn, confirmed)
        outline = await self._outline(conn, rows)
        await self._settle(env)  # the last batch, stored meanwhile
        if flushed > confirmed:
            # every transaction committed before ``flushed`` was read unless the batch was full
            upto = flushed if len(rows) < self.batch else outline.end_lsn or confirmed
            batch = _Batch(self.slot, self._system, upto, rows)
            if outline.changes and sum(map(len, rows)) <= AHEAD_MAX_BYTES:
                await self._write_ahead(env, batch)
            elif outline.changes:
                await self._store(env, batch, self._keys)
            if upto > confirmed:  # (after a full batch, owed: sent with the next peek, at once)
                self._confirmed, self.lag_bytes, self._owed = upto, max(flushed - upto, 0), True
                if len(rows) < self.batch:
                    await self._advance(conn, upto)
        self._recovered()
        if not rows:
            await env.clock.sleep(self.poll_s)

    async def _advance(self, conn: psycopg.AsyncConnection[Any], lsn: int) -> None:
        await conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                           (self.slot, format_lsn(lsn)))
        self._owed = False

    async def _outline(self, conn: psycopg.AsyncConnection[Any],
                       rows: list[bytes]) -> pgoutput.Outline:
        """``rows``' outline, with the primary keys of tables new to this connection looked up."""
        outline = pgoutput.outline(rows)
        for oid in outline.relations.keys() - self._keys.keys():
            self._keys[oid] = await pgsetup.pk_columns(conn, oid)
        return outline

    async def _write_ahead(self, env: SourceEnv, batch: _Batch) -> None:
        """Write ``batch`` to the buffer (the slot may advance past it after this), and store it
        while the server advances the slot and decodes the next peek. The buffer is written only
        over the revision this node last saw (and so stored)."""
        key, raw = keys.source_state(env.app, self.name, "ahead"), _AHEAD.encode(batch)
        rev = (await env.kv.put_if_absent(key, raw) if self._ahead_rev is None
               else await env.kv.compare_and_set(key, raw, self._ahead_rev))
        if rev is None:  # read again, with the slot's state, on the next connection
            await self._close()
            raise SwellError(f"pg_changes {self.name!r}: another node wrote the slot's "
                             "write-ahead buffer meanwhile (a lease lost?); reading it again")
        self._ahead_rev, self._ahead = rev, (batch, self._keys)
        self._task = asyncio.ensure_future(self._store(env, batch, self._keys))

    async def _settle(self, env: SourceEnv) -> None:
        """The batch written ahead, stored (now, unless a task is storing it); if it cannot be,
        the error is raised and the batch is tried again before any further peek."""
        if self._ahead is None:
            return
        if self._task is None:
            self._task = asyncio.ensure_future(self._store(env, *self._ahead))
        try:
            await asyncio.shield(self._task)
        finally:
            if self._task.done():
                self._task = None
        self._ahead = None

    async def _store(self, env: SourceEnv, batch: _Batch, pks: Keys) -> None:
        """Store the events of the batch's transactions after the kv position, then the
        position."""
        relations: dict[int, Relation] = {}
        txs = [t for t in pgoutput.transactions(batch.rows, relations)
               if t.commit.end_lsn > self.position]
        events: list[Event[Any]] = []
        rejects: list[tuple[Event[Any], str, str | None]] = []
        for i, tx in enumerate(txs):
            if i % 100 == 0:  # the loop answers the server meanwhile: the next peek goes sooner
                await asyncio.sleep(0)
            self._events(env, tx, relations, pks, events, rejects)
        self.stats.pending = len(events) + len(rejects)
        self.stats.lag_s = max(0.0, env.clock.time() - txs[0].begin.time.timestamp()) if txs else 0.0
        mark = _Mark(self.slot, self._system, format_lsn(max([batch.upto] + [t.commit.end_lsn for t in txs])))

        async def step() -> None:
            try:
                await env.emitter.emit(events, dedup=False)
            except MessageTooLarge:  # one at a time, in order; those too large are rejected
                for e in events:
                    try:
                        await env.emitter.emit([e], dedup=False)
                    except MessageTooLarge as exc:
                        small = {k: v for k, v in (e.data or {}).items() if k not in ("new", "old")}
                        rejects.append((msgspec.structs.replace(e, data=small), "too_large", str(exc)))
            await env.emitter.dead_letter(rejects)
            if events or rejects:
                await env.kv.put(keys.source_state(env.app, self.name, "position"),
                                 msgspec.json.encode(mark))

        await unbroken(step())
        self.stats.received += self.stats.pending
        self.position = max(self.position, parse_lsn(mark.lsn))
        self.stats.pending, self.stats.lag_s = 0, 0.0

    def _events(self, env: SourceEnv, tx: Transaction, relations: dict[int, Relation], pks: Keys,
                events: list[Event[Any]], rejects: list[tuple[Event[Any], str, str | None]]) -> None:
        lsn, n = format_lsn(tx.begin.final_lsn), 0
        if self._base is None:  # built the Emitter's way once, then copied (a tenth the cost)
            self._base = env.emitter.event(None, attributes={"pglsn": "", "pgxid": 0})
        base = msgspec.structs.replace(self._base, time=tx.begin.time,
                                       extensions={"pglsn": lsn, "pgxid": tx.begin.xid})
        for change in tx.changes:
            for oid in change.relations if isinstance(change, Truncate) else (change.relation,):
                rel = relations[oid]
                data = pgoutput.row_data(change, rel, pks.get(oid, ()))
                event = msgspec.structs.replace(
                    base, data=data, id=f"{self.slot}:{lsn}:{n}", type=f"pg.{data['op']}",
                    subject=rel.qualified, key=pgoutput.key_text(data["key"]))
                n += 1
                if isinstance(change, Truncate):
                    rejects.append((event, "truncate", (
                        f"TRUNCATE of {rel.qualified} at {lsn}: its rows were removed without "
                        "one event each; consumers holding them must resync the table")))
                else:
                    events.append(event)

    # -- the connection and the slot -------------------------------------------------------------
    async def _connection(self, env: SourceEnv) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = await pgsetup.connect(self.dsn, self.name)
        self._keys, self._flushed, self._owed = {}, 0, False
        try:
            await self._open_slot(conn, env)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    async def _open_slot(self, conn: psycopg.AsyncConnection[Any], env: SourceEnv) -> None:
        """Find the slot (or create it the first time), the position stored in it, and a batch
        written ahead and maybe not stored."""
        slot_key = keys.source_state(env.app, self.name, "slot")
        # with the server's identity (a restored or another server has another; "" for a role
        # that may not read it)
        plugin, here, self._system, confirmed = await (await conn.execute(
            "SELECT s.plugin, s.database = current_database(), CASE WHEN has_function_privilege("
            "'pg_control_system()', 'execute') THEN (SELECT system_identifier::text FROM "
            "pg_control_system()) ELSE '' END, s.confirmed_flush_lsn::text FROM (SELECT 1) one "
            "LEFT JOIN pg_replication_slots s ON s.slot_name = %s", (self.slot,))).fetchone() \
            or (None, None, "", None)
        entry = await env.kv.get(slot_key)
        known = entry is not None and _decode(entry.value) == _Mark(self.slot, self._system)
        if plugin is None and known:
            raise ConfigError(pgsetup.slot_gone(self.slot))
        if plugin is not None and (plugin != "pgoutput" or not here):
            raise ConfigError(
                f"replication slot {self.slot!r} exists for plugin "
                f"{plugin!r}{'' if here else ' in another database'}; it needs a pgoutput "
                "slot of this database: name another with slot=, or drop it")
        if plugin is None:
            confirmed = (await (await conn.execute(
                "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                (self.slot,))).fetchone() or ("0/0",))[0]
            log.info("pg_changes %s: created replication slot %s", self.name, self.slot)
        self._confirmed = parse_lsn(confirmed or "0/0")
        if not known:
            await env.kv.put(slot_key, msgspec.json.encode(_Mark(self.slot, self._system)))
        entry = await env.kv.get(keys.source_state(env.app, self.name, "position"))
        mark = _decode(entry.value) if entry is not None else None
        if mark is not None and (mark.slot, mark.system) == (self.slot, self._system):
            self.position = max(self.position, parse_lsn(mark.lsn))
        entry = await env.kv.get(keys.source_state(env.app, self.name, "ahead"))
        if self._ahead is None:  # (this node's own, not stored yet, stays, with its revision)
            self._ahead_rev = entry.revision if entry is not None else None
            batch = _unpack(entry.value) if entry is not None else None
            if batch is not None and (batch.slot, batch.system) == (self.slot, self._system) \
                    and batch.upto > self.position:
                await self._outline(conn, batch.rows)
                self._ahead = batch, self._keys

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    # -- failures ------------------------------------------------------------------------------
    def _failure(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = text = pgsetup.first_line(exc)
        if not self._outage:  # one line per outage
            log.warning("pg_changes %s (%s): %s; retrying", self.name, pgsetup.where(self.dsn), text)
        self._outage = True

    def _recovered(self) -> None:
        if self._outage:
            log.info("pg_changes %s: reading %s again", self.name, self.slot)
        self._outage, self._backoff_s = False, 0.0
        self.stats.last_error = None

    def _next_backoff(self) -> float:
        self._backoff_s = min(max(self._backoff_s * 2, self.poll_s, 0.2), MAX_BACKOFF_S)
        return self._backoff_s


def _decode(raw: bytes) -> _Mark | None:
    with contextlib.suppress(msgspec.DecodeError):
        return msgspec.json.decode(raw, type=_Mark)
    return None


def _unpack(raw: bytes) -> _Batch | None:
    with contextlib.suppress(msgspec.DecodeError):
        return msgspec.msgpack.decode(raw, type=_Batch)
    return None
