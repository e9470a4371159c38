"""Fan-out publish on the embedded default: one topic, 10 subscriptions, with a raw sqlite3 floor
measured in the same run.

    python bench/topics.py [--n 5000] [--repeats 3]

The topic has 10 subscriptions: 3 take everything, 4 route by subject pattern (``orders.eu.*``,
``orders.*.created``, ``orders.us.>``, ``orders.*.refunded``) and 3 filter on content (a numeric
range, an anything-but with a prefix, and an ``$or``). Events are ~100-byte JSON orders with
subjects ``orders.<region>.<action>``; about 6 of the 10 subscriptions take each one.

1. **swell, one publish per call**: ``Producer.publish(topic, data, subject=...)``, awaited one at a
   time: an event built, routed and written to every matching queue in one transaction.
2. **swell, one per call, 32 publishers**: the same from 32 concurrent tasks (handlers publishing
   onward, a web app's requests), whose publishes share a commit when they meet.
3. **swell, 100 per call**: ``Producer.publish_events`` with batches of 100.
4. **raw floor**: a sqlite3 loop, one transaction per event, inserting it into the same queues
   (which it knows without matching anything), WAL and ``synchronous=NORMAL`` as swell.

Rates are events published per second (deliveries per second = that times the fan-out).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
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

from swell import Producer
from swell.brokers.base import QueueSpec, SubscriptionSpec, TopicSpec
from swell.brokers.sqlite import SqliteBroker
from swell.core.filters import Pattern

TARGET = 5000.0
REGIONS = ("eu", "us", "ap")
ACTIONS = ("created", "paid", "refunded", "shipped")
SUBSCRIPTIONS: list[tuple[str, str | None, dict[str, Any] | None]] = [
    ("audit", None, None), ("archive", None, None), ("search", None, None),
    ("eu", "orders.eu.*", None), ("created", "orders.*.created", None),
    ("us", "orders.us.>", None), ("refunds", "orders.*.refunded", None),
    ("big", None, {"data": {"amount": [{"numeric": [">=", 100]}]}}),
    ("not-test", None, {"data": {"customer": [{"anything-but": {"prefix": "test-"}}]}}),
    ("vip-or-eu", None, {"$or": [{"data": {"tier": ["vip"]}}, {"data": {"region": ["eu"]}}]}),
]


def order(i: int) -> tuple[str, dict[str, Any]]:
    region, action = REGIONS[i % 3], ACTIONS[i % 4]
    return f"orders.{region}.{action}", {
        "id": i, "amount": (i * 37) % 200, "region": region,
        "customer": f"{'test-' if i % 10 == 0 else 'c-'}{i % 997}", "tier": "vip" if i % 7 == 0 else "std"}


async def setup(path: str) -> SqliteBroker:
    broker = SqliteBroker(path)
    await broker.declare_topic(TopicSpec(name="orders"))
    for name, subject, pattern in SUBSCRIPTIONS:
        await broker.subscribe(SubscriptionSpec(
            topic="orders", name=name, queue=QueueSpec(name=f"orders.{name}"), subject=subject,
            filter=None if pattern is None else Pattern.parse(pattern).json))
    return broker


async def swell_publish(path: str, n: int, batch: int, publishers: int = 1) -> tuple[float, int]:
    broker = await setup(path)
    producer = Producer(broker, source="/bench")
    events = [order(i) for i in range(n)]

    async def publisher(mine: list[tuple[str, dict[str, Any]]]) -> None:
        for subject, data in mine:
            await producer.publish("orders", data, subject=subject)

    try:
        t0 = time.perf_counter()
        if batch == 1:
            await asyncio.gather(*(publisher(events[k::publishers]) for k in range(publishers)))
        else:
            for i in range(0, n, batch):
                await producer.publish_events("orders", [
                    producer.event("orders", data, subject=subject)
                    for subject, data in events[i:i + batch]])
        elapsed = time.perf_counter() - t0
        delivered = sum([(await broker.stats(f"orders.{s[0]}")).depth for s in SUBSCRIPTIONS])
    finally:
        await broker.close()
    return n / elapsed, delivered


def raw_targets(subject: str, data: dict[str, Any]) -> list[str]:
    """Which queues an event goes to, written out by hand (the floor does no matching)."""
    _, region, action = subject.split(".")
    out = ["audit", "archive", "search"]
    out += ["eu"] if region == "eu" else []
    out += ["created"] if action == "created" else []
    out += ["us"] if region == "us" else []
    out += ["refunds"] if action == "refunded" else []
    out += ["big"] if data["amount"] >= 100 else []
    out += ["not-test"] if not data["customer"].startswith("test-") else []
    out += ["vip-or-eu"] if data["tier"] == "vip" or data["region"] == "eu" else []
    return out


def raw_publish(path: str, n: int) -> tuple[float, int]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, "
                 "visible_at REAL NOT NULL, body BLOB NOT NULL)")
    conn.execute("CREATE INDEX m_ready ON m (queue, visible_at)")
    events = [order(i) for i in range(n)]
    delivered = 0
    t0 = time.perf_counter()
    for i, (subject, data) in enumerate(events):
        body = json.dumps({"specversion": "1.0", "id": str(i), "source": "/bench", "type": "o",
                           "subject": subject, "data": data}).encode()
        now = time.time()
        targets = raw_targets(subject, data)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO m (queue, visible_at, body) VALUES (?, ?, ?)",
                         [(f"orders.{q}", now, body) for q in targets])
        conn.execute("COMMIT")
        delivered += len(targets)
    elapsed = time.perf_counter() - t0
    conn.close()
    return n / elapsed, delivered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="events per run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    runs: dict[str, list[float]] = {"one": [], "many": [], "batch": [], "raw": []}
    fanout: dict[str, int] = {}
    with console.status("publishing...") as status:
        for r in range(args.repeats):
            with tempfile.TemporaryDirectory() as d:
                status.update(f"repeat {r + 1}/{args.repeats}: swell, one per call")
                rate, fanout["one"] = asyncio.run(swell_publish(os.path.join(d, "a.db"), args.n, 1))
                runs["one"].append(rate)
                status.update(f"repeat {r + 1}/{args.repeats}: swell, one per call, 32 publishers")
                rate, fanout["many"] = asyncio.run(swell_publish(os.path.join(d, "m.db"), args.n, 1, 32))
                runs["many"].append(rate)
                status.update(f"repeat {r + 1}/{args.repeats}: raw sqlite3")
                rate, fanout["raw"] = raw_publish(os.path.join(d, "b.db"), args.n)
                runs["raw"].append(rate)
                status.update(f"repeat {r + 1}/{args.repeats}: swell, 100 per call")
                rate, fanout["batch"] = asyncio.run(swell_publish(os.path.join(d, "c.db"), args.n, 100))
                runs["batch"].append(rate)
    assert len(set(fanout.values())) == 1, f"the runs routed differently: {fanout}"
    raw = statistics.median(runs["raw"])
    table = Table(title=f"fan-out publish: 1 topic, {len(SUBSCRIPTIONS)} subscriptions, {args.n:,} "
                        f"events, {fanout['raw'] / args.n:.1f} deliveries per event "
                        f"(median of {args.repeats})", title_justify="left", header_style="bold")
    for col in ("run", "publishes/s", "deliveries/s", "vs raw", "each run"):
        table.add_column(col, justify="left" if col in ("run", "each run") else "right")
    for key, label in (("one", "swell, 1 per publish call"),
                       ("many", "swell, 1 per call, 32 publishers"), ("batch", "swell, 100 per call"),
                       ("raw", "raw sqlite3, 1 tx per event")):
        rate = statistics.median(runs[key])
        table.add_row(label, f"{rate:,.0f}", f"{rate * fanout[key] / args.n:,.0f}",
                      f"{rate / raw:.2f}x", ", ".join(f"{x:,.0f}" for x in runs[key]))
    console.print(table)
    for key, label in (("one", "one publisher"), ("many", "32 publishers")):
        rate = statistics.median(runs[key])
        verdict = "met" if rate >= TARGET else "NOT met"
        console.print(f"target >= {TARGET:,.0f} publishes/s, one event per call, {label}: {verdict} "
                      f"({rate:,.0f}/s)")
    console.print(f"[dim]{datetime.date.today()} · {platform.node()} · Python "
                  f"{sys.version.split()[0]} · SQLite {sqlite3.sqlite_version} · "
                  f"{os.cpu_count()} CPUs[/]")


if __name__ == "__main__":
    main()
