"""``swell replay --sink``: with partitions (and slices) replayed at once, what each record's handling
publishes goes into the staging topic once, under ids of that record alone; the same replay run
again stores nothing twice, and its summary counts what it suppressed honestly. On SQLite and NATS."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from swell import App, Broker, Context, Message, Producer
from swell.brokers.nats import NatsBroker
from swell.brokers.sqlite import SqliteBroker
from swell.runtime.app import declare
from swell.runtime.replay import Replay

N = 240
PARTITIONS = 4


def make_app() -> App:
    app = App("replays")
    clicks = app.stream("clicks", partitions=PARTITIONS)
    app.topic("out").subscribe("all")
    app.topic("staging").subscribe("all")

    @app.function(clicks.group("g"), concurrency=4)
    async def enrich(data: dict[str, Any], ctx: Context) -> None:
        # two publishes per record, with waits that let the other partitions' records in between
        await asyncio.sleep(0.001 * (data["i"] % 3))
        await ctx.publish("out", {"i": data["i"], "part": 1})
        await asyncio.sleep(0.001 * (data["i"] % 2))
        await ctx.publish("out", {"i": data["i"], "part": 2})

    return app


@pytest.fixture(params=["sqlite", "nats"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    b: Broker
    if request.param == "sqlite":
        b = SqliteBroker(str(tmp_path / "s.db"))
    else:
        b = NatsBroker(request.getfixturevalue("nats_server"),
                       namespace=f"t{uuid.uuid4().hex[:12]}")
    yield b
    await b.close()


async def staged(broker: Broker) -> Counter[tuple[int, int]]:
    """What the staging topic's subscription holds, by (record, publish)."""
    got = await broker.peek("staging.all", 10 * N)
    assert len(got) == (await broker.stats("staging.all")).total
    return Counter((e["data"]["i"], e["data"]["part"]) for e in (json.loads(d.body) for d in got))


async def replay(app: App, broker: Broker, t_from: float, t_to: float, *,
                 restart: bool = False) -> tuple[int, int, int]:
    job = Replay(app, broker, "clicks", "g", f"{t_from:.3f}", f"{t_to:.3f}", 0.5, 3, "staging",
                 now=time.time())
    await job.restore(restart)
    plan = await job.plan()
    results = await asyncio.wait_for(job.run(plan, lambda n: None), 60)
    assert all(r.done for r in results)
    return (sum(r.events for r in results), sum(r.failures for r in results),
            sum(r.duplicates for r in results))


async def test_a_replay_run_again_stages_each_output_once_with_honest_counts(broker: Broker) -> None:
    app = make_app()
    await declare(app, broker)
    producer = Producer(broker, source="/t")
    t_from = time.time() - 1
    for start in range(0, N, N // 4):  # in four bursts: records fall into more than one slice
        await broker.append("clicks", [
            Message(body=producer.event("clicks", {"i": i}, key=f"k{i % 16}").to_json(),
                    key=f"k{i % 16}") for i in range(start, start + N // 4)])
        await asyncio.sleep(0.3)
    t_to = time.time() + 1
    want = Counter({(i, part): 1 for i in range(N) for part in (1, 2)})

    first = await replay(app, broker, t_from, t_to)
    after_first = await staged(broker)
    resumed = await replay(app, broker, t_from, t_to)  # done already: nothing to do
    again = await replay(app, broker, t_from, t_to, restart=True)
    once_more = await replay(app, broker, t_from, t_to, restart=True)
    after_all = await staged(broker)

    assert after_first == want, "a first replay staged an output twice, or lost one"
    assert after_all == want, "a replay run again staged an output twice"
    assert first == (N, 0, 0)
    assert resumed == (0, 0, 0)
    assert again == (N, 0, 2 * N) and once_more == (N, 0, 2 * N)
    assert (await broker.stats("out.all")).total == 0, "a replay wrote to the live output"
