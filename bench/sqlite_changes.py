"""SQLite change capture: what it adds to each write the user's own code makes, in microseconds.

    python bench/sqlite_changes.py [--rows 20000] [--repeat 3]

One table ``orders (id INTEGER PRIMARY KEY, total REAL, note TEXT, at TEXT)`` in a WAL database
with ``synchronous = NORMAL`` (what a service writing SQLite would set), written by a plain
``sqlite3`` loop in this process, once without the capture (the baseline) and once with
``app.sqlite_changes``' triggers installed (``swell.triggers.sqlitechanges.install``), each on a
fresh file:

- **insert, 1 per tx**: ``--rows`` inserts, each its own transaction (a commit each);
- **insert, batched**: the same inserts, 1,000 to a transaction (the triggers' own work shows);
- **update, batched** and **delete, batched**: every row updated, then deleted (an update records
  the new and the old row).

Per operation the median over ``--repeat`` of µs per write, the baseline's and the capture's,
and the difference: what the capture costs a writer. Nothing drains the change table here (the
rows written by the triggers stay; draining is the source's work, off the writer's path).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchinfo import machine, source_state
from swell.triggers.sqlitechanges import install

BATCH = 1000


def open_db(path: Path, capture: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL, note TEXT, at TEXT)")
    if capture:
        install(conn, "bench", "swell_changes_bench", ["orders"])
    return conn


def timed(conn: sqlite3.Connection, rows: int, sql: str, args: Callable[[int], tuple[object, ...]],
          per_tx: int) -> float:
    """µs per statement, ``per_tx`` statements to a transaction."""
    t0 = time.perf_counter()
    for start in range(0, rows, per_tx):
        conn.execute("BEGIN")
        for i in range(start, min(rows, start + per_tx)):
            conn.execute(sql, args(i))
        conn.execute("COMMIT")
    return (time.perf_counter() - t0) / rows * 1e6


def run_once(rows: int, capture: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out: dict[str, float] = {}
        conn = open_db(Path(tmp) / "one.db", capture)
        out["insert, 1 per tx"] = timed(
            conn, rows, "INSERT INTO orders VALUES (?, ?, ?, ?)",
            lambda i: (i, i * 1.5, f"order {i}", "2026-12-07T10:00:00Z"), 1)
        conn.close()
        conn = open_db(Path(tmp) / "batched.db", capture)
        out["insert, batched"] = timed(
            conn, rows, "INSERT INTO orders VALUES (?, ?, ?, ?)",
            lambda i: (i, i * 1.5, f"order {i}", "2026-12-07T10:00:00Z"), BATCH)
        out["update, batched"] = timed(conn, rows, "UPDATE orders SET total = ? WHERE id = ?",
                                       lambda i: (i * 2.0, i), BATCH)
        out["delete, batched"] = timed(conn, rows, "DELETE FROM orders WHERE id = ?",
                                       lambda i: (i,), BATCH)
        if capture:
            changes = conn.execute("SELECT count(*) FROM swell_changes_bench").fetchone()[0]
            assert changes == 4 * rows - rows, changes  # (the 1-per-tx file is another one)
        conn.close()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    console = Console(width=80)
    console.print(f"machine: {machine()}")
    console.print(f"commit: {source_state()}")
    base: dict[str, list[float]] = {}
    cap: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        for capture, into in ((False, base), (True, cap)):
            for op, us in run_once(args.rows, capture).items():
                into.setdefault(op, []).append(us)
    table = Table(title=f"µs per write, {args.rows:,} rows, median of {args.repeat}")
    for col in ("operation", "plain", "captured", "added"):
        table.add_column(col, justify="left" if col == "operation" else "right")
    for op in base:
        b, c = statistics.median(base[op]), statistics.median(cap[op])
        table.add_row(op, f"{b:.1f}", f"{c:.1f}", f"+{c - b:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
