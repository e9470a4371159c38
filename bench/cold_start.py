"""Cold starts of process instances: time to first invocation, with and without a warm parent.

    python bench/cold_start.py [--n 20] [--burst 8] [--warm 200]

A small app (a pydantic payload model and one handler) is written to a temp dir and loaded as
``swell run`` loads a file. Per start method, through the same ``ProcessPool``:

1. **sequential cold starts**: ``--n`` times, an event is run on an empty pool, so the run starts an
   instance and waits for it. *Ready* = asking for the instance -> it has loaded the function;
   *first invocation* = asking for the instance -> its handler is called (the issue's measure);
   *run* = ``pool.run`` called -> outcome back in the parent. The pool then goes back to zero.
2. **burst**: ``scale_to(--burst)`` on an empty pool; ready times of those instances started at once.
3. **warm**: ``--warm`` events on one ready instance (the cost of an invocation without a start).

``forkserver`` is the pool's way: instances fork from a warm parent that imported swell and the app
once. ``spawn`` is the baseline: a plain multiprocessing spawn-context process per instance, a fresh
interpreter importing the same app. Target (the issue): under 100 ms to first invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swell import Event
from swell.runtime.loader import load_app
from swell.runtime.process import ProcessPool, locate_app

# rich is imported in main() only: a spawn child runs this file again, and the baseline should pay
# for importing the app, not for this script's table printing
APP = '''\
"""A small app: one payload model, one handler."""
import pydantic
from swell import App, Context

app = App("bench-cold")
orders = app.queue("orders")


class Order(pydantic.BaseModel):
    id: str
    amount: float
    items: list[str] = []


@app.function(orders)
def handle(order: Order, ctx: Context) -> None:
    assert order.amount >= 0
'''
TARGET_S = 0.100


async def no_publish(queue: str, data: Any, attrs: dict[str, Any]) -> str:
    raise AssertionError("the bench app does not publish")


def body(i: int) -> bytes:
    return Event(type="order", source="bench", data={"id": f"o{i}", "amount": 9.5}).to_json()


async def until(check: Callable[[], bool], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if check():
                return
            await asyncio.sleep(0.001)


async def emptied(pool: ProcessPool) -> None:
    await pool.scale_to(0)
    await until(lambda: not pool.instances(), 30)


async def measure(module: str, method: str, n: int, burst: int, warm: int) -> dict[str, Any]:
    pool = ProcessPool(module, "handle", timeout_s=30.0, max_instances=max(burst, 1),
                       on_publish=no_publish, start_method=method)  # type: ignore[arg-type]
    try:
        await pool.start()
        runs: list[float] = []
        for i in range(n):
            began = time.monotonic()
            outcome = await pool.run(body(i), 1)
            runs.append(time.monotonic() - began)
            assert outcome.kind == "ok", outcome
            await emptied(pool)
        ready, first = list(pool.cold_start_times_s), list(pool.first_invocation_times_s)

        began = time.monotonic()
        await pool.scale_to(burst)
        await until(lambda: pool.ready >= burst, 120)
        burst_all = time.monotonic() - began
        burst_ready = list(pool.cold_start_times_s)[n:]
        await emptied(pool)

        await pool.run(body(0), 1)  # one instance, ready
        warm_s = []
        for i in range(warm):
            began = time.monotonic()
            await pool.run(body(i), 1)
            warm_s.append(time.monotonic() - began)
        return {"ready": ready, "first": first, "run": runs, "burst": burst_ready,
                "burst_all": burst_all, "warm": warm_s, "warm_parent": pool.warm_parent_s,
                "crashes": pool.crashes}
    finally:
        await pool.stop(grace_s=1.0)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))]


def ms(x: float) -> str:
    return f"{x * 1000:,.1f}"


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="sequential cold starts per method")
    parser.add_argument("--burst", type=int, default=8, help="instances started at once")
    parser.add_argument("--warm", type=int, default=200, help="warm invocations")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_cold_app.py"
        path.write_text(APP)
        module = locate_app(load_app(str(path)))
        results = {m: asyncio.run(measure(module, m, args.n, args.burst, args.warm))
                   for m in ("forkserver", "spawn")}

    console = Console(width=120)
    console.print(f"[bold]Cold starts[/] of a small app (pydantic model + 1 handler), Python "
                  f"{platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}")
    table = Table("method", "measure", "n", "median ms", "p90 ms", "max ms")
    for method, r in results.items():
        for label, key in [("ready (sequential)", "ready"), ("first invocation (sequential)", "first"),
                           ("pool.run from empty (sequential)", "run"), (f"ready (burst of {args.burst})",
                                                                         "burst"),
                           ("warm invocation (pool.run)", "warm")]:
            xs = r[key]
            table.add_row(method, label, str(len(xs)), ms(statistics.median(xs)), ms(pct(xs, 0.9)),
                          ms(max(xs)))
        table.add_row(method, f"all {args.burst} of the burst ready", "1", ms(r["burst_all"]), "", "",
                      end_section=True)
    console.print(table)
    fs, sp = results["forkserver"], results["spawn"]
    median_first = statistics.median(fs["first"])
    console.print(f"warm parent start (forkserver, once per runtime): {ms(fs['warm_parent'])} ms; "
                  f"crashes: {fs['crashes'] + sp['crashes']}")
    console.print(f"time to first invocation, median: forkserver {ms(median_first)} ms vs spawn "
                  f"{ms(statistics.median(sp['first']))} ms "
                  f"({statistics.median(sp['first']) / median_first:.0f}x); target < "
                  f"{TARGET_S * 1000:.0f} ms: {'met' if pct(fs['first'], 0.9) < TARGET_S else 'NOT met'} "
                  f"(at p90)")


if __name__ == "__main__":
    sys.exit(main())
