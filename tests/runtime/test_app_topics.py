"""Topics in an app: functions triggered by subscriptions, publishing from handlers and from plain
code, each subscription at its own pace, and declaration errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from support.eventually import until
from swell import App, AppError, Context, Event, PatternError, PayloadError, Runtime
from swell.brokers.memory import MemoryBroker


def shop() -> tuple[App, dict[str, list[Any]]]:
    app = App("shop")
    orders = app.topic("orders")
    seen: dict[str, list[Any]] = {"billing": [], "eu": [], "audit": []}

    @app.function(orders.subscribe("billing", filter={"data": {"amount": [{"numeric": [">", 0]}]}}))
    async def bill(event: Event[dict[str, Any]]) -> None:
        seen["billing"].append((event.subject, event.data))

    @app.function(orders.subscribe("eu", subject="orders.eu.*"))
    async def eu(data: dict[str, Any], ctx: Context) -> None:
        seen["eu"].append(data)
        await ctx.publish("audit", {"seen": data["id"]})

    @app.function(app.queue("audit"))
    async def audit(data: dict[str, Any]) -> None:
        seen["audit"].append(data)

    return app, seen




async def test_functions_on_subscriptions_get_what_matches_them() -> None:
    app, seen = shop()
    async with Runtime(app, MemoryBroker()) as rt:
        await rt.publish("orders", {"id": 1, "amount": 5}, subject="orders.eu.created")
        await rt.publish("orders", {"id": 2, "amount": 0}, subject="orders.eu.created")
        await rt.publish("orders", {"id": 3, "amount": 7}, subject="orders.us.created")
        await until(lambda: len(seen["billing"]) == 2 and len(seen["eu"]) == 2 and len(seen["audit"]) == 2)
    assert sorted(d["id"] for _, d in seen["billing"]) == [1, 3]
    assert sorted(d["id"] for d in seen["eu"]) == [1, 2]
    assert sorted(d["seen"] for d in seen["audit"]) == [1, 2]


async def test_app_publish_works_outside_handlers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    app, seen = shop()
    try:  # no runtime yet: the app opens its own broker and declares its topics there
        await app.publish("orders", {"id": 1, "amount": 3}, subject="orders.eu.created", broker=url)
    finally:
        await app.close()
    async with Runtime(app, url):  # ... and a runtime then finds the event waiting
        await until(lambda: len(seen["billing"]) == 1 and len(seen["eu"]) == 1)
        # with a runtime of the app running, app.publish goes through it
        await app.publish("orders", {"id": 2, "amount": 4}, subject="orders.us.paid")
        await until(lambda: len(seen["billing"]) == 2)


async def test_extension_attributes_travel_and_can_be_filtered_on() -> None:
    app = App("attrs")
    got: list[Event[Any]] = []

    @app.function(app.topic("t").subscribe("eu", filter={"region": ["eu"]}))
    async def h(event: Event[Any]) -> None:
        got.append(event)

    async with Runtime(app, MemoryBroker()) as rt:
        await rt.publish("t", {"n": 1}, attributes={"region": "eu"})
        await rt.publish("t", {"n": 2}, attributes={"region": "us"})
        await until(lambda: len(got) == 1)
        await asyncio.sleep(0.05)
        with pytest.raises(PayloadError, match="'Region'"):
            await rt.publish("t", {"n": 3}, attributes={"Region": "eu"})
    assert [(e.data, e.extensions) for e in got] == [({"n": 1}, {"region": "eu"})]


async def test_a_slow_subscriber_does_not_hold_back_a_fast_one() -> None:
    app = App("pace")
    ticks = app.topic("ticks")
    fast_latency: list[float] = []
    slow_done: list[int] = []
    release = asyncio.Event()

    @app.function(ticks.subscribe("fast"), concurrency=4)
    async def fast(data: dict[str, float]) -> None:
        fast_latency.append(time.time() - data["at"])

    @app.function(ticks.subscribe("slow"), concurrency=1)
    async def slow(data: dict[str, float]) -> None:
        await release.wait()
        slow_done.append(int(data["n"]))

    n = 200
    async with Runtime(app, MemoryBroker()) as rt:
        for i in range(n):
            await rt.publish("ticks", {"n": i, "at": time.time()})
            await asyncio.sleep(0.002)
        await until(lambda: len(fast_latency) == n)  # all of them, while the slow one is stuck
        assert not slow_done
        backlog = (await rt.broker.stats("ticks.slow")).total
        release.set()
        await until(lambda: len(slow_done) == n)
    p99 = sorted(fast_latency)[int(0.99 * n)]
    print(f"\nfast p99 {p99 * 1000:.1f} ms while the slow one's backlog grew to {backlog}")
    assert backlog >= n - 2, "the slow subscriber was not held up at all"
    assert sorted(slow_done) == list(range(n))


def test_an_invalid_filter_is_an_error_when_declared() -> None:
    app = App("bad")
    t = app.topic("t")
    with pytest.raises(PatternError, match="numeric"):
        t.subscribe("s", filter={"data": {"x": [{"numeric": [">", "ten"]}]}})
    with pytest.raises(PatternError):
        t.subscribe("s", subject="a.>.b")
    with pytest.raises(PatternError):
        t.subscribe("s", filter="{not json")


def test_subscription_names_and_queue_clashes_are_app_errors() -> None:
    app = App("bad")
    t = app.topic("t")
    with pytest.raises(AppError):
        t.subscribe("a.b")
    t.subscribe("s")
    with pytest.raises(AppError):
        app.queue("t.s", max_receives=1)
    with pytest.raises(AppError):
        t.subscribe("s", subject="x")
    with pytest.raises(AppError):
        app.topic("t", retention="2d")
    with pytest.raises(AppError, match="topic already"):
        app.queue("t")
    app.queue("q")
    with pytest.raises(AppError, match="queue already"):
        app.topic("q")
