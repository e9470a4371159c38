"""The PostgreSQL change source in-process, against a real server the tests start (support/postgres.py)
and a SQLite broker: row changes arrive once each, in commit order, typed and keyed; a rolled-back
transaction gives nothing; a crash between storing and confirming repeats nothing the kv position
names; a crash after a batch is written ahead and the slot advanced past it, before its events are
stored, loses nothing and repeats only that batch; the next peek runs while a batch is stored; a
buffer another node wrote is not overwritten unread; a batch too large for the buffer is stored
before the slot advances; one node of two reads; a lost connection is reconnected; a dropped slot
is said, not recreated; and a server or table that cannot work is one clear error before the app
runs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from support.eventually import until
from support.postgres import (
    PgServer,
    server_or_skip,
)
from swell.brokers.base import KV, QueueSpec, StreamSpec
from swell.brokers.producer import Producer
from swell.brokers.sqlite import SqliteBroker
from swell.core import keys
from swell.core.clock import SYSTEM_CLOCK
from swell.core.errors import AppError, BrokerError, ConfigError
from swell.core.event import Event
from swell.triggers import pgchanges
from swell.triggers.base import Emitter, SourceEnv
from swell.triggers.pgchanges import PgChangesSource
from swell.triggers.pgoutput import format_lsn, parse_lsn, transactions

APP = "shop"
STREAM = "cdc"
PARTITIONS = 4
_names = itertools.count()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[SqliteBroker]:
    b = SqliteBroker(str(tmp_path / "b.db"))
    await b.declare_stream(StreamSpec(name=STREAM, partitions=PARTITIONS))
    await b.declare_queue(QueueSpec(name="cdc-src.dlq", max_receives=0, is_dead_letter=True))
    yield b
    await b.close()


@pytest.fixture
def table(postgres: PgServer) -> Iterator[str]:
    """A fresh ``public.orders_<n>`` with a primary key and a few typed columns."""
    name = f"orders_{next(_names)}"
    sql(postgres, f"CREATE TABLE {name} (id int PRIMARY KEY, amount numeric, note text, "
                  "tags jsonb, paid bool, rate float8)")
    yield f"public.{name}"


def sql(server: PgServer, *statements: str) -> None:
    """Each statement in its own transaction (autocommit)."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def source(server: PgServer, table: str, **options: Any) -> PgChangesSource:
    options.setdefault("poll", "20ms")
    suffix = table.rsplit("_", 1)[-1]
    return PgChangesSource("cdc-src", dsn=server.dsn, tables=[table], to=STREAM,
                           slot=options.pop("slot", f"t_{suffix}"),
                           publication=options.pop("publication", f"p_{suffix}"),
                           dead_letter="cdc-src.dlq", **options)


@contextlib.asynccontextmanager
async def running(src: PgChangesSource, broker: SqliteBroker, kv: KV | None = None,
                  node: str = "node-1", wait: bool = True,
                  emitter: Callable[..., Emitter] = Emitter) -> AsyncIterator[PgChangesSource]:
    """``src`` prepared and running, as the runtime runs it (``emitter``: the Emitter class, or
    a fake of one); cancelled on the way out."""
    kv = kv if kv is not None else broker.kv
    made = emitter(Producer(broker, source=f"swell/{APP}"), kv, src.target, src.stats,
                   source=f"/swell/{APP}/pg_changes/{src.name}", dead_letter=src.dead_letter)
    env = SourceEnv(app=APP, node=node, emitter=made, kv=kv, clock=SYSTEM_CLOCK)
    await src.prepare()
    task = asyncio.create_task(src.run(env))
    try:
        if wait:  # the slot is there (a change made before it is not captured), or another has it
            await until(lambda: src.lag_bytes is not None or src.standby
                        or src.stats.last_error is not None, "the source to start")
        yield src
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


async def stream(broker: SqliteBroker) -> list[Event[Any]]:
    """Every event on the stream, partition by partition, in offset order."""
    out: list[Event[Any]] = []
    for p in range(PARTITIONS):
        out += [Event.from_json(r.body) for r in await broker.read(STREAM, p, 0, 100_000)]
    return out


async def settled(broker: SqliteBroker, n: int, quiet_s: float = 0.3) -> list[Event[Any]]:
    async def enough() -> bool:
        return len(await stream(broker)) >= n

    await until(enough, f"{n} events")
    await asyncio.sleep(quiet_s)  # time for a wrong extra one to show
    return await stream(broker)


def data(event: Event[Any]) -> dict[str, Any]:
    assert isinstance(event.data, dict)
    return event.data


def lsn(event: Event[Any]) -> tuple[int, int]:
    high, low = str(event.extensions["pglsn"]).split("/")
    return int(high, 16), int(low, 16)


async def test_row_changes_arrive_once_each_typed_keyed_in_commit_order(
        postgres: PgServer, table: str, broker: SqliteBroker) -> None:
    with psycopg.connect(postgres.dsn) as conn:  # several transactions, one rolled back
        async with running(source(postgres, table), broker) as src:
            conn.execute(f"INSERT INTO {table} VALUES (1, 12.50, 'a', '{{\"x\": [1, 2]}}', true, 1.5), "
                         "(2, 0.10, NULL, NULL, false, 2)")
            conn.commit()
            conn.execute(f"UPDATE {table} SET note = 'b' WHERE id = 1")
            conn.execute(f"INSERT INTO {table} (id) VALUES (3)")
            conn.commit()
            conn.execute(f"INSERT INTO {table} (id) VALUES (99)")
            conn.rollback()
            conn.execute(f"UPDATE {table} SET id = 4 WHERE id = 2")
            conn.commit()
            conn.execute(f"DELETE FROM {table} WHERE id = 1")
            conn.commit()
            events = await settled(broker, 6)
            assert src.stats.pending == 0 and src.stats.lag_s == 0.0
            await until(lambda: src.detail()["lag_bytes"] == 0, "lag_bytes 0")
    ordered = sorted(events, key=lambda e: (lsn(e), e.id))
    assert [(data(e)["op"], e.key) for e in ordered] == [
        ("insert", "1"), ("insert", "2"), ("update", "1"), ("insert", "3"), ("update", "4"),
        ("delete", "1")]
    assert len({e.id for e in events}) == 6 and "99" not in {e.key for e in events}
    first, _, upd, _, moved, deleted = (data(e) for e in ordered)
    assert first == {"op": "insert", "table": table, "key": {"id": 1}, "old": None,
                     "new": {"id": 1, "amount": "12.50", "note": "a", "tags": {"x": [1, 2]},
                             "paid": True, "rate": 1.5}}
    assert upd["old"] is None and upd["new"]["note"] == "b"
    assert moved["key"] == {"id": 4} and moved["old"] == {"id": 2}  # the old key
    assert deleted == {"op": "delete", "table": table, "key": {"id": 1}, "new": None,
                       "old": {"id": 1}}
    e = ordered[0]
    assert e.type == "pg.insert" and e.subject == table and isinstance(e.extensions["pgxid"], int)
    assert e.id.startswith(f"t_{table.rsplit('_', 1)[-1]}:{e.extensions['pglsn']}:")
    # per key, on one partition, in commit order
    for key in {ev.key for ev in events}:
        mine = [ev for ev in events if ev.key == key]
        assert mine == sorted(mine, key=lsn)


async def test_changes_made_while_stopped_arrive_after_start_and_nothing_twice(
        postgres: PgServer, table: str, broker: SqliteBroker) -> None:
    async with running(source(postgres, table), broker):
        sql(postgres, f"INSERT INTO {table} (id) VALUES (1)")
        await settled(broker, 1, quiet_s=0)
    sql(postgres, *(f"INSERT INTO {table} (id) VALUES ({i})" for i in range(2, 12)))
    async with running(source(postgres, table), broker) as again:
        events = await settled(broker, 11)
        assert again.stats.received == 10
    assert sorted(int(e.key or 0) for e in events) == list(range(1, 12))


async def test_a_crash_after_storing_and_before_confirming_repeats_nothing(
        postgres: PgServer, table: str, broker: SqliteBroker) -> None:
    src = source(postgres, table)
    async with running(src, broker):  # creates the slot
        await until(lambda: src.detail()["lag_bytes"] == 0, "the slot")
    sql(postgres, f"INSERT INTO {table} (id) VALUES (1)", f"INSERT INTO {table} (id) VALUES (2)")
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        peeked = conn.execute(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
            "'proto_version', '1', 'publication_names', %s)", (src.slot, src.publication)).fetchall()
    # a Commit message's row is at its transaction's end LSN
    first_end = next(row[0] for row in peeked if bytes(row[1])[:1] == b"C")
    # as if swell stored the first transaction and died before advancing the slot
    mark = {"slot": src.slot, "system": await system_id(postgres), "lsn": first_end}
    await broker.kv.put(keys.source_state(APP, "cdc-src", "position"), msgspec.json.encode(mark))
    async with running(source(postgres, table), broker) as again:
        events = await settled(broker, 1)
        assert again.stats.received == 1
    assert [e.key for e in events] == ["2"]


class Dying(Emitter):
    """An Emitter that stores its first batch, one event of its second, then nothing: as a
    broker gone mid-append, or a process killed then (what the emitter held is gone)."""

    calls = 0

    async def emit(self, events: Sequence[Event[Any]], *, dedup: bool = True) -> list[bool]:
        self.calls += 1
        if self.calls == 1:
            return await super().emit(events, dedup=dedup)
        if self.calls == 2:
            await super().emit(events[:1], dedup=dedup)
        raise BrokerError("the broker is gone")


class Gated(Emitter):
    """An Emitter whose stores wait until ``gate`` opens (``waiting``: one is held)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate, self.waiting = asyncio.Event(), False

    async def emit(self, events: Sequence[Event[Any]], *, dedup: bool = True) -> list[bool]:
        self.waiting = True
        await self.gate.wait()
        return await super().emit(events, dedup=dedup)


def commit_ends(server: PgServer, src: PgChangesSource) -> list[str]:
    """Each transaction's end LSN the slot holds, in commit order (no source reads it now)."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
            "'proto_version', '1', 'publication_names', %s)", (src.slot, src.publication)).fetchall()
    return [format_lsn(t.commit.end_lsn) for t in transactions([bytes(r[0]) for r in rows], {})]


def confirmed(server: PgServer, src: PgChangesSource) -> str:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                           "WHERE slot_name = %s", (src.slot,)).fetchone()
    return str(row[0]) if row else ""


def written_ahead(raw: bytes, slot: str) -> set[str]:
    """The event ids of the changes in a write-ahead buffer (its ``rows``: pgoutput messages)."""
    ids: set[str] = set()
    for tx in transactions(msgspec.msgpack.decode(raw)["rows"], {}):
        ids |= {f"{slot}:{format_lsn(tx.begin.final_lsn)}:{n}" for n in range(len(tx.changes))}
    return ids


async def twelve_waiting(postgres: PgServer, table: str, broker: SqliteBroker) -> list[str]:
    """The slot made, then 12 one-row transactions in it, none read; their end LSNs."""
    src = source(postgres, table)
    async with running(src, broker):
        await until(lambda: src.detail()["lag_bytes"] == 0, "the slot")
    sql(postgres, *(f"INSERT INTO {table} (id) VALUES ({i})" for i in range(1, 13)))
    return commit_ends(postgres, src)


async def test_a_crash_after_writing_ahead_and_advancing_loses_nothing_and_repeats_that_batch_only(
        postgres: PgServer, table: str, broker: SqliteBroker) -> None:
    ends = await twelve_waiting(postgres, table, broker)
    # batches of 10 messages: a Relation and 3 transactions (Begin, Insert, Commit) each
    dying = source(postgres, table, batch=10)
    async with running(dying, broker, emitter=Dying):
        await until(lambda: dying.stats.errors >= 2, "the broker gone, and tried again")
        await asyncio.sleep(0.2)  # (while its store fails, it neither peeks nor advances)
        assert dying.stats.pending == 3  # the batch read and not stored
        stored = {int(e.key or 0) for e in await stream(broker)}
    # the first batch stored, one change of the second, and the slot advanced past the second:
    # two of its changes are in the buffer only
    assert stored == {1, 2, 3, 4} and confirmed(postgres, dying) == ends[5]
    ahead = await broker.kv.get(keys.source_state(APP, "cdc-src", "ahead"))
    assert ahead is not None
    batch = written_ahead(ahead.value, dying.slot)
    assert len(batch) == 3
    async with running(source(postgres, table), broker) as again:  # as if restarted
        events = await settled(broker, 13)
        assert again.stats.received == 3 + 6
    counts = Counter(e.id for e in events)
    assert sorted(int(e.key or 0) for e in {e.id: e for e in events}.values()) == list(range(1, 13))
    repeated = {i for i, n in counts.items() if n > 1}
    assert len(repeated) == 1 and repeated <= batch  # repeats only of the batch written ahead
    for key in {e.key for e in events}:  # per key, commit order
        mine = [e for e in events if e.key == key]
        assert mine == sorted(mine, key=lsn)


async def test_the_next_peek_runs_while_a_batch_is_stored(
        postgres: PgServer, table: str, broker: SqliteBroker) -> None:
    ends = await twelve_waiting(postgres, table, broker)
    made: list[Gated] = []

    def gated(*args: Any, **kwargs: Any) -> Emitter:
        made.append(Gated(*args, **kwargs))
        return made[-1]

    async with running(source(postgres, table, batch=10), broker, emitter=gated) as src:

        def peeked_after_advancing() -> bool:  # the connection's last statement is a peek, and
            with psycopg.connect(postgres.dsn, autocommit=True) as conn:  # came after the advance
                row = conn.execute("SELECT state, query FROM pg_stat_activity "
                                   "WHERE application_name = 'swell cdc-src'").fetchone()
            return confirmed(postgres, src) == ends[2] and row is not None and row[0] == "idle" \
                and "pg_logical_slot_peek_binary_changes" in str(row[1])

        await until(lambda: made and made[0].waiting, "the first batch being stored")
        await until(peeked_after_advancing, "the second peek, the first batch not stored")
        await asyncio.sleep(0.1)
        # one batch outstanding: the second is not written ahead, the slot waits
        assert await stream(broker) == [] and src.stats.pending == 3
        assert confirmed(postgres, src) == ends[2]
        made[0].gate.set()
        events = await settled(broker, 12)
        await until(lambda: parse_lsn(confirmed(postgres, src)) >= parse_lsn(ends[-1]),
                    "the slot advanced")
    assert sorted(int(e.key or 0) for e in events) == list(range(1, 13))


async def test_a_buffer_another_node_wrote_is_not_overwritten_unread(
        postgres: PgServer, table: str, broker: SqliteBroker, caplog: pytest.LogCaptureFixture) -> None:
    async with running(source(postgres, table), broker) as src:
        sql(postgres, f"INSERT INTO {table} (id) VALUES (1)")
        await settled(broker, 1, quiet_s=0)
        # as a node that took the lease meanwhile would (this one not knowing it lost it)
        await broker.kv.put(keys.source_state(APP, "cdc-src", "ahead"), b"another node's")
        sql(postgres, f"INSERT INTO {table} (id) VALUES (2)")
        events = await settled(broker, 2)
        assert src.stats.errors >= 1 and src.stats.last_error is None
    assert "another node wrote the slot's write-ahead buffer" in caplog.text
    assert sorted(int(e.key or 0) for e in events) == [1, 2]


async def test_a_batch_too_large_to_write_ahead_is_stored_before_the_slot_advances(
        postgres: PgServer, table: str, broker: SqliteBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgchanges, "AHEAD_MAX_BYTES", 0)
    async with running(source(postgres, table), broker):
        sql(postgres, *(f"INSERT INTO {table} (id) VALUES ({i})" for i in range(1, 6)))
        events = await settled(broker, 5)
    assert sorted(int(e.key or 0) for e in events) == list(range(1, 6))
    assert await broker.kv.get(keys.source_state(APP, "cdc-src", "ahead")) is None


async def system_id(server: PgServer) -> str:
    with psycopg.connect(server.dsn) as conn:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    assert row is not None
    return str(row[0])


async def test_full_replica_identity_without_a_key_and_truncate_goes_to_the_dlq(
        postgres: PgServer, broker: SqliteBroker) -> None:
    name = f"public.nokey_{next(_names)}"
    sql(postgres, f"CREATE TABLE {name} (a int, b text)",
        f"ALTER TABLE {name} REPLICA IDENTITY FULL")
    async with running(source(postgres, name), broker) as src:
        sql(postgres, f"INSERT INTO {name} VALUES (1, 'x')",
            f"UPDATE {name} SET b = 'y' WHERE a = 1", f"TRUNCATE {name}")
        events = await settled(broker, 2)
        await until(lambda: src.stats.rejected.get("truncate") == 1, "the truncate dead letter")
    update = next(data(e) for e in events if data(e)["op"] == "update")
    assert update["old"] == {"a": 1, "b": "x"} and update["new"] == {"a": 1, "b": "y"}
    (dead,) = await broker.peek("cdc-src.dlq", 10)
    assert data(Event.from_json(dead.body))["op"] == "truncate"
    assert "TRUNCATE of " + name in str(dead.headers)


async def test_a_row_too_large_for_the_stream_is_a_dead_letter_and_the_rest_flows(
        postgres: PgServer, table: str, broker: SqliteBroker) -> None:
    async with running(source(postgres, table), broker) as src:
        with psycopg.connect(postgres.dsn) as conn:  # one transaction: small, huge, small
            conn.execute(f"INSERT INTO {table} (id) VALUES (1)")
            conn.execute(f"INSERT INTO {table} (id, note) VALUES (2, repeat('x', 300000))")
            conn.execute(f"INSERT INTO {table} (id) VALUES (3)")
        events = await settled(broker, 2)
        await until(lambda: src.stats.rejected.get("too_large") == 1, "the dead letter")
    assert sorted(e.key or "" for e in events) == ["1", "3"]
    (dead,) = await broker.peek("cdc-src.dlq", 10)
    assert data(Event.from_json(dead.body)) == {"op": "insert", "table": table, "key": {"id": 2}}
    assert "over the" in str(dead.headers)


async def test_an_unchanged_toasted_value_is_left_out_and_named(
        postgres: PgServer, table: str, broker: SqliteBroker) -> None:
    big = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 300) i)"
    async with running(source(postgres, table), broker):
        sql(postgres, f"INSERT INTO {table} (id, note) VALUES (1, {big})",
            f"UPDATE {table} SET paid = true WHERE id = 1")
        events = await settled(broker, 2)
    update = next(data(e) for e in events if data(e)["op"] == "update")
    assert "note" not in update["new"] and update["unchanged"] == ["note"]
    insert = next(data(e) for e in events if data(e)["op"] == "insert")
    assert len(insert["new"]["note"]) == 300 * 32


async def test_one_node_of_two_reads_the_slot(
        postgres: PgServer, table: str, broker: SqliteBroker) -> None:
    async with running(source(postgres, table), broker, node="a") as a, \
            running(source(postgres, table), broker, node="b") as b:
        sql(postgres, *(f"INSERT INTO {table} (id) VALUES ({i})" for i in range(20)))
        events = await settled(broker, 20)
        assert sorted([a.detail()["standby"], b.detail()["standby"]]) == [False, True]
        assert a.stats.received + b.stats.received == 20
    assert len(events) == 20


async def test_a_lost_connection_is_said_and_reconnected(
        postgres: PgServer, table: str, broker: SqliteBroker) -> None:
    async with running(source(postgres, table), broker) as src:
        sql(postgres, f"INSERT INTO {table} (id) VALUES (1)")
        await settled(broker, 1, quiet_s=0)
        sql(postgres, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'swell cdc-src'")
        await until(lambda: src.stats.errors > 0, "the error seen")
        sql(postgres, f"INSERT INTO {table} (id) VALUES (2)")
        events = await settled(broker, 2)
        await until(lambda: src.stats.last_error is None, "the error cleared")
    assert sorted(e.key or "" for e in events) == ["1", "2"]


async def test_a_dropped_slot_is_said_and_not_recreated(
        postgres: PgServer, table: str, broker: SqliteBroker) -> None:
    src = source(postgres, table)
    async with running(src, broker):
        await until(lambda: src.detail()["lag_bytes"] == 0, "the slot")
    sql(postgres, f"SELECT pg_drop_replication_slot('{src.slot}')")
    async with running(source(postgres, table), broker) as again:
        await until(lambda: "is gone" in (again.stats.last_error or ""), "the error")
        error = again.stats.last_error or ""
        assert f"SELECT pg_create_logical_replication_slot('{src.slot}', 'pgoutput')" in error
        sql(postgres, f"SELECT pg_create_logical_replication_slot('{src.slot}', 'pgoutput')",
            f"INSERT INTO {table} (id) VALUES (7)")  # recreated on purpose: read from now on
        events = await settled(broker, 1)
    assert [e.key for e in events] == ["7"]


# -- set-up that cannot work: one clear error before the app runs --------------------------------
@pytest.fixture(scope="module")
def replica_only() -> Iterator[PgServer]:
    """A server with ``wal_level=replica`` (about a second to start)."""
    server = server_or_skip(("wal_level=replica", "fsync=off", "listen_addresses=127.0.0.1"))
    try:
        yield server
    finally:
        server.stop()


async def test_wal_level_not_logical_is_one_clear_error(replica_only: PgServer) -> None:
    with pytest.raises(ConfigError, match=r"wal_level is 'replica'.*wal_level = logical.*"
                                          r"postgresql.conf.*restart"):
        await PgChangesSource("c", dsn=replica_only.dsn, tables=["t"], to=STREAM).prepare()


async def test_a_missing_table_or_one_without_a_key_is_one_clear_error(
        postgres: PgServer) -> None:
    with pytest.raises(ConfigError, match=r"there is no table 'public\.nope'"):
        await PgChangesSource("c", dsn=postgres.dsn, tables=["nope"], to=STREAM).prepare()
    name = f"bare_{next(_names)}"
    sql(postgres, f"CREATE TABLE {name} (a int)")
    with pytest.raises(ConfigError, match=f"no primary key.*ALTER TABLE public.{name} REPLICA "
                                          "IDENTITY FULL"):
        await PgChangesSource("c", dsn=postgres.dsn, tables=[name], to=STREAM).prepare()
    sql(postgres, f"CREATE TABLE parted_{name} (id int PRIMARY KEY) PARTITION BY RANGE (id)")
    with pytest.raises(ConfigError, match=f"'public.parted_{name}' is partitioned: name its "
                                          "partitions"):
        await PgChangesSource("c", dsn=postgres.dsn, tables=[f"parted_{name}"],
                              to=STREAM).prepare()


async def test_a_role_without_replication_or_a_foreign_publication_is_one_clear_error(
        postgres: PgServer, table: str) -> None:
    role = f"app_{next(_names)}"
    sql(postgres, f"CREATE ROLE {role} LOGIN", f"CREATE PUBLICATION other_{role} FOR TABLE {table}")
    dsn = postgres.dsn.replace("postgres@", f"{role}@")
    with pytest.raises(ConfigError, match=f"ALTER ROLE {role} REPLICATION"):
        await PgChangesSource("c", dsn=dsn, tables=[table], to=STREAM).prepare()
    other = f"public.more_{role}"
    sql(postgres, f"CREATE TABLE {other} (id int PRIMARY KEY)")
    with pytest.raises(ConfigError, match=f"exists and lacks {other}.*does not alter it"):
        await PgChangesSource("c", dsn=postgres.dsn, tables=[table, other], to=STREAM,
                              publication=f"other_{role}").prepare()


async def test_an_unreachable_server_is_one_clear_error_naming_host_and_port() -> None:
    from support.servers import free_port

    port = free_port()
    with pytest.raises(ConfigError, match=f"cannot connect to PostgreSQL at 127.0.0.1:{port}"):
        await PgChangesSource("c", dsn=f"postgresql://u:secret@127.0.0.1:{port}/db",
                              tables=["t"], to=STREAM).prepare()


@pytest.mark.parametrize(("options", "said"), [
    ({"tables": []}, "tables must be a list"),
    ({"tables": "public.t"}, "tables must be a list"),
    ({"slot": "Bad-Slot"}, "slot 'Bad-Slot'"),
    ({"dsn": ""}, "dsn must be"),
    ({"batch": 0}, "batch"),
    ({"poll": "soon"}, "poll"),
])
def test_bad_declarations_are_app_errors(options: dict[str, Any], said: str) -> None:
    args: dict[str, Any] = {"dsn": "postgresql://127.0.0.1/db", "tables": ["public.t"],
                            "to": STREAM, **options}
    with pytest.raises(AppError, match=said):
        PgChangesSource("c", **args)
