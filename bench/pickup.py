"""Pickup latency, start time, idle CPU and heartbeat of a ``swell run`` app with many queues, SQLite.

    python bench/pickup.py [--queues 1,2,10,100,1000] [--events 25] [--gap 0.5:3] [--idle 10]

Per queue count N, a fresh SQLite file and an app of N queues, one function each (default
settings: ``Auto``, so every function starts at zero and its receive is the activator's probe).
The handler appends its queue, the send time carried in the payload, and its own start time to a
sink file. ``swell run`` runs the app in a process of its own; this process is the other one:

- **start s**: spawning ``swell run`` -> its "running" line (the N=1 row is the baseline: an
  interpreter importing swell and starting one function).
- **idle CPU %**: CPU time (user + system) of the ``swell run`` process over ``--idle`` seconds
  with nothing sent, as a share of one core.
- **pickup**: ``--events`` events sent one at a time with ``Producer.send`` (as ``swell send``
  does), each to a queue picked at random, after an idle gap drawn from ``--gap`` (seconds), once
  the previous one was handled. Latency = handler start - send time (wall clock, one host). The
  N=1 row is the baseline here too: with one queue no other queue's look can hide a change.
- **heartbeat**: the node's record under ``swell/nodes/`` is read every 0.25 s from here; the
  largest age seen (now - its ``seen``), counting a missing record as older still.

Targets (issue 11): p99 pickup under 50 ms for 1, 2, 10 and 100 queues; with 1,000 queues a
start under 5 s, idle under 5 % of a core, and a heartbeat never older than its 5 s TTL. The box
may be shared: figures are of this run, printed together so they compare with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from swell import Producer, open_broker
from swell.runtime.cluster import NODES_PREFIX, NodeInfo

APP = '''\
"""N queues, one function each; every handler appends "queue sent started" to the sink."""
import os
import time

from swell import App

SINK = os.open(os.environ["PICKUP_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
app = App("pickup")


def handler(i):
    async def handle(data: dict[str, float]) -> None:
        os.write(SINK, f"{i} {data['sent']!r} {time.time()!r}\\n".encode())
    return handle


for i in range(int(os.environ["PICKUP_QUEUES"])):
    app.function(app.queue(f"q{i}"), name=f"h{i}")(handler(i))
'''
START_TIMEOUT_S = 180.0
PICKUP_TIMEOUT_S = 15.0
HEARTBEAT_EVERY_S = 0.25
TARGET_P99_MS = 50.0
TARGET_START_S = 5.0
TARGET_IDLE = 0.05
HEARTBEAT_TTL_S = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    queues: int
    start_s: float = float("nan")
    idle_cpu: float = float("nan")
    latencies_ms: list[float] = field(default_factory=list)
    lost: int = 0
    heartbeat_age_s: float = 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Sink:
    """The handlers' lines, read as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._rest = b""

    def new(self) -> list[tuple[int, float, float]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        return [(int(q), float(sent), float(start))
                for q, sent, start in (line.split() for line in lines)]


async def watch_heartbeat(url: str, result: Result, stop: asyncio.Event) -> None:
    broker = open_broker(url)
    last_seen: float | None = None
    try:
        node_key = None
        while not stop.is_set():
            if node_key is None:
                entries = await broker.kv.scan(f"{NODES_PREFIX}pickup/")
                node_key = entries[0].key if entries else None
                entry = entries[0] if entries else None
            else:
                entry = await broker.kv.get(node_key)
            now = time.time()
            if entry is not None:
                last_seen = msgspec.json.decode(entry.value, type=NodeInfo).seen
            if last_seen is not None:
                result.heartbeat_age_s = max(result.heartbeat_age_s, now - last_seen)
            await asyncio.sleep(HEARTBEAT_EVERY_S)
    finally:
        await broker.close()


async def pickups(url: str, sink: Sink, n_queues: int, events: int, gap: tuple[float, float],
                  result: Result) -> None:
    broker = open_broker(url)
    producer = Producer(broker, source="/bench/pickup")
    rng = random.Random(n_queues)
    try:
        for _ in range(events):
            await asyncio.sleep(rng.uniform(*gap))
            queue = rng.randrange(n_queues)
            sent = time.time()
            await producer.send(f"q{queue}", {"sent": sent})
            deadline = time.monotonic() + PICKUP_TIMEOUT_S
            while True:
                got = [line for line in sink.new() if line[1] == sent]
                if got:
                    result.latencies_ms.append((got[0][2] - sent) * 1000)
                    break
                if time.monotonic() > deadline:
                    result.lost += 1
                    break
                await asyncio.sleep(0.001)
    finally:
        await broker.close()


def started(log: Path, proc: asyncio.subprocess.Process) -> bool:
    if proc.returncode is not None:
        raise SystemExit(f"swell run exited ({proc.returncode}):\n{log.read_text()}")
    return "swell: running" in log.read_text(errors="replace")


async def one(n_queues: int, args: argparse.Namespace, console: Console) -> Result:
    result = Result(n_queues)
    with tempfile.TemporaryDirectory(prefix="swell-pickup-") as tmp:
        d = Path(tmp)
        (d / "app.py").write_text(APP)
        url = f"sqlite:///{d / 'swell.db'}"
        sink = Sink(d / "sink.txt")
        log = d / "swell.log"
        env = {**os.environ, "PICKUP_SINK": str(sink.path), "PICKUP_QUEUES": str(n_queues)}
        t0 = time.monotonic()
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "swell", "run", str(d / "app.py"), "--broker", url,
                "--http", "off", cwd=d, stdout=out, stderr=subprocess.STDOUT, env=env)
        stop = asyncio.Event()
        try:
            while not started(log, proc):
                if time.monotonic() - t0 > START_TIMEOUT_S:
                    raise SystemExit(f"{n_queues} queues: not started in {START_TIMEOUT_S:g} s")
                await asyncio.sleep(0.01)
            result.start_s = time.monotonic() - t0
            console.log(f"{n_queues} queue(s): started in {result.start_s:.2f} s")
            heart = asyncio.create_task(watch_heartbeat(url, result, stop))
            await asyncio.sleep(2.0)  # first ticks, first receives
            c0, w0 = cpu_s(proc.pid), time.monotonic()
            await asyncio.sleep(args.idle)
            result.idle_cpu = (cpu_s(proc.pid) - c0) / (time.monotonic() - w0)
            console.log(f"{n_queues} queue(s): idle at {100 * result.idle_cpu:.1f} % of a core")
            await pickups(url, sink, n_queues, args.events, args.gap, result)
            console.log(f"{n_queues} queue(s): p99 pickup {result.pct(0.99):.1f} ms, heartbeat "
                        f"at most {result.heartbeat_age_s:.1f} s old")
            stop.set()
            await heart
        finally:
            stop.set()
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
    return result


def table(results: list[Result], args: argparse.Namespace) -> Table:
    t = Table(title=f"pickup on SQLite, {args.events} events per row, idle gaps "
              f"{args.gap[0]:g}-{args.gap[1]:g} s", title_justify="left")
    for name in ("queues", "start s", "idle CPU", "p50 ms", "p99 ms", "max ms", "lost",
                 "heartbeat age"):
        t.add_column(name, justify="right")
    for r in results:
        t.add_row(f"{r.queues:,}", f"{r.start_s:.2f}", f"{100 * r.idle_cpu:.1f} %",
                  f"{r.pct(0.5):.1f}", f"{r.pct(0.99):.1f}", f"{max(r.latencies_ms, default=0):.1f}",
                  str(r.lost), f"{r.heartbeat_age_s:.1f} s")
    return t


def verdicts(results: list[Result]) -> list[str]:
    out = []
    for r in results:
        if r.queues <= 100:
            ok = r.pct(0.99) < TARGET_P99_MS and not r.lost
            out.append(f"{'PASS' if ok else 'FAIL'}  {r.queues} queue(s): p99 pickup "
                       f"{r.pct(0.99):.1f} ms (< {TARGET_P99_MS:g} ms)")
        else:
            ok = (r.start_s < TARGET_START_S and r.idle_cpu < TARGET_IDLE
                  and r.heartbeat_age_s < HEARTBEAT_TTL_S and not r.lost)
            out.append(f"{'PASS' if ok else 'FAIL'}  {r.queues:,} queues: start {r.start_s:.1f} s "
                       f"(< {TARGET_START_S:g}), idle {100 * r.idle_cpu:.1f} % (< "
                       f"{100 * TARGET_IDLE:g}), heartbeat {r.heartbeat_age_s:.1f} s (< "
                       f"{HEARTBEAT_TTL_S:g})")
    return out


def gap_range(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(":")
    return float(lo), float(hi or lo)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--queues", default="1,2,10,100,1000",
                   help="queue counts, comma-separated (default: %(default)s)")
    p.add_argument("--events", type=int, default=25, help="events per queue count")
    p.add_argument("--gap", type=gap_range, default=(0.5, 3.0),
                   help="idle gap before each event, lo:hi seconds (default: 0.5:3)")
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured")
    args = p.parse_args()
    console = Console(width=80)
    results = [asyncio.run(one(int(n), args, console)) for n in args.queues.split(",")]
    console.print(table(results, args))
    for line in verdicts(results):
        console.print(line, highlight=False)
    console.print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; mean load "
                  f"{statistics.fmean(os.getloadavg()):.2f}", highlight=False)


if __name__ == "__main__":
    main()
