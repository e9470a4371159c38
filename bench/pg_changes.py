"""PostgreSQL change capture: changes/s from a slot into a stream on the embedded default (SQLite),
beside a bare loop reading the same kind of slot the same way, in the same run.

    python bench/pg_changes.py [--transactions 20000] [--clients 4] [--batch 1000] [--repeat 3]

It starts a PostgreSQL of its own (``tests/support/postgres.py``: initdb on a temporary
directory, ``wal_level=logical``, fsync off, a free loopback port) and, per repeat:

1. makes two pgoutput slots and one publication on ``bench_accounts`` (100,000 rows, made
   before the slots, so not counted) and ``bench_history``;
2. runs a **pgbench-style writer first** (``pgbench -n -f`` with ``--clients`` connections):
   ``--transactions`` small transactions, each ``UPDATE bench_accounts ... WHERE aid = :aid``
   and ``INSERT INTO bench_history ...`` (2 changes). The slots are filled before the clock
   starts, so what is measured is how fast each reader drains the same changes, not how fast
   the writer writes (with both at once, both readers would just keep up with the writer);
3. times each reader draining its slot (the order alternates between repeats):

- **bare**: one psycopg ``AsyncConnection``; ``pg_logical_slot_peek_binary_changes(slot,
  flushed LSN, batch, 'proto_version', '1', 'publication_names', pub)``, counts the I/U/D
  messages, ``pg_replication_slot_advance`` to the flushed LSN; until the slot is empty.
  Nothing is parsed or stored.
- **swell**: ``PgChangesSource`` (same batch, ``poll=10ms``) running in-process as the runtime
  runs it, into ``app.stream("cdc", partitions=8)`` on a ``SqliteBroker`` file (the embedded
  default): each batch written ahead to the kv store, the slot advanced, then parsed, one event
  per change appended and the kv position written while the next peek runs; the clock starts after
  ``prepare()`` (the set-up checks ``swell run`` does before starting) and stops when the
  events on the stream reach the changes written.

Each clock runs from its reader's start (connection included) to the slot drained. Both pay the
same server cost per read, which here grows with the backlog: a slot's restart point moves only
at a running-transactions record (every 15 s, or a checkpoint), so each peek decodes again from
there (a single peek of the whole backlog takes a fraction of the time of 40 batched ones).

Target (issue 16): swell >= 0.5x the bare loop, in the median of the repeats' ratios (each
repeat's two readers drain the same writes).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

from benchinfo import machine, source_state

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent.parent / "tests"))

from support.postgres import PgServer, binaries, start_postgres  # noqa: E402
from swell.brokers.base import StreamSpec  # noqa: E402
from swell.brokers.producer import Producer  # noqa: E402
from swell.brokers.sqlite import SqliteBroker  # noqa: E402
from swell.core.clock import SYSTEM_CLOCK  # noqa: E402
from swell.triggers.base import Emitter, SourceEnv  # noqa: E402
from swell.triggers.pgchanges import PgChangesSource  # noqa: E402

console = Console(width=80)
TARGET = 0.5
ACCOUNTS = 100_000
SCRIPT = """\\set aid random(1, 100000)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE bench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
INSERT INTO bench_history (aid, delta, mtime) VALUES (:aid, :delta, CURRENT_TIMESTAMP);
END;
"""


@dataclass
class Run:
    target: str
    repeat: int
    changes: int
    seconds: float
    load1: float

    @property
    def rate(self) -> float:
        return self.changes / self.seconds


def setup(server: PgServer) -> None:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_accounts (aid int PRIMARY KEY, abalance int NOT NULL, "
                     "filler char(84))")
        conn.execute("INSERT INTO bench_accounts SELECT i, 0, '' FROM generate_series(1, %s) i",
                     (ACCOUNTS,))
        conn.execute("CREATE TABLE bench_history (hid bigserial PRIMARY KEY, aid int, delta int, "
                     "mtime timestamptz)")
        conn.execute("CREATE PUBLICATION bench FOR TABLE bench_accounts, bench_history")


def fill(server: PgServer, slots: list[str], args: argparse.Namespace, work: Path) -> int:
    """Make the slots, then run the writer; the changes written."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        for slot in slots:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    script = work / "tx.sql"
    script.write_text(SCRIPT)
    bindir, _ = binaries()
    pgbench = str(bindir / "pgbench") if bindir and (bindir / "pgbench").exists() else "pgbench"
    per_client: int = args.transactions // args.clients
    out = subprocess.run([pgbench, "-n", "-f", str(script), "-c", str(args.clients),
                          "-j", str(args.clients), "-t", str(per_client), "-h", "127.0.0.1",
                          "-p", str(server.port), "-U", "postgres", "postgres"],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    return 2 * per_client * int(args.clients)


async def bare(server: PgServer, slot: str, batch: int) -> tuple[int, float]:
    """Peek + advance until the slot is empty, counting row changes; the count and the seconds
    from connected to drained."""
    count = 0
    t0 = time.perf_counter()  # (the connection included, as swell's clock includes its own)
    async with await psycopg.AsyncConnection.connect(server.dsn, autocommit=True) as conn:
        while True:
            row = await (await conn.execute("SELECT pg_current_wal_flush_lsn()::text")).fetchone()
            assert row is not None
            cur = conn.cursor(binary=True)
            await cur.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, "
                "'proto_version', '1', 'publication_names', 'bench')", (slot, row[0], batch))
            rows = await cur.fetchall()
            count += sum(1 for (data,) in rows if data[:1] in (b"I", b"U", b"D"))
            if len(rows) < batch:  # everything before the flushed LSN was read
                await conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                                   (slot, row[0]))
                return count, time.perf_counter() - t0
            # a full batch ends with a Commit message: advance to its end LSN (bytes 10..18)
            last = rows[-1][0]
            await conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                               (slot, lsn_text(int.from_bytes(bytes(last)[10:18], "big"))))


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


async def through_swell(server: PgServer, slot: str, batch: int, expected: int,
                        db: Path) -> tuple[int, float]:
    """The source, into a stream on SQLite, until ``expected`` events are stored; the count and
    the seconds from started (after ``prepare``, as ``swell run`` does it first) to stored."""
    broker = SqliteBroker(str(db))
    try:
        await broker.declare_stream(StreamSpec(name="cdc", partitions=8))
        source = PgChangesSource("bench", dsn=server.dsn, tables=["bench_accounts", "bench_history"],
                                 to="cdc", slot=slot, publication="bench", batch=batch, poll="10ms")
        emitter = Emitter(Producer(broker, source="/bench"), broker.kv, "cdc", source.stats,
                          source="/swell/bench/pg_changes/bench")
        env = SourceEnv(app="bench", node="n1", emitter=emitter, kv=broker.kv, clock=SYSTEM_CLOCK)
        await source.prepare()
        t0 = time.perf_counter()
        task = asyncio.create_task(source.run(env))
        try:
            while source.stats.emitted < expected:
                if task.done():
                    task.result()
                await asyncio.sleep(0.001)
            seconds = time.perf_counter() - t0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return source.stats.emitted, seconds
    finally:
        await broker.close()


def one(server: PgServer, repeat: int, args: argparse.Namespace, work: Path) -> list[Run]:
    slots = [f"bench_bare_{repeat}", f"bench_swell_{repeat}"]
    expected = fill(server, slots, args, work)
    order = ["bare", "swell"] if repeat % 2 else ["swell", "bare"]
    runs = []
    for target in order:
        load1 = os.getloadavg()[0]
        if target == "bare":
            got, seconds = asyncio.run(bare(server, slots[0], args.batch))
        else:
            got, seconds = asyncio.run(through_swell(server, slots[1], args.batch, expected,
                                                     work / f"swell-{repeat}.db"))
        if got != expected:
            raise SystemExit(f"{target}: {got} changes read, {expected} written")
        runs.append(Run(target, repeat, got, seconds, load1))
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        for slot in slots:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    return runs


def pairs(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Per repeat, its bare run and its swell run (on the same slot contents)."""
    return [(next(x for x in runs if x.repeat == r and x.target == "bare"),
             next(x for x in runs if x.repeat == r and x.target == "swell"))
            for r in sorted({x.repeat for x in runs})]


def table(runs: list[Run], args: argparse.Namespace) -> Table:
    t = Table(title=f"changes/s draining a pre-filled slot; batch {args.batch}, "
                    f"{args.transactions:,} pgbench-style transactions")
    for name in ("repeat", "bare /s", "swell /s", "swell/bare", "load1 b/s"):
        t.add_column(name, justify="right")
    for b, s in pairs(runs):
        t.add_row(str(b.repeat), f"{b.rate:,.0f}", f"{s.rate:,.0f}", f"{s.rate / b.rate:.2f}x",
                  f"{b.load1:.1f}/{s.load1:.1f}")
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--transactions", type=int, default=20_000,
                   help="writer transactions per repeat, 2 changes each (default 20000)")
    p.add_argument("--clients", type=int, default=4, help="writer connections (default 4)")
    p.add_argument("--batch", type=int, default=1000, help="peek batch, both readers (default 1000)")
    p.add_argument("--repeat", type=int, default=3, help="runs of both readers (default 3)")
    args = p.parse_args()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    l0 = os.getloadavg()
    console.print(f"swell pg_changes bench {started} | {machine()} | swell at {source_state()} | "
                  f"load avg at start {l0[0]:.2f} {l0[1]:.2f} {l0[2]:.2f}", highlight=False)
    server = start_postgres()
    work = Path(tempfile.mkdtemp(prefix="swell-pgbench-"))
    try:
        with psycopg.connect(server.dsn) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        console.print(f"PostgreSQL {version[0] if version else '?'}, psycopg {psycopg.__version__}",
                      highlight=False)
        setup(server)
        runs = [run for r in range(1, args.repeat + 1) for run in one(server, r, args, work)]
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    console.print(table(runs, args))
    bare_best = max(r.rate for r in runs if r.target == "bare")
    swell_best = max(r.rate for r in runs if r.target == "swell")
    console.print(f"best: bare {bare_best:,.0f}/s, swell {swell_best:,.0f}/s = "
                  f"{swell_best / bare_best:.2f}x", highlight=False)
    ratios = [s.rate / b.rate for b, s in pairs(runs)]
    ratio = statistics.median(ratios)
    console.print(f"median: bare {statistics.median(b.rate for b, _ in pairs(runs)):,.0f}/s, "
                  f"swell {statistics.median(s.rate for _, s in pairs(runs)):,.0f}/s; median of "
                  f"the repeats' swell/bare {ratio:.2f}x (target >= {TARGET}x: "
                  f"{'met' if ratio >= TARGET else 'NOT met'})", highlight=False)
    l1 = os.getloadavg()
    console.print(f"load avg at end {l1[0]:.2f} {l1[1]:.2f} {l1[2]:.2f} (a shared machine: "
                  "the load columns are the 1-min load before each reader)", highlight=False)


if __name__ == "__main__":
    main()
