"""A small app served as ``swell run`` serves it (a Runtime and its HttpServer with the admin API,
on a free loopback port), for the admin API's tests."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from swell import App
from swell.brokers.base import Broker
from swell.brokers.memory import MemoryBroker
from swell.patterns.sagas.log import encode, new_log, queue_of
from swell.runtime.runtime import Runtime
from swell.web.admin import runtime_server
from swell.web.server import HttpServer, bind

TOKEN = "test-admin-token-3f9c1a"
LEGACY = "legacy"
"""A saga whose logs the tests write themselves: its queue is declared, nothing consumes it, so
its logs change only by the operators' overrides."""


def shop() -> App:
    app = App("shop")
    orders = app.queue("orders", max_receives=1)
    app.queue(queue_of(LEGACY))

    @app.function(orders, concurrency=2)
    async def charge(order: dict[str, Any]) -> None:
        if order.get("bad"):
            raise ValueError("declined")

    @app.function(app.stream("clicks", partitions=2).group("g"))
    async def count(click: dict[str, Any]) -> None:
        pass

    return app


async def legacy_saga(broker: Broker, saga_id: str) -> str:
    """A running saga of two steps, none run yet; its ref."""
    lg = new_log(LEGACY, saga_id, {"order": saga_id}, ["reserve", "charge"], time.time(), "test")
    await broker.kv.put(lg.key, encode(lg))
    return f"{LEGACY}/{saga_id}"


@asynccontextmanager
async def served(app: App | None = None, broker: Broker | str | None = None,
                 tick_s: float = 0.1) -> AsyncIterator[tuple[Runtime, HttpServer]]:
    rt = Runtime(app or shop(), MemoryBroker() if broker is None else broker, tick_s=tick_s)
    server = runtime_server(rt, bind("127.0.0.1", 0), TOKEN)
    await rt.start()
    try:
        await server.start()
        try:
            yield rt, server
        finally:
            await server.stop()
    finally:
        await rt.stop(0.5)
