"""The bundled demo: a burst of orders hits a queue and swell drains it, with live counts.

Run it with ``swell demo``; the app itself is an ordinary swell app (``swell run swell.demo``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from pydantic import BaseModel
from rich.console import Console
from rich.live import Live
from rich.progress import Progress
from rich.table import Table

from swell.brokers.base import Message
from swell.brokers.producer import Producer
from swell.core.retry import Retry
from swell.render import fit
from swell.runtime.app import App
from swell.runtime.context import Context
from swell.runtime.runtime import Runtime

STOP_GRACE_S = 2.0  # on Ctrl-C, for the orders in hand (a few ms each) to finish

app = App("demo")
orders = app.queue("demo.orders", visibility_timeout=10, max_receives=4)


class Order(BaseModel):
    id: str
    amount: float


@app.function(orders, concurrency=64, retry=Retry(backoff=0.05), timeout=5)
async def charge(order: Order, ctx: Context) -> None:
    """Pretend to call a payment API: a few ms of I/O, and a flaky 2 % that succeeds on retry."""
    await asyncio.sleep(random.uniform(0.002, 0.02))
    if ctx.attempt == 1 and random.random() < 0.02:
        raise ConnectionError("payment API hiccup")


def _burst(n: int) -> list[object]:
    out: list[object] = [{"id": f"o-{i}", "amount": round(random.uniform(5, 500), 2)}
                         for i in range(n)]
    for i in range(0, n, max(1, n // 5)):
        out[i] = {"id": f"bad-{i}", "amount": "not a number"}  # goes to the DLQ at once
    return out


async def run_demo(broker_url: str, events: int, console: Console) -> None:
    logging.getLogger("swell").setLevel(logging.ERROR)  # the table tells the story
    runtime = Runtime(app, broker_url)
    try:
        await runtime.declare()
        await _send_burst(runtime, broker_url, events, console)
        console.print(f"sent {events:,} orders; starting the function (cold: 0 instances)")
        started = time.perf_counter()
        await runtime.start()
        succeeded, retried, dead = await _drain(runtime, console, started)
    finally:
        # on Ctrl-C too: stop the function's workers before the loop goes (left pending, each
        # would be reported "destroyed but pending"); what is in flight goes back to the queue
        await runtime.stop(grace_s=STOP_GRACE_S)
    console.line()
    elapsed = time.perf_counter() - started
    console.print(f"[bold green]drained[/] {succeeded:,} orders in {elapsed:.1f} s "
                  f"({succeeded / elapsed:,.0f}/s); {retried} retried, {dead} dead-lettered.")
    console.print("next: [bold]swell queues[/], [bold]swell dlq show demo.orders[/], "
                  "[bold]swell dlq redrive demo.orders[/]")


async def _send_burst(runtime: Runtime, broker_url: str, events: int, console: Console) -> None:
    broker = runtime.broker
    for q in ("demo.orders", "demo.orders.dlq"):
        await broker.purge(q)
    console.print(f"[bold]swell demo[/] on {broker_url}: a burst of {events:,} orders, a handler "
                  "that waits on a pretend API (2-20 ms), 2 % transient failures, a few bad payloads")
    producer = Producer(broker, source="/swell/demo")
    payloads = _burst(events)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("sending the burst", total=events)
        for i in range(0, events, 500):
            chunk = payloads[i:i + 500]
            await broker.send(orders.name, [Message(body=producer.event(orders.name, p).to_json())
                                            for p in chunk])
            progress.advance(task, len(chunk))


async def _drain(runtime: Runtime, console: Console, started: float) -> tuple[int, int, int]:
    """Show the counts live until the queue is empty; (succeeded, retried, dead-lettered)."""
    broker = runtime.broker
    metrics = runtime.functions["charge"].dispatcher.metrics
    with Live(console=console, refresh_per_second=8) as live:
        while True:
            stats = await broker.stats(orders.name)
            dlq = await broker.stats(f"{orders.name}.dlq")
            elapsed = time.perf_counter() - started
            live.update(fit(_table(stats.depth, stats.in_flight, stats.delayed, metrics.succeeded,
                                   metrics.retried, dlq.total, elapsed,
                                   metrics.percentile_s(0.99)), console.width))
            if stats.total == 0:
                return metrics.succeeded, metrics.retried, dlq.total
            await asyncio.sleep(0.125)


def _table(ready: int, in_flight: int, delayed: int, done: int, retried: int, dead: int,
           elapsed: float, p99: float | None) -> Table:
    t = Table(header_style="bold")
    t.add_column("queue")
    for col in ("ready", "in flight", "retry wait", "done", "retried", "dead-lettered", "rate",
                "p99 handler"):
        t.add_column(col, justify="right")
    rate = done / elapsed if elapsed > 0 else 0.0
    t.add_row(orders.name, f"{ready:,}", f"{in_flight:,}", f"{delayed:,}", f"{done:,}", f"{retried:,}",
              f"{dead:,}", f"{rate:,.0f}/s", "-" if p99 is None else f"{p99 * 1000:.1f} ms")
    return t
