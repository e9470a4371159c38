"""Sending from outside a running app: ``async with swell.Client(app, broker=...) as client:
await client.publish("orders", {...})``.

A ``Client`` opens the broker (a URL, ``SWELL_BROKER`` or the embedded default; or a ``Broker``
given to it, which it leaves open), declares on it what the app declares, and publishes through a
``Producer``. ``app.publish`` (and a saga's ``start`` and ``get``) are thin shims over
``producer_for``: the running Runtime of the app in this process if there is one, else a client of
the app's own, opened once and closed by ``await app.close()``. The App itself holds no broker.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from swell.brokers.producer import Producer, Target

if TYPE_CHECKING:
    from swell.brokers.base import Broker
    from swell.runtime.app import App

__all__ = ["Client"]

#: the producer of each app's running Runtime in this process (``Runtime.start`` binds it)
_running: weakref.WeakKeyDictionary[App, Producer] = weakref.WeakKeyDictionary()
#: the client ``app.publish`` opened for an app with no Runtime running here
_own: weakref.WeakKeyDictionary[App, Client] = weakref.WeakKeyDictionary()


class Client:
    """Publishes an app's events from anywhere (a script, a web handler, a test)."""

    def __init__(self, app: App, *, broker: str | Broker | None = None) -> None:
        self.app = app
        self._broker = broker
        self._producer: Producer | None = None
        self._owned: Broker | None = None

    async def open(self) -> Client:
        """Open the broker and declare the app on it (``async with`` does this)."""
        if self._producer is not None:
            return self
        from swell.brokers.url import open_broker
        from swell.runtime.app import declare

        if self._broker is None or isinstance(self._broker, str):
            broker = owned = open_broker(self._broker)
        else:
            broker, owned = self._broker, None
        try:
            await declare(self.app, broker)
        except BaseException:
            if owned is not None:
                await owned.close()
            raise
        self._owned = owned
        self._producer = Producer(broker, source=f"/swell/{self.app.name}",
                                  topics=set(self.app.topics), streams=set(self.app.streams))
        return self

    async def close(self) -> None:
        """Close the broker this client opened (one it was given is left open)."""
        owned, self._owned, self._producer = self._owned, None, None
        if owned is not None:
            await owned.close()

    async def __aenter__(self) -> Client:
        return await self.open()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("the client is not open: use 'async with Client(app) as client'")
        return self._producer

    async def publish(self, target: Target, data: Any, *, subject: str | None = None,
                      key: str | None = None, attributes: Mapping[str, Any] | None = None,
                      **attrs: Any) -> str:
        """Put one event where ``target`` (a declared queue, topic or stream, or its name) says:
        sent to a queue, published to a topic (``subject`` is its routing key) or appended to a
        stream (``key`` is its partition key; without one, the event's id). Returns its id."""
        return await self.producer.publish(target, data, subject=subject, key=key,
                                           attributes=attributes, **attrs)


def bind(app: App, producer: Producer) -> None:
    """``app.publish`` goes through ``producer`` (a Runtime's) from now on."""
    _running[app] = producer


def unbind(app: App, producer: Producer) -> None:
    if _running.get(app) is producer:
        del _running[app]


async def producer_for(app: App, broker: str | None = None) -> Producer:
    """The producer that ``app.publish`` goes through: its running Runtime's, else its own
    client's (opened on ``broker``, ``SWELL_BROKER`` or the embedded default)."""
    producer = _running.get(app)
    if producer is not None:
        return producer
    client = _own.get(app)
    if client is None:
        client = await Client(app, broker=broker).open()
        _own[app] = client
    return client.producer


async def close_own(app: App) -> None:
    """Close the client ``app.publish`` opened (a running Runtime's broker is left to it)."""
    client = _own.pop(app, None)
    if client is not None:
        await client.close()
