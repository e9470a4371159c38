"""SQLite change capture in one process: the triggers record inserts, updates and deletes (a
rolled-back transaction records nothing), the source turns each into one event keyed by primary
key in commit order and trims what it stored; bad settings are one clear error each."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from support.eventually import until
from swell.brokers.base import Broker, QueueSpec, StreamSpec
from swell.brokers.producer import Producer
from swell.brokers.url import open_broker
from swell.core.clock import SYSTEM_CLOCK
from swell.core.errors import AppError, ConfigError
from swell.core.event import Event
from swell.triggers.base import Emitter, SourceEnv
from swell.triggers.sqlitechanges import SqliteChangesSource

SCHEMA = """
CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL, note TEXT, raw BLOB);
CREATE TABLE lines (order_id INTEGER, n INTEGER, qty INTEGER, PRIMARY KEY (order_id, n));
CREATE TABLE loose (x TEXT);
"""


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA)
    return path


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    b = open_broker(f"sqlite:///{tmp_path / 'broker.db'}")
    await b.declare_stream(StreamSpec(name="cdc", partitions=4, max_message_bytes=4096 + 300))
    await b.declare_queue(QueueSpec(name="cdc-src.dlq", max_receives=0, is_dead_letter=True))
    try:
        yield b
    finally:
        await b.close()


def source(db: Path, tables: list[str] | None = None, **kw: Any) -> SqliteChangesSource:
    return SqliteChangesSource("cdc-src", path=db, tables=tables or ["orders", "lines"],
                               to="cdc", dead_letter="cdc-src.dlq", poll="10ms", **kw)


def env(broker: Broker, src: SqliteChangesSource, node: str = "n1") -> SourceEnv:
    emitter = Emitter(Producer(broker, source="/t"), broker.kv, "cdc", src.stats, source="/t",
                      dead_letter=src.dead_letter)
    return SourceEnv(app="shop", node=node, emitter=emitter, kv=broker.kv, clock=SYSTEM_CLOCK)


async def events(broker: Broker) -> list[Event[Any]]:
    out: list[Event[Any]] = []
    for p in range(4):
        out += [Event.from_json(r.body) for r in await broker.read("cdc", p, 0, 10_000)]
    return sorted(out, key=lambda e: e.extensions["sqliteseq"])


def write(db: Path, *statements: str) -> None:
    with sqlite3.connect(db) as conn:
        for s in statements:
            conn.execute(s)


async def test_each_change_is_one_event_keyed_by_primary_key_in_commit_order(
        db: Path, broker: Broker) -> None:
    src = source(db)
    await src.prepare()
    write(db, "INSERT INTO orders VALUES (1, 10.5, 'a', x'00ff')",
          "INSERT INTO lines VALUES (1, 1, 3)", "INSERT INTO lines VALUES (1, 2, 4)")
    write(db, "UPDATE orders SET total = 11, note = 'it''s' WHERE id = 1")
    write(db, "DELETE FROM lines WHERE order_id = 1 AND n = 2")
    conn = sqlite3.connect(db)  # a transaction rolled back records nothing
    conn.execute("BEGIN")
    conn.execute("INSERT INTO orders VALUES (2, 1, 'never', NULL)")
    conn.execute("ROLLBACK")
    conn.close()
    write(db, "INSERT INTO loose VALUES ('not captured')")
    task = asyncio.create_task(src.run(env(broker, src)))
    try:
        await until(lambda: _count(broker, 5))
        got = await events(broker)
        assert [(e.type, e.subject, e.key) for e in got] == [
            ("sqlite.insert", "orders", "1"), ("sqlite.insert", "lines", "[1,1]"),
            ("sqlite.insert", "lines", "[1,2]"), ("sqlite.update", "orders", "1"),
            ("sqlite.delete", "lines", "[1,2]")]
        assert got[0].data == {"op": "insert", "table": "orders", "key": {"id": 1}, "old": None,
                               "new": {"id": 1, "total": 10.5, "note": "a", "raw": "00FF"}}
        update, delete = got[3].data, got[4].data
        assert isinstance(update, dict) and isinstance(delete, dict)
        assert update["old"]["total"] == 10.5 and update["new"]["note"] == "it's"
        assert delete["old"] == {"order_id": 1, "n": 2, "qty": 4} and delete["new"] is None
        assert len({e.id for e in got}) == 5
        await until(lambda: _trimmed(db, src))  # stored, then deleted from the change table
        assert src.stats.emitted == 5 and src.stats.pending == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_restart_reinstalls_and_goes_on_from_what_was_stored(db: Path,
                                                                      broker: Broker) -> None:
    first = source(db)
    await first.prepare()
    write(db, *(f"INSERT INTO orders (id, total) VALUES ({i}, {i})" for i in range(50)))
    task = asyncio.create_task(first.run(env(broker, first)))
    await until(lambda: _count(broker, 50))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    write(db, *(f"UPDATE orders SET total = -total WHERE id = {i}" for i in range(50)))
    second = source(db)
    await second.prepare()  # the triggers are replaced, the pending rows kept
    task = asyncio.create_task(second.run(env(broker, second)))
    try:
        await until(lambda: _count(broker, 100))
        await asyncio.sleep(0.1)
        got = await events(broker)
        assert len(got) == 100 and len({e.id for e in got}) == 100
        assert [e.type for e in got[50:]] == ["sqlite.update"] * 50
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_one_node_drains_a_change_table_at_a_time(db: Path, broker: Broker) -> None:
    a, b = source(db), source(db)
    await a.prepare()
    await b.prepare()
    tasks = [asyncio.create_task(a.run(env(broker, a, "n1"))),
             asyncio.create_task(b.run(env(broker, b, "n2")))]
    try:
        for k in range(5):
            write(db, *(f"INSERT INTO orders (id) VALUES ({k * 100 + i})" for i in range(100)))
            await asyncio.sleep(0.02)
        await until(lambda: _count(broker, 500))
        await asyncio.sleep(0.2)
        assert len(await events(broker)) == 500
        assert sorted([a.stats.emitted, b.stats.emitted]) == [0, 500]
        reader = 0 if a.stats.emitted else 1
        tasks[reader].cancel()  # a graceful stop gives the lease up: the other takes over
        await asyncio.gather(tasks[reader], return_exceptions=True)
        write(db, *(f"INSERT INTO orders (id) VALUES ({1000 + i})" for i in range(100)))
        await until(lambda: _count(broker, 600))
        await asyncio.sleep(0.2)
        got = await events(broker)
        assert len(got) == len({e.id for e in got}) == 600
        assert (a, b)[1 - reader].stats.emitted == 100
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_row_too_large_for_the_stream_is_dead_lettered_with_its_key(
        db: Path, broker: Broker) -> None:
    src = source(db)
    await src.prepare()
    write(db, "INSERT INTO orders (id, note) VALUES (1, 'small')",
          f"INSERT INTO orders (id, note) VALUES (2, '{'x' * 8000}')",
          "INSERT INTO orders (id, note) VALUES (3, 'small')")
    task = asyncio.create_task(src.run(env(broker, src)))
    try:
        await until(lambda: _count(broker, 2))
        dead = await broker.receive("cdc-src.dlq", 10, wait_s=2.0)
        assert len(dead) == 1
        assert dead[0].headers["swell-dlq-reason"] == "too_large"
        assert Event.from_json(dead[0].body).key == "2"
        assert src.stats.rejected == {"too_large": 1}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(("tables", "message"), [
    (["loose"], "table 'loose' has no primary key"),
    (["nope"], "no table 'nope'"),
])
async def test_bad_tables_are_one_clear_error(db: Path, tables: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        await source(db, tables).prepare()


async def test_a_missing_database_and_bad_settings_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no database at"):
        await source(tmp_path / "absent.db").prepare()
    with pytest.raises(AppError, match="tables= takes a list"):
        SqliteChangesSource("s", path="x.db", tables="orders", to="cdc")
    with pytest.raises(AppError, match="poll"):
        SqliteChangesSource("s", path="x.db", tables=["orders"], to="cdc", poll="soon")


async def _count(broker: Broker, n: int) -> bool:
    return sum(await broker.end_offsets("cdc")) >= n


async def _trimmed(db: Path, src: SqliteChangesSource) -> bool:
    with sqlite3.connect(db) as conn:
        left: int = conn.execute(f'SELECT count(*) FROM "{src.change_table}"').fetchone()[0]
    return left == 0


async def test_a_failed_delete_of_stored_rows_does_not_store_them_again(
        db: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source(db)
    await src.prepare()
    fails = [sqlite3.OperationalError("database is locked")]
    trim = src._trim

    def flaky(upto: int) -> None:
        if fails:
            raise fails.pop()
        trim(upto)

    monkeypatch.setattr(src, "_trim", flaky)
    write(db, *(f"INSERT INTO orders (id) VALUES ({i})" for i in range(20)))
    task = asyncio.create_task(src.run(env(broker, src)))
    try:
        await until(lambda: _count(broker, 20))
        write(db, *(f"INSERT INTO orders (id) VALUES ({100 + i})" for i in range(5)))
        await until(lambda: _count(broker, 25))
        await until(lambda: _trimmed(db, src))  # the next batch's delete took the first's rows
        await asyncio.sleep(0.1)
        got = await events(broker)
        assert len(got) == len({e.id for e in got}) == 25 and not fails
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_two_change_sources_never_read_one_slot_or_change_table() -> None:
    from swell import App

    app = App("shop")
    s = app.stream("s")
    app.sqlite_changes("orders-cdc", path="a.db", tables=["orders"], to=s)
    app.sqlite_changes("orders-cdc-b", path="b.db", tables=["orders"], to=s)  # another file
    with pytest.raises(AppError, match="would read 'swell_changes_orders_cdc' as 'orders-cdc'"):
        app.sqlite_changes("orders_cdc", path="a.db", tables=["orders"], to=s)
    app.pg_changes("orders-pg", dsn="postgresql://db/shop", tables=["orders"], to=s)
    with pytest.raises(AppError, match="would read 'swell_orders_pg' as 'orders-pg'"):
        app.pg_changes("orders.pg", dsn="postgresql://db/shop", tables=["orders"], to=s)
