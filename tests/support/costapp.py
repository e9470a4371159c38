"""An app like the demo (``swell.demo``) for tests/runtime/test_cost_measured.py: a burst of
orders charged inline (a few ms of I/O, a flaky 2 % retried), and reports made in process
instances. Each handler counts its own calls where swell does not look: the inline one in a module
counter, the process one as a line in the file its job names (instances are forked from a warm
parent that outlives a test)."""

from __future__ import annotations

import asyncio
import os
import random
import time

from swell import App, Auto, Context, Retry

app = App("costdemo")
orders = app.queue("costdemo.orders", visibility_timeout=10, max_receives=4)
reports = app.queue("costdemo.reports", visibility_timeout=10, max_receives=4)

CALLS = {"charge": 0}


@app.function(orders, concurrency=Auto(max=16, target_wait=1, idle=0.5), retry=Retry(backoff=0.05), timeout=5,
              workload="checkout", budget="$5/h")
async def charge(order: dict[str, object], ctx: Context) -> None:
    CALLS["charge"] += 1
    await asyncio.sleep(random.uniform(0.002, 0.02))
    if ctx.attempt == 1 and random.random() < 0.02:
        raise ConnectionError("payment API hiccup")


@app.function(reports, mode="process", concurrency=Auto(max=3, target_wait=1, idle=0.5), memory="256MiB",
              workload="checkout")
def report(job: dict[str, object]) -> None:
    time.sleep(float(job["sleep"]))  # type: ignore[arg-type]
    fd = os.open(str(job["sink"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
