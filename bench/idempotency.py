"""The cost of an idempotency key per event on the embedded default: the same drain with and
without ``idempotency=``, in the same run.

    python bench/idempotency.py [--n 10000] [--repeats 3]

Per repeat, interleaved: N ~100-byte JSON events are sent to a queue while nothing runs; then a
``Runtime`` starts with one no-op ``async def`` handler (``dict`` payload), once plain and once with
``Idempotency(key=lambda e: e.data["order_id"])`` (every key new: the worst case, a conditional put
to start and a compare-and-set to complete per event, in SQLite's kv table). Each pair runs with
the default controller (Auto) and with 32 fixed units: kv writes made while the connection is busy
share a transaction, so the cost per event falls with concurrency. Rate = N / (start -> N-th
handler done). The plain drain is the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from swell import App, Idempotency, Producer, Runtime

PAD = "x" * 40


def app(idempotent: bool, done: asyncio.Event, n: int, concurrency: int | None) -> App:
    a = App("bench")
    q = a.queue("orders")
    count = 0

    @a.function(q, idempotency=Idempotency(key=lambda e: e.data["order_id"]) if idempotent else None,
                concurrency=concurrency)
    async def handle(data: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    return a


async def drain(path: str, n: int, idempotent: bool, concurrency: int | None) -> float:
    url = f"sqlite:///{path}"
    done = asyncio.Event()
    rt = Runtime(app(idempotent, done, n, concurrency), url)
    await rt.declare()
    producer = Producer(rt.broker, source="/bench")
    for i in range(0, n, 100):
        await producer.send_events("orders", [producer.event("orders", {"order_id": f"o-{k}", "pad": PAD})
                                              for k in range(i, min(n, i + 100))])
    t0 = time.perf_counter()
    await rt.start()
    await done.wait()
    elapsed = time.perf_counter() - t0
    await rt.stop()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    setups = [(None, "Auto"), (32, "32 units")]
    runs: dict[tuple[bool, int | None], list[float]] = {}
    with console.status("draining...") as status:
        for r in range(args.repeats):
            for units, label in setups:
                for idem in (False, True):
                    status.update(f"repeat {r + 1}/{args.repeats}: {label}, "
                                  f"{'with' if idem else 'without'} keys")
                    with tempfile.TemporaryDirectory() as d:
                        rate = asyncio.run(drain(os.path.join(d, "s.db"), args.n, idem, units))
                    runs.setdefault((idem, units), []).append(rate)
    table = Table(title=f"idempotency overhead: drain of {args.n:,} events, SQLite (median of "
                        f"{args.repeats})", title_justify="left", header_style="bold")
    for col in ("concurrency", "run", "events/s", "us per event", "vs plain", "each run"):
        table.add_column(col, justify="left" if col in ("concurrency", "run", "each run") else "right")
    for units, label in setups:
        plain = statistics.median(runs[(False, units)])
        for idem, run in ((False, "plain (the baseline)"), (True, "idempotency=")):
            rate = statistics.median(runs[(idem, units)])
            table.add_row(label, run, f"{rate:,.0f}", f"{1e6 / rate:,.1f}", f"{rate / plain:.2f}x",
                          ", ".join(f"{x:,.0f}" for x in runs[(idem, units)]))
    console.print(table)
    for units, label in setups:
        plain, keyed = (statistics.median(runs[(i, units)]) for i in (False, True))
        console.print(f"{label}: overhead per event {1e6 / keyed - 1e6 / plain:,.1f} us")
    console.print(f"[dim]{datetime.date.today()} · {platform.node()} · Python {sys.version.split()[0]} "
                  f"· SQLite {sqlite3.sqlite_version} · {os.cpu_count()} CPUs[/]")


if __name__ == "__main__":
    main()
