"""Append and consume throughput of an 8-partition stream, on the embedded default (SQLite) and on
NATS JetStream, with a raw client loop measured in the same run as the floor.

    python bench/streams.py [--broker sqlite|nats|both] [--n 20000] [--repeats 3] [--profile]

Per repeat and backend, interleaved (swell, raw, swell, raw, ...), each on a fresh SQLite file or
a fresh NATS namespace / stream:

1. **swell append**: ``--n`` events, each ``Producer.event(stream, data, key=...)`` (a CloudEvent
   whose ``data`` is ~100 B of JSON, ``{"id", "ts", "pad"}``; 1,000 distinct keys, ``k0``..``k999``),
   encoded with ``to_json`` and appended with ``broker.append`` in batches of 100 (building the
   events is timed, as a producer pays for it). Rate = N / time.
2. **swell consume**: after the append, a ``Runtime`` starts with one no-op ``async def`` handler
   (``dict`` payload, so pydantic validation is included) on a consumer group of the stream, at
   default settings (``Auto`` concurrency, checkpoints every 100 events or 1 s). Rate = N /
   (``start()`` -> N-th handler done): the start, the first rebalance and Auto's ramp from cold
   are included. Also shown: start -> first handler, the rate first -> last handler, and the lag
   left on the group's committed offsets after the graceful stop (should be 0).
3. **raw floor**, on the same kind of backend:

   - SQLite: one table ``(stream, partition, offset, body)``, WAL and ``synchronous=NORMAL`` like
     swell. Append: the same batches of 100, each body a CloudEvent dict ``json.dumps``-ed in the
     loop, its partition CRC-32(key) % 8 and its offset from heads kept in memory, one transaction
     per batch. Consume: each partition read in turn, 100 records at a time by offset, each
     ``json.loads``-ed, and one ``UPDATE`` of the partition's committed offset per batch.
   - NATS (nats-py alone): one file-storage stream with a subject per partition. Append: each
     batch ``js.publish_async``-ed, the publish acks awaited together. Consume: one durable pull
     consumer per partition (``AckPolicy.ALL``), the 8 worked concurrently, ``fetch(100)`` at a
     time, ``json.loads`` each, and one ack of the batch's last message (the commit); then a flush.

   Rate = N / loop time (the consume loop includes its connection and consumers' creation).

``--broker nats`` starts a ``nats-server -js`` of the bench's own on a free loopback port with a
temporary store (``throughput.py``'s helpers) and deletes every stream it made at the end.
``--profile`` runs one more swell consume per backend under cProfile and prints where its time goes.

The noise handling is ``throughput.py``'s: each phase waits (up to 2 min) for a nearly idle machine,
and is run again (up to twice) when other processes took over 10 % of it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import io
import itertools
import json
import os
import pstats
import secrets
import sqlite3
import statistics
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from swell import App, Producer, Runtime, open_broker
from swell.brokers.base import Message
from swell.brokers.logs import committed
from throughput import (
    SYSTEM_PIDS,
    Tally,
    body,
    console,
    delete_streams,
    machine,
    nats_server,
    nats_server_url,
    num,
    phase,
    progress_bar,
    source_state,
    temp_dir,
    with_namespace,
)

STREAM = "clicks"
GROUP = "g"
PARTITIONS = 8
KEYS = 1000
BATCH = 100
CONSUME_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0
SLOW_RATIO = 0.3  # under this share of the raw loop's consume rate, the bench says so


def key(i: int) -> str:
    return f"k{i % KEYS}"


# -- swell ---------------------------------------------------------------------------------------
def stream_app(tally: Tally) -> App:
    app = App("bench")
    clicks = app.stream(STREAM, partitions=PARTITIONS)

    @app.function(clicks.group(GROUP))
    async def noop(payload: dict) -> None:  # type: ignore[type-arg]
        tally.handled()

    return app


async def swell_append(url: str, app: App, n: int) -> float:
    """Declare the app's stream and append ``n`` events in batches; returns events/s."""
    broker = open_broker(url)
    try:
        await Runtime(app, broker).declare()
        producer = Producer(broker, source="/bench/streams")
        t0 = time.perf_counter()
        for s in range(0, n, BATCH):
            events = [producer.event(STREAM, body(i), key=key(i)) for i in range(s, min(n, s + BATCH))]
            await broker.append(STREAM, [Message(body=e.to_json(), key=e.key) for e in events])
        return n / (time.perf_counter() - t0)
    finally:
        await broker.close()


async def group_lag(url: str) -> int:
    """Records the group has not committed yet, over all partitions."""
    broker = open_broker(url)
    try:
        done = await committed(broker.kv, STREAM, GROUP)
        return sum(await broker.lag(STREAM, [done.get(p, 0) for p in range(PARTITIONS)]))
    finally:
        await broker.close()


async def swell_consume(url: str, app: App, tally: Tally) -> dict[str, Any]:
    rt = Runtime(app, url)
    t0 = time.perf_counter()
    await rt.start()
    try:
        async with asyncio.timeout(CONSUME_TIMEOUT_S):
            await tally.done.wait()
    finally:
        t_stop = time.perf_counter()
        stopped = True
        try:  # bounded: a stop that hangs must not hang the bench (it is not part of the rate)
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await rt.stop()
        except TimeoutError:
            stopped = False
            console.log(f"the runtime did not stop within {STOP_TIMEOUT_S:g} s", style="yellow")
        t_stopped = time.perf_counter()
    n = tally.n
    return {"consume": n / (tally.t_last - t0), "first_ms": (tally.t_first - t0) * 1000,
            "peer_consume": n / (tally.t_last - tally.t_first) if tally.t_last > tally.t_first else None,
            "stop_ms": (t_stopped - t_stop) * 1000 if stopped else None, "handled": tally.count}


async def swell_run(new_url: Callable[[], str], n: int) -> dict[str, Any]:
    url = new_url()
    tally = Tally(n)
    app = stream_app(tally)
    append = await swell_append(url, app, n)
    res = await swell_consume(url, app, tally)
    return {"append": append, **res, "left": await group_lag(url)}


# -- raw sqlite3 ---------------------------------------------------------------------------------
RAW_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (stream TEXT NOT NULL, partition INTEGER NOT NULL,
    offset INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (stream, partition, offset));
CREATE TABLE IF NOT EXISTS offsets (stream TEXT NOT NULL, grp TEXT NOT NULL,
    partition INTEGER NOT NULL, offset INTEGER NOT NULL, PRIMARY KEY (stream, grp, partition));
"""


def raw_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(RAW_SCHEMA)
    return conn


def raw_event(i: int) -> tuple[str, bytes]:
    """(key, body): a CloudEvent as a dict, JSON-encoded by hand (what ``Producer.event`` makes)."""
    k = key(i)
    return k, json.dumps({
        "specversion": "1.0", "id": uuid.uuid4().hex, "source": "/bench/streams",
        "type": f"swell.{STREAM}", "time": datetime.datetime.now(datetime.UTC).isoformat(),
        "key": k, "data": body(i)}, separators=(",", ":")).encode()


def raw_sqlite_run(new_path: Callable[[], str], n: int) -> dict[str, Any]:
    path = new_path()
    conn = raw_connect(path)
    heads = [0] * PARTITIONS
    t0 = time.perf_counter()
    for s in range(0, n, BATCH):
        rows = []
        for i in range(s, min(n, s + BATCH)):
            k, data = raw_event(i)
            p = zlib.crc32(k.encode()) % PARTITIONS
            rows.append((STREAM, p, heads[p], data))
            heads[p] += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO log (stream, partition, offset, body) VALUES (?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    append = n / (time.perf_counter() - t0)
    conn.close()

    t0 = time.perf_counter()
    conn = raw_connect(path)
    conn.executemany("INSERT INTO offsets VALUES (?, ?, ?, 0)",
                     [(STREAM, GROUP, p) for p in range(PARTITIONS)])
    done = 0
    for p in range(PARTITIONS):
        position = 0
        while rows := conn.execute("SELECT offset, body FROM log WHERE stream = ? AND partition = ? "
                                   f"AND offset >= ? ORDER BY offset LIMIT {BATCH}",
                                   (STREAM, p, position)).fetchall():
            for _, data in rows:
                json.loads(data)
            position = rows[-1][0] + 1
            conn.execute("UPDATE offsets SET offset = ? WHERE stream = ? AND grp = ? AND partition = ?",
                         (position, STREAM, GROUP, p))
            done += len(rows)
    consume = done / (time.perf_counter() - t0)
    conn.close()
    return {"append": append, "consume": consume, "handled": done}


# -- raw nats-py ---------------------------------------------------------------------------------
async def raw_nats_run(server: str, new_stream: Callable[[], str], n: int) -> dict[str, Any]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

    stream = new_stream()
    subjects = [f"{stream}.p.{p}" for p in range(PARTITIONS)]
    nc = await nats.connect(server)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=subjects,
                                         retention=RetentionPolicy.LIMITS, storage=StorageType.FILE))
        counts = [0] * PARTITIONS
        t0 = time.perf_counter()
        for s in range(0, n, BATCH):
            acks = []
            for i in range(s, min(n, s + BATCH)):
                k, data = raw_event(i)
                p = zlib.crc32(k.encode()) % PARTITIONS
                counts[p] += 1
                acks.append(await js.publish_async(subjects[p], data))
            await asyncio.gather(*acks)
        append = n / (time.perf_counter() - t0)
    finally:
        await nc.close()

    async def partition(js: Any, p: int) -> int:
        psub = await js.pull_subscribe(subjects[p], durable=f"raw{p}", stream=stream,
                                       config=ConsumerConfig(ack_policy=AckPolicy.ALL))
        done = 0
        while done < counts[p]:
            msgs = await psub.fetch(batch=BATCH, timeout=5)
            for m in msgs:
                json.loads(m.data)
            await msgs[-1].ack()  # AckPolicy.ALL: everything up to here is done (the commit)
            done += len(msgs)
        return done

    t0 = time.perf_counter()
    nc = await nats.connect(server)
    try:
        js = nc.jetstream()
        done = sum(await asyncio.gather(*(partition(js, p) for p in range(PARTITIONS))))
        await nc.flush()
        consume = done / (time.perf_counter() - t0)
    finally:
        await nc.close()
    return {"append": append, "consume": consume, "handled": done}


# -- profile -------------------------------------------------------------------------------------
def profile_consume(url: str, n: int, label: str) -> None:
    """One swell append + consume, the consume under cProfile; prints the top of the profile."""
    tally = Tally(n)
    app = stream_app(tally)
    asyncio.run(swell_append(url, app, n))
    prof = cProfile.Profile()
    res = prof.runcall(asyncio.run, swell_consume(url, app, tally))
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    console.rule(f"cProfile of a swell consume on {label} (profiled rate {res['consume']:,.0f}/s)")
    console.print(out.getvalue(), markup=False, highlight=False)


# -- the run -------------------------------------------------------------------------------------
def fresh(template: str) -> Callable[[], str]:
    """A new name from ``template`` at each call: a phase run again must not find the records of
    the attempt before."""
    counter = itertools.count(1)
    return lambda: template.format(next(counter))


@dataclass
class Runs:
    swell: list[dict[str, Any]] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)
    rejected_noisy: list[dict[str, Any]] = field(default_factory=list)


def run_sqlite(args: argparse.Namespace) -> Runs:
    runs = Runs()
    with temp_dir() as tmp, progress_bar():
        for r in range(1, args.repeats + 1):
            tag = f"SQLite, run {r}/{args.repeats}"
            phase(runs, "swell", f"swell ({tag})", swell_run, fresh(f"sqlite:///{tmp}/streams{r}-{{}}.db"),
                  args.n)
            phase(runs, "raw", f"raw sqlite3 ({tag})", raw_sqlite_run, fresh(f"{tmp}/raw{r}-{{}}.db"), args.n)
        if args.profile:
            profile_consume(f"sqlite:///{tmp}/profile.db", args.n, "SQLite")
    return runs


def run_nats(args: argparse.Namespace) -> Runs:
    runs = Runs()
    base = f"bench{secrets.token_hex(4)}"
    with temp_dir() as tmp, progress_bar(), nats_server(tmp) as (url, pid):
        SYSTEM_PIDS.append(pid)
        server = nats_server_url(url)
        console.log(f"NATS at {server} (a server of the bench, pid {pid}), namespace {base}_*",
                    highlight=False)
        try:
            for r in range(1, args.repeats + 1):
                tag = f"NATS, run {r}/{args.repeats}"
                phase(runs, "swell", f"swell ({tag})", swell_run,
                      fresh(with_namespace(url, f"{base}_streams{r}x") + "{}"), args.n)
                phase(runs, "raw", f"raw nats-py ({tag})", raw_nats_run, server,
                      fresh(f"{base}-raw{r}x{{}}"), args.n)
            if args.profile:
                profile_consume(with_namespace(url, f"{base}_profile"), args.n, "NATS")
        finally:
            gone = asyncio.run(delete_streams(server, (f"swell-{base}_", f"KV_swell_{base}_",
                                                       f"{base}-")))
            console.log(f"deleted the bench's {len(gone)} stream(s) on {server}", highlight=False)
            SYSTEM_PIDS.remove(pid)
    return runs


# -- report --------------------------------------------------------------------------------------
def med(runs: list[dict[str, Any]], k: str) -> float | None:
    xs = [r[k] for r in runs if r.get(k) is not None]
    return statistics.median(xs) if xs else None


def each(runs: list[dict[str, Any]], k: str) -> str:
    return ", ".join(num(r.get(k)) for r in runs)


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def table(backend: str, raw: str, runs: Runs) -> Table:
    t = Table(title=f"{backend}: 8-partition stream, events/s (median of runs; each run)",
              title_justify="left")
    t.add_column("")
    t.add_column("append/s", justify="right")
    t.add_column("consume/s", justify="right")
    t.add_column("runs: append", justify="right")
    t.add_column("runs: consume", justify="right")
    t.add_column("1st handler ms", justify="right")
    t.add_column("1st->last /s", justify="right")
    t.add_column("left", justify="right")
    t.add_column("noise %", justify="right")
    s, r = runs.swell, runs.raw
    t.add_row("swell", num(med(s, "append")), num(med(s, "consume")), each(s, "append"),
              each(s, "consume"), num(med(s, "first_ms")), num(med(s, "peer_consume")),
              ", ".join(str(x.get("left")) for x in s), ", ".join(f"{x['noise_pct']:.0f}" for x in s))
    t.add_row(raw, num(med(r, "append")), num(med(r, "consume")), each(r, "append"), each(r, "consume"),
              "", "", "", ", ".join(f"{x['noise_pct']:.0f}" for x in r))
    cr = ratio(med(s, "consume"), med(r, "consume"))
    t.add_row("[bold]swell / raw[/]", ratio(med(s, "append"), med(r, "append")), f"[bold]{cr}[/]")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", choices=("sqlite", "nats", "both"), default="both")
    ap.add_argument("--n", type=int, default=20_000, help="events appended, then consumed, per run")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    ap.add_argument("--profile", action="store_true",
                    help="afterwards, profile one swell consume per backend with cProfile")
    args = ap.parse_args()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load0 = os.getloadavg()
    console.print(f"[bold]swell streams bench[/] {started} | {machine()} | swell at {source_state()} | "
                  f"n={args.n:,}, {PARTITIONS} partitions, {KEYS:,} keys, batches of {BATCH} | "
                  f"load avg at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", highlight=False)
    tables = []
    if args.broker in ("sqlite", "both"):
        tables.append(table("Embedded SQLite", "raw sqlite3 loop", run_sqlite(args)))
    if args.broker in ("nats", "both"):
        tables.append(table("NATS JetStream", "raw nats-py loop", run_nats(args)))
    load1 = os.getloadavg()
    for t in tables:
        console.print(t)
    console.print(f"load avg at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; left = records the "
                  "group had not committed after the graceful stop; noise % = CPU share of the machine "
                  "taken by other processes during the run", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
