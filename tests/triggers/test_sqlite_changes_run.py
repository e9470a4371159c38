"""SQLite change capture on a real ``swell run``, the writes made by another process: each
committed change arrives (rolled-back ones never), in commit order per key; changes written while
swell is down arrive after it starts; a SIGKILL mid-stream loses nothing and repeats at most
what was stored and not yet confirmed (one batch)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from support.swellprocs import NO_ENV, Swell, wait_for

pytestmark = pytest.mark.slow

APP = '''
from swell import App

app = App("shop")
cdc = app.stream("orders-cdc", partitions=4)
app.sqlite_changes("orders", path="shop.db", tables=["orders"], to=cdc, batch=200)


@app.function(app.queue("noop"))
async def noop(data: dict) -> None:
    pass
'''

# one upsert per transaction on 20 keys, each value the transaction's number, so a key's values
# must rise in the stream; every 7th transaction is rolled back, every 50th deletes its key
WRITER = '''
import sqlite3, sys, time
start, end = int(sys.argv[1]), int(sys.argv[2])
conn = sqlite3.connect("shop.db", isolation_level=None, timeout=10)
conn.execute("PRAGMA synchronous = NORMAL")
for i in range(start, end):
    conn.execute("BEGIN IMMEDIATE")
    if i % 50 == 49:
        conn.execute("DELETE FROM orders WHERE id = ?", (i % 20,))
    else:
        conn.execute("INSERT INTO orders (id, total) VALUES (?, ?) "
                     "ON CONFLICT (id) DO UPDATE SET total = excluded.total", (i % 20, i))
    conn.execute("ROLLBACK" if i % 7 == 6 else "COMMIT")
    if i % 100 == 0:
        time.sleep(0.01)
'''


def committed(n: int) -> int:
    return sum(1 for i in range(n) if i % 7 != 6)


def write(tmp_path: Path, start: int, end: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(start), str(end)], cwd=tmp_path)


def test_changes_by_another_process_arrive_once_in_order_across_a_sigkill(tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text(APP)
    with sqlite3.connect(tmp_path / "shop.db") as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
    swell = Swell(tmp_path)
    try:
        first = swell.start(NO_ENV, app=tmp_path / "shop.py", grace="5s")
        swell.wait_ready(first)
        writer = write(tmp_path, 0, 3000)
        wait_for(lambda: len(swell.stream_events("orders-cdc")) >= 300, 20, "the first changes")
        first.kill()  # mid-stream
        first.wait()
        assert writer.wait(60) == 0
        assert write(tmp_path, 3000, 3500).wait(60) == 0  # while no node runs
        second = swell.start(NO_ENV, app=tmp_path / "shop.py", grace="5s")
        swell.wait_ready(second)
        total = committed(3500)
        events = wait_for(lambda: (e := swell.stream_events("orders-cdc")) and
                          len({x.id for x in e}) >= total and e, 30, f"{total} changes")
        time.sleep(0.5)  # time for a wrong extra copy to show
        events = swell.stream_events("orders-cdc")
        copies = Counter(e.id for e in events)
        assert len(copies) == total  # each committed change, none rolled back
        repeated = sum(copies.values()) - total
        assert repeated <= 200, repeated  # at most the batch stored and not yet confirmed
        first_seen: dict[str, int] = {}
        for e in events:
            first_seen.setdefault(e.id, len(first_seen))
        by_key: dict[str, list[int]] = {}
        for e in sorted({e.id: e for e in events}.values(), key=lambda e: first_seen[e.id]):
            assert isinstance(e.data, dict)
            row = e.data["new"] or e.data["old"]
            by_key.setdefault(str(e.key), []).append(int(e.extensions["sqliteseq"]))
            assert str(row["id"]) == e.key
        for key, seqs in by_key.items():
            assert seqs == sorted(seqs), key  # commit order per key
        # every committed delete is there (counted once each: a delete may be one of the copies
        # a SIGKILL repeats, which the check above bounds)
        deletes = sum(1 for i in range(3500) if i % 50 == 49 and i % 7 != 6)
        assert len({e.id for e in events if e.type == "sqlite.delete"}) == deletes
        assert swell.terminate(second) == 0
        with sqlite3.connect(tmp_path / "shop.db") as conn:  # trimmed as it was drained
            assert conn.execute('SELECT count(*) FROM "swell_changes_orders"').fetchone()[0] == 0
    finally:
        swell.cleanup()


def test_a_table_without_a_primary_key_stops_swell_run_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text(APP)
    with sqlite3.connect(tmp_path / "shop.db") as conn:
        conn.execute("CREATE TABLE orders (id INTEGER, total INTEGER)")
    swell = Swell(tmp_path)
    try:
        out = swell.refused(tmp_path / "shop.py")
        assert "table 'orders' has no primary key" in out, out
    finally:
        swell.cleanup()
