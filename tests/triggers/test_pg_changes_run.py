"""PostgreSQL change capture on real ``swell run`` processes (a SQLite broker, a server of the tests'
own): changes made while it runs and while it is stopped each arrive once, in commit order per key,
a rolled-back transaction gives nothing; a SIGKILL while a writer commits loses nothing and repeats
only changes of the batch written ahead when it died."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from support.postgres import (
    PgServer,
)
from support.swellprocs import Swell, wait_for
from swell import open_broker
from swell.core import keys
from swell.core.event import Event
from swell.triggers.pgoutput import format_lsn, transactions

pytestmark = pytest.mark.slow

STREAM = "orders-cdc"
PARTITIONS = 4
_names = itertools.count()

APP = '''
import os

import swell.triggers.pgchanges as pgchanges
from swell import App

pgchanges.LEASE_TTL_S = 2.0  # a killed node's lease lapses soon: the test starts another

app = App("shop")
cdc = app.stream("orders-cdc", partitions=4)
app.pg_changes("cdc", dsn=os.environ["SWELL_TEST_PG_DSN"], tables=[os.environ["SWELL_TEST_PG_TABLE"]],
               to=cdc, slot=os.environ["SWELL_TEST_PG_SLOT"], publication=os.environ["SWELL_TEST_PG_SLOT"],
               batch=60, poll="20ms")


@app.function(app.queue("noop"))
async def noop(data: dict) -> None:
    pass
'''


@dataclass(frozen=True)
class PgEnv:
    dsn: str
    table: str
    slot: str

    def env(self, sink: Path) -> dict[str, str]:
        return {"SWELL_TEST_PG_DSN": self.dsn, "SWELL_TEST_PG_TABLE": self.table,
                "SWELL_TEST_PG_SLOT": self.slot}


def setup(postgres: PgServer, tmp_path: Path) -> tuple[Swell, PgEnv, Path]:
    n = next(_names)
    table = f"public.run_orders_{n}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
    app = tmp_path / "shop.py"
    app.write_text(APP)
    return Swell(tmp_path), PgEnv(postgres.dsn, table, f"run_{n}"), app


def stream(url: str) -> list[Event[Any]]:
    """The stream's events, partition by partition, in offset order."""
    async def go() -> list[Event[Any]]:
        broker = open_broker(url)
        try:
            out: list[Event[Any]] = []
            for p in range(PARTITIONS):
                out += [Event.from_json(r.body) for r in await broker.read(STREAM, p, 0, 100_000)]
            return out
        finally:
            await broker.close()

    return asyncio.run(go())


def written_ahead(url: str, slot: str) -> set[str]:
    """The event ids of the changes in the source's write-ahead buffer (pgoutput messages)."""
    async def go() -> bytes:
        broker = open_broker(url)
        try:
            entry = await broker.kv.get(keys.source_state("shop", "cdc", "ahead"))
            return b"" if entry is None else entry.value
        finally:
            await broker.close()

    raw = asyncio.run(go())
    ids: set[str] = set()
    for tx in transactions(msgspec.msgpack.decode(raw)["rows"] if raw else [], {}):
        ids |= {f"{slot}:{format_lsn(tx.begin.final_lsn)}:{n}" for n in range(len(tx.changes))}
    return ids


def slot_confirmed(postgres: PgServer, slot: str) -> str | None:
    with psycopg.connect(postgres.dsn) as conn:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                           "WHERE slot_name = %s", (slot,)).fetchone()
    return None if row is None else str(row[0])


class Writer:
    """Transactions of one to three changes (insert, update, delete), each recorded as
    ``(id, op)`` once committed; some rolled back (never recorded)."""

    def __init__(self, dsn: str, table: str) -> None:
        self.dsn, self.table = dsn, table
        self.done: list[tuple[int, str]] = []
        self.rolled_back: set[int] = set()
        self._next = 0

    def write(self, transactions: int) -> None:
        with psycopg.connect(self.dsn) as conn:
            for t in range(transactions):
                ops: list[tuple[int, str]] = []
                for _ in range(1 + t % 3):
                    i = self._next
                    self._next += 1
                    conn.execute(f"INSERT INTO {self.table} VALUES (%s, 0)", (i,))
                    ops.append((i, "insert"))
                    if i % 4 == 1:
                        conn.execute(f"UPDATE {self.table} SET v = 1 WHERE id = %s", (i,))
                        ops.append((i, "update"))
                    if i % 8 == 3:
                        conn.execute(f"DELETE FROM {self.table} WHERE id = %s", (i,))
                        ops.append((i, "delete"))
                if t % 10 == 9:
                    conn.rollback()
                    self.rolled_back.update(i for i, _ in ops)
                else:
                    conn.commit()
                    self.done += ops


def check_order(events: list[Event[Any]], writer: Writer) -> None:
    """Each committed change is there; per key, first copies in the order they were committed;
    nothing of a rolled-back transaction."""
    seen: dict[str, None] = {}
    for e in events:  # offset order within a partition: a key's first copies in order
        seen.setdefault(e.id, None)
    first = {e.id: e for e in events}
    per_key: dict[int, list[str]] = {}
    for event_id in seen:
        e = first[event_id]
        assert isinstance(e.data, dict)
        per_key.setdefault(int(e.key or -1), []).append(e.data["op"])
    expected: dict[int, list[str]] = {}
    for i, op in writer.done:
        expected.setdefault(i, []).append(op)
    assert per_key == expected
    assert not writer.rolled_back & set(per_key)


def test_changes_while_running_and_while_stopped_arrive_once_in_commit_order(
        postgres: PgServer, tmp_path: Path) -> None:
    swell, env, app = setup(postgres, tmp_path)
    writer = Writer(env.dsn, env.table)
    try:
        first = swell.start(env, app=app, grace="5s")
        swell.wait_ready(first)
        wait_for(lambda: slot_confirmed(postgres, env.slot), 20, "the slot")
        writer.write(30)
        wait_for(lambda: len(stream(swell.url)) >= len(writer.done), 20, "the changes")
        assert swell.terminate(first) == 0
        writer.write(30)  # while no node runs: they wait in the slot
        second = swell.start(env, app=app, grace="5s")
        swell.wait_ready(second)
        wait_for(lambda: len(stream(swell.url)) >= len(writer.done), 20, "the later changes")
        events = stream(swell.url)
        assert len(events) == len({e.id for e in events}) == len(writer.done)
        check_order(events, writer)
        assert swell.terminate(second) == 0
    finally:
        swell.cleanup()


def test_sigkill_mid_stream_loses_nothing_and_repeats_only_the_batch_written_ahead(
        postgres: PgServer, tmp_path: Path) -> None:
    swell, env, app = setup(postgres, tmp_path)
    writer = Writer(env.dsn, env.table)
    try:
        first = swell.start(env, app=app, grace="5s")
        swell.wait_ready(first)
        wait_for(lambda: slot_confirmed(postgres, env.slot), 20, "the slot")
        busy = threading.Thread(target=writer.write, args=(600,))
        busy.start()
        wait_for(lambda: len(stream(swell.url)) >= 300, 20, "some changes stored")
        first.kill()  # SIGKILL while the writer commits and swell reads
        first.wait()
        before = {e.id for e in stream(swell.url)}
        ahead = written_ahead(swell.url, env.slot)
        busy.join()
        second = swell.start(env, app=app, grace="5s")
        swell.wait_ready(second)
        wait_for(lambda: len({e.id for e in stream(swell.url)}) >= len(writer.done), 30,
                 "every change")
        events = stream(swell.url)
        counts = Counter(e.id for e in events)
        repeated = [e for e in events if counts[e.id] > 1]
        assert len(counts) == len(writer.done)  # nothing lost, nothing extra
        check_order(events, writer)
        # a repeat is a change stored before the kill of the batch written ahead then (its
        # events stored, or some of them, and not yet the kv position past them)
        assert all(e.id in before and e.id in ahead for e in repeated)
        assert len(before) < len(writer.done)  # it died mid-stream
        print(f"{len(writer.done)} changes, {len(before)} stored before the kill, "
              f"{len(events) - len(counts)} repeated, {len(ahead)} written ahead")
        assert swell.terminate(second) == 0
    finally:
        swell.cleanup()
