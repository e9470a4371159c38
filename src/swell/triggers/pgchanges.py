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

Durable before confirmed
    Each round reads the server's flushed WAL position ``L``, peeks up to ``batch`` messages
    (whole transactions) committed before ``L``, stores their events (``emit(dedup=False)``),
    writes the last stored commit's end LSN to the kv store, and only then advances the slot (to
    ``L`` when the peek reached it, so a slot whose tables are idle keeps up with the WAL of
    others). A crash before the advance: the next start peeks the same transactions again and
    skips those at or below the kv position, so at most the batch being appended when swell died
    is repeated, with the same event ids (``<slot>:<commit LSN>:<n>``, ``n`` the change's index
    in its transaction).

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
    minus the slot's confirmed one. A lost connection or broker is retried with backoff, logged
    once per outage, shown as ``last_error``: the source never stops. Bad set-up (``wal_level``,
    privileges, tables, the publication) stops ``swell run`` in ``prepare()`` with one line; a
    slot swell read that is gone is reported and waited for, never made again silently. kv keys
    ``swell/source-state/<app>/<source>/``: ``slot`` (the slot read), ``position``, ``lease``."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from swell.brokers.lease import Lease
from swell.core import keys
from swell.core.config import Duration, seconds, whole
from swell.core.errors import AppError, ConfigError, MessageTooLarge, MissingDependency, SwellError
from swell.core.event import Event
from swell.triggers import pgoutput
from swell.triggers.base import SourceEnv, SourceStats, unbroken
from swell.triggers.pgoutput import Truncate, format_lsn, parse_lsn

if TYPE_CHECKING:
    import psycopg

    from swell.triggers.pgoutput import Relation, Transaction

__all__ = ["LEASE_TTL_S", "PgChangesSource", "slot_name"]

log = logging.getLogger("swell.sources")

LEASE_TTL_S = 10.0
"""How long the reading node's lease holds; a standby takes over within about 1.3 times this."""
MAX_BACKOFF_S = 30.0


def slot_name(name: str) -> str:
    """``swell_<name>`` as a slot name may be (``[a-z0-9_]``, at most 63 characters)."""
    clean = "swell_" + re.sub(r"[^a-z0-9_]", "_", name.lower())
    if len(clean) > 63:
        clean = clean[:54] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return clean


class _Mark(msgspec.Struct, frozen=True):
    """What the kv store keeps of a slot (its ``slot`` record) or of a position in it."""

    slot: str
    system: str
    lsn: str = ""


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
        self._relations: dict[int, Relation] = {}
        self._keys: dict[int, tuple[str, ...]] = {}
        self._confirmed, self._system, self._backoff_s, self._outage = 0, "", 0.0, False
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
        conn = await connect(self.dsn, self.name)
        try:
            await check_server(conn, self.name, self.tables, self.publication)
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
                        self.standby, self.stats.pending, self.stats.lag_s = True, 0, None
                        await self._close()
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
            await self._close()
            await lease.release()

    # -- one round: peek, store, advance ---------------------------------------------------------
    async def _round(self, env: SourceEnv) -> None:
        conn = await self._connection(env)  # (a slot dropped meanwhile: the peek fails, and the
        # connection is made again, which finds it gone)
        row = await (await conn.execute("SELECT pg_current_wal_flush_lsn()::text")).fetchone()
        flushed, confirmed = parse_lsn(row[0] if row else "0/0"), self._confirmed
        self.lag_bytes, rows = max(flushed - confirmed, 0), []
        if flushed > confirmed:
            cur = conn.cursor(binary=True)
            await cur.execute("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, "
                              "%s, 'proto_version', '1', 'publication_names', %s)",
                              (self.slot, format_lsn(flushed), self.batch, self._pub))
            rows = await cur.fetchall()
            txs = pgoutput.transactions([r[0] for r in rows], self._relations)
            for oid in self._relations.keys() - self._keys.keys():
                self._keys[oid] = await pk_columns(conn, oid)
            # every transaction committed before ``flushed`` was read unless the batch was full
            upto = flushed if len(rows) < self.batch else max(
                (t.commit.end_lsn for t in txs), default=confirmed)
            await self._store(env, [t for t in txs if t.commit.end_lsn > self.position], upto)
            if upto > confirmed:
                await conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                                   (self.slot, format_lsn(upto)))
                self._confirmed, self.lag_bytes = upto, max(flushed - upto, 0)
        self._recovered()
        self.stats.pending, self.stats.lag_s = 0, 0.0
        if not rows:
            await env.clock.sleep(self.poll_s)

    async def _store(self, env: SourceEnv, txs: list[Transaction], upto: int) -> None:
        """Store the transactions' events, then the position: the slot may advance after this."""
        events: list[Event[Any]] = []
        rejects: list[tuple[Event[Any], str, str | None]] = []
        for tx in txs:
            self._events(env, tx, events, rejects)
        self.stats.pending = len(events) + len(rejects)
        self.stats.lag_s = max(0.0, env.clock.time() - txs[0].begin.time.timestamp()) if txs else 0.0
        mark = _Mark(self.slot, self._system, format_lsn(max([upto] + [t.commit.end_lsn for t in txs])))

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

    def _events(self, env: SourceEnv, tx: Transaction, events: list[Event[Any]],
                rejects: list[tuple[Event[Any], str, str | None]]) -> None:
        lsn, n = format_lsn(tx.begin.final_lsn), 0
        if self._base is None:  # built the Emitter's way once, then copied (a tenth the cost)
            self._base = env.emitter.event(None, attributes={"pglsn": "", "pgxid": 0})
        base = msgspec.structs.replace(self._base, time=tx.begin.time,
                                       extensions={"pglsn": lsn, "pgxid": tx.begin.xid})
        for change in tx.changes:
            for oid in change.relations if isinstance(change, Truncate) else (change.relation,):
                rel = self._relations[oid]
                data = pgoutput.row_data(change, rel, self._keys.get(oid, ()))
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
        conn = await connect(self.dsn, self.name)
        try:
            await self._open_slot(conn, env)
        except BaseException:
            await conn.close()
            raise
        self._conn, self._relations, self._keys = conn, {}, {}
        return conn

    async def _open_slot(self, conn: psycopg.AsyncConnection[Any], env: SourceEnv) -> None:
        """Find the slot (or create it the first time), and the position stored in it."""
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
            raise ConfigError(self._dropped())
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

    def _dropped(self) -> str:
        return (f"replication slot {self.slot!r} is gone (dropped, or "
                "the server restored), so changes made since may be lost. To start again from "
                "now on purpose, create it: SELECT pg_create_logical_replication_slot("
                f"'{self.slot}', 'pgoutput');")

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    # -- failures ------------------------------------------------------------------------------
    def _failure(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = text = first_line(exc)
        if not self._outage:  # one line per outage
            log.warning("pg_changes %s (%s): %s; retrying", self.name, where(self.dsn), text)
        self._outage = True

    def _recovered(self) -> None:
        if self._outage:
            log.info("pg_changes %s: reading %s again", self.name, self.slot)
        self._outage, self._backoff_s = False, 0.0
        self.stats.last_error = None

    def _next_backoff(self) -> float:
        self._backoff_s = min(max(self._backoff_s * 2, self.poll_s, 0.2), MAX_BACKOFF_S)
        return self._backoff_s


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)


def _decode(raw: bytes) -> _Mark | None:
    with contextlib.suppress(msgspec.DecodeError):
        return msgspec.json.decode(raw, type=_Mark)
    return None


# -- the server's set-up, checked before the app runs ----------------------------------------------
def where(dsn: str) -> str:
    """``host:port`` of a DSN (never its password)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(dsn)
    except Exception:  # a DSN psycopg cannot read: the connect says why
        return "?"
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}"


async def connect(dsn: str, name: str) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection, or a ``ConfigError`` naming host:port."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency("psycopg", "postgres") from exc
    try:
        return await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=5, application_name=f"swell {name}"[:63])
    except psycopg.Error as exc:
        raise ConfigError(f"pg_changes {name!r}: cannot connect to PostgreSQL at {where(dsn)}: "
                          f"{first_line(exc)}") from exc


async def check_server(conn: psycopg.AsyncConnection[Any], name: str, tables: Sequence[str],
                       publication: str) -> None:
    """``wal_level``, the role's REPLICATION, the tables, the publication (made if missing)."""
    level, user, may = await (await conn.execute(
        "SELECT current_setting('wal_level'), current_user, rolreplication OR rolsuper "
        "FROM pg_roles WHERE rolname = current_user")).fetchone() or ("?", "?", False)
    if level != "logical":
        raise ConfigError(f"pg_changes {name!r}: the server's wal_level is {level!r}; logical "
                          "decoding needs wal_level = logical: set it in postgresql.conf (or "
                          "ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL")
    if not may:
        raise ConfigError(f"pg_changes {name!r}: role {user!r} may not read replication slots: "
                          f"ALTER ROLE {user} REPLICATION; (as a superuser)")
    for table in tables:
        row = await (await conn.execute(
            "SELECT c.relkind, c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE "
            "i.indrelid = c.oid AND i.indisprimary) FROM pg_class c JOIN pg_namespace n ON "
            "n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            table.split(".", 1))).fetchone()
        if row is None or row[0] not in ("r", "p"):
            raise ConfigError(f"pg_changes {name!r}: there is no table {table!r} in this database"
                              + ("" if row is None else f" (it is a relation of kind {row[0]!r})"))
        if row[1] == "n" or (row[1] == "d" and not row[2]):
            # in a publication, such a table's UPDATE and DELETE would fail for its own users
            raise ConfigError(
                f"pg_changes {name!r}: table {table!r} has no primary key"
                f"{' and REPLICA IDENTITY NOTHING' if row[1] == 'n' else ''}, so its updates and "
                "deletes cannot name their row: add a primary key, or "
                f"ALTER TABLE {table} REPLICA IDENTITY FULL")
    await _check_publication(conn, name, tables, publication)


async def _check_publication(conn: psycopg.AsyncConnection[Any], name: str,
                             tables: Sequence[str], publication: str) -> None:
    import psycopg
    from psycopg import sql

    async def published() -> set[str] | None:
        rows = await (await conn.execute(
            "SELECT p.pubinsert AND p.pubupdate AND p.pubdelete, t.schemaname || '.' || "
            "t.tablename FROM pg_publication p LEFT JOIN pg_publication_tables t "
            "ON t.pubname = p.pubname WHERE p.pubname = %s", (publication,))).fetchall()
        if rows and not rows[0][0]:
            raise ConfigError(f"pg_changes {name!r}: publication {publication!r} does not "
                              "publish every insert, update and delete: ALTER PUBLICATION "
                              f"{publication} SET (publish = 'insert, update, delete, truncate')")
        return {r[1] for r in rows if r[1]} if rows else None

    have = await published()
    if have is None:
        names = sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t in tables)
        try:
            await conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(publication), names))
        except psycopg.errors.DuplicateObject:
            pass  # another node made it meanwhile: checked below
        except psycopg.Error as exc:
            raise ConfigError(f"pg_changes {name!r}: cannot create publication {publication!r}"
                              f" ({first_line(exc)}); create it as the tables' "
                              f"owner: CREATE PUBLICATION {publication} FOR TABLE "
                              f"{', '.join(tables)};") from exc
        have = await published() or set()
    if have != set(tables):
        said = [f"lacks {', '.join(sorted(set(tables) - have))}"] if set(tables) - have else []
        said += [f"also has {', '.join(sorted(have - set(tables)))}"] if have - set(tables) else []
        raise ConfigError(
            f"pg_changes {name!r}: publication {publication!r} exists and {'; '.join(said)}; "
            f"swell does not alter it: ALTER PUBLICATION {publication} SET TABLE "
            f"{', '.join(tables)}; or name another with publication=")


async def pk_columns(conn: psycopg.AsyncConnection[Any], oid: int) -> tuple[str, ...]:
    """The primary key's columns of table ``oid``, in key order (none: ``()``)."""
    rows = await (await conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY (i.indkey) WHERE i.indrelid = %s AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)", (oid,))).fetchall()
    return tuple(str(r[0]) for r in rows)
