"""PostgreSQL change capture's set-up, checked before the app runs (``PgChangesSource.prepare``):
the connection, ``wal_level``, the role's REPLICATION, the tables and their keys, and the
publication (made if missing, never altered); each fault is one ``ConfigError`` saying what to
run. Also what the reader asks of the catalog while it runs (a table's primary key)."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from swell.core.errors import ConfigError, MissingDependency

if TYPE_CHECKING:
    import psycopg

__all__ = ["check_publication", "check_server", "connect", "first_line", "one_trip", "pk_columns",
           "slot_gone", "slot_name", "where"]


def first_line(exc: BaseException) -> str:
    """An error's first line (its repr when it says nothing)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)


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
        if row is not None and row[0] == "p":  # (its changes are published as its partitions')
            raise ConfigError(f"pg_changes {name!r}: table {table!r} is partitioned: name its "
                              "partitions in tables= (their changes are published as theirs)")
        if row is None or row[0] != "r":
            raise ConfigError(f"pg_changes {name!r}: there is no table {table!r} in this database"
                              + ("" if row is None else f" (it is a relation of kind {row[0]!r})"))
        if row[1] == "n" or (row[1] == "d" and not row[2]):
            # in a publication, such a table's UPDATE and DELETE would fail for its own users
            raise ConfigError(
                f"pg_changes {name!r}: table {table!r} has no primary key"
                f"{' and REPLICA IDENTITY NOTHING' if row[1] == 'n' else ''}, so its updates and "
                "deletes cannot name their row: add a primary key, or "
                f"ALTER TABLE {table} REPLICA IDENTITY FULL")
    await check_publication(conn, name, tables, publication)


async def check_publication(conn: psycopg.AsyncConnection[Any], name: str,
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


def one_trip(conn: psycopg.AsyncConnection[Any]) -> AbstractAsyncContextManager[Any]:
    """Statements sent together, their results read once (libpq's pipeline mode), where the
    client library has it; else one after the other."""
    import psycopg

    return conn.pipeline() if psycopg.Pipeline.is_supported() else contextlib.nullcontext()


def slot_name(name: str) -> str:
    """``swell_<name>`` as a slot name may be (``[a-z0-9_]``, at most 63 characters)."""
    clean = "swell_" + re.sub(r"[^a-z0-9_]", "_", name.lower())
    if len(clean) > 63:
        clean = clean[:54] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return clean


def slot_gone(slot: str) -> str:
    """What to say of a slot swell read that is gone."""
    return (f"replication slot {slot!r} is gone (dropped, or the server restored), so changes "
            "made since may be lost. To start again from now on purpose, create it: SELECT "
            f"pg_create_logical_replication_slot('{slot}', 'pgoutput');")
