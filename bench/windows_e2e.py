"""Part (b) of ``bench/windows.py``: a keyed tumbling-window count end to end, from an embedded
(SQLite) stream through ``app.window``, against swell's own plain consumer group reading the same
stream in the same run.

    python bench/windows_e2e.py [--n 100000] [--repeats 2]

One SQLite file per repeat; ``--n`` events appended to an 8-partition stream (1,000 keys, event
times 1 ms apart, each 0-5 s out of order: the issue's workload), then, one after the other, each
from a cold ``Runtime`` at default settings (``Auto`` concurrency, checkpoints every 100 events):

- **plain**: a no-op ``async def`` handler (``dict`` payload) on a consumer group of the stream;
- **window**: ``app.window`` on another group of it: ``Tumbling("10s")``, ``Count()``,
  ``BoundedOutOfOrder("5s")``, panes to a queue.

Rate = N / (``start()`` -> the group's lag is 0, by the dispatcher's own positions). The target
(issue 15): window >= 0.7x plain.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from benchinfo import machine, source_state
from swell import App
from swell.brokers.base import Message
from swell.brokers.producer import Producer
from swell.brokers.url import open_broker
from swell.runtime.groups import GroupDispatcher
from swell.runtime.runtime import Runtime
from swell.windows import BoundedOutOfOrder, Count, Tumbling

T0 = 1_800_000_000.0
KEYS = 1_000
PARTITIONS = 8


def make_app(kind: str) -> App:
    app = App("windows-bench")
    clicks = app.stream("clicks", partitions=PARTITIONS)
    if kind == "plain":
        @app.function(clicks.group("plain"))
        async def plain(data: dict[str, Any]) -> None:
            pass
    else:
        app.window(clicks.group("window"), key=lambda e: e.data["k"], window=Tumbling("10s"),
                   aggregate=Count(), watermark=BoundedOutOfOrder("5s"),
                   emit_to=app.queue("panes"), name="counts")
    return app


async def append(url: str, n: int) -> None:
    broker = open_broker(url)
    try:
        await broker.declare_stream(make_app("plain").streams["clicks"].spec)
        producer = Producer(broker, source="/bench/windows")
        rng = random.Random(1)
        batch: list[Message] = []
        for i in range(n):
            key = f"k{rng.randrange(KEYS)}"
            t = T0 + i * 0.001 - rng.uniform(0, 5)
            e = msgspec.structs.replace(producer.event("clicks", {"k": key}, key=key),
                                        time=datetime.fromtimestamp(t, UTC))
            batch.append(Message(body=e.to_json(), key=key))
            if len(batch) == 1000:
                await broker.append("clicks", batch)
                batch = []
        if batch:
            await broker.append("clicks", batch)
    finally:
        await broker.close()


async def consume(url: str, n: int, kind: str) -> float:
    """Events/s from a cold start until the group has done all ``n``."""
    app = make_app(kind)
    name = "plain" if kind == "plain" else "counts"
    rt = Runtime(app, url)
    t0 = time.perf_counter()
    await rt.start()
    try:
        d = rt.functions[name].dispatcher
        assert isinstance(d, GroupDispatcher)
        while True:
            lag = await d.lag()
            if lag == 0:
                break
            await asyncio.sleep(0.02)
        return n / (time.perf_counter() - t0)
    finally:
        await rt.stop(5.0)


def run(n: int, repeats: int) -> list[tuple[float, float]]:
    out = []
    for r in range(repeats):
        with tempfile.TemporaryDirectory(prefix="swell-windows-") as tmp:
            url = f"sqlite:///{Path(tmp) / 'b.db'}"
            asyncio.run(append(url, n))
            plain = asyncio.run(consume(url, n, "plain"))
            window = asyncio.run(consume(url, n, "window"))
        print(f"  repeat {r + 1}: plain group {plain:,.0f} events/s, window {window:,.0f} "
              f"events/s, ratio {window / plain:.2f}", flush=True)
        out.append((plain, window))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    print(f"windows end to end | {machine()} | swell at {source_state()} | "
          f"{datetime.now(UTC):%Y-%m-%dT%H:%M}Z | {args.n:,} events")
    runs = run(args.n, args.repeats)
    ratio = statistics.median(w / p for p, w in runs)
    verdict = "PASS" if ratio >= 0.7 else "FAIL"
    print(f"{verdict}  window / plain consume, median of {len(runs)}: {ratio:.2f} (target >= 0.7)")
    sys.exit(0)


if __name__ == "__main__":
    main()
