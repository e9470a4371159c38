"""``swell.Client``: sending from outside a running app; the App itself holds no broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from swell import App, Client, Event, Runtime
from swell.brokers.base import Broker
from swell.brokers.memory import MemoryBroker
from swell.brokers.producer import Producer
from swell.runtime.client import producer_for


def shop() -> App:
    app = App("shop")
    app.queue("orders")
    app.topic("news").subscribe("all")
    return app


def holds_no_broker(app: App) -> bool:
    return not any(isinstance(v, Broker | Producer) for v in vars(app).values())


async def test_a_client_declares_the_app_and_publishes_on_a_broker_it_is_given() -> None:
    app, broker = shop(), MemoryBroker()
    async with Client(app, broker=broker) as client:
        sent = await client.publish("orders", {"id": "o-1"})
        await client.publish("news", {"n": 1}, subject="news.a")
    got = await broker.receive("orders", 10)
    assert [Event.from_json(d.body).id for d in got] == [sent]
    assert len(await broker.receive("news.all", 10)) == 1
    assert (await broker.stats("orders")).in_flight == 1  # the broker it was given stays open
    assert holds_no_broker(app)


async def test_a_client_opens_and_closes_a_broker_of_its_own(tmp_path: Path) -> None:
    app = shop()
    url = f"sqlite:///{tmp_path / 'swell.db'}"
    async with Client(app, broker=url) as client:
        await client.publish("orders", {"id": "o-1"})
        assert await client.producer.broker.stats("orders") is not None
    async with Runtime(app, url) as rt:
        assert (await rt.broker.stats("orders")).depth == 1  # what it sent was stored


async def test_a_client_not_opened_says_how_to_open_it() -> None:
    with pytest.raises(RuntimeError, match="async with Client"):
        await Client(shop()).publish("orders", {})


async def test_app_publish_is_a_shim_over_the_running_runtime_or_a_client(tmp_path: Path) -> None:
    app = shop()
    url = f"sqlite:///{tmp_path / 'swell.db'}"
    await app.publish("orders", {"id": "o-1"}, broker=url)  # no runtime: the app's own client
    own = await producer_for(app)
    assert holds_no_broker(app)
    await app.close()
    async with Runtime(app, url) as rt:
        assert await producer_for(app) is rt.producer  # a running runtime: through it
        await app.publish("orders", {"id": "o-2"})
        assert (await rt.broker.stats("orders")).depth == 2
    assert await producer_for(app, url) is not own  # a new client once the runtime stopped
    await app.close()
