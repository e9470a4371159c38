"""The Runtime: declares an app's queues on a broker and runs a Dispatcher per function."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import TracebackType
from typing import Any

from swell.brokers.base import Broker
from swell.brokers.url import open_broker
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.runtime.app import App
from swell.runtime.dispatcher import Dispatcher
from swell.runtime.producer import Producer

log = logging.getLogger("swell.runtime")

DEFAULT_GRACE_S = 30.0


class Runtime:
    """Runs an app. ``async with Runtime(app, "sqlite:///...") as rt: ...`` or ``await rt.serve()``.

    ``broker`` is a URL (default: ``SWELL_BROKER`` or the embedded SQLite file) or a Broker.
    """

    def __init__(self, app: App, broker: Broker | str | None = None, *,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.app = app
        self.clock = clock
        self._owns_broker = not isinstance(broker, Broker)
        self.broker: Broker = broker if isinstance(broker, Broker) else open_broker(broker,
                                                                                   clock=clock)
        self.producer = Producer(self.broker, source=f"/swell/{app.name}", clock=clock)
        self.dispatchers: dict[str, Dispatcher] = {}
        self._stop = asyncio.Event()

    async def declare(self) -> None:
        """Create (or update) every queue the app declares."""
        for q in self.app.queues.values():
            await self.broker.declare_queue(q.spec)

    async def start(self) -> None:
        await self.declare()
        for fn in self.app.functions.values():
            spec = fn.queue.spec
            d = Dispatcher(fn, self.broker, self.producer, self.clock, spec.max_receives,
                           spec.visibility_timeout_s)
            self.dispatchers[fn.name] = d
            d.start()
        log.info("running %d function(s) of %r", len(self.dispatchers), self.app.name)

    async def stop(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Graceful stop: no new leases, in-flight work finishes within ``grace_s``, the rest is
        released so another process gets it at once."""
        await asyncio.gather(*(d.stop(grace_s) for d in self.dispatchers.values()))
        self.dispatchers.clear()
        if self._owns_broker:
            await self.broker.close()

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Run until SIGINT or SIGTERM (or ``request_stop``), then stop gracefully; a second
        signal cuts the grace period short."""
        loop = asyncio.get_running_loop()
        hurry = asyncio.Event()

        def on_signal() -> None:
            (hurry if self._stop.is_set() else self._stop).set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await self.start()
            await self._stop.wait()
            log.info("stopping: letting in-flight work finish (grace %gs)", grace_s)
            stopper = asyncio.create_task(self.stop(grace_s))
            hurried = asyncio.create_task(hurry.wait())
            await asyncio.wait((stopper, hurried), return_when=asyncio.FIRST_COMPLETED)
            if not stopper.done():
                # Ctrl-C again: give in-flight work no more time
                for d in self.dispatchers.values():
                    d.hurry()
                await stopper
            hurried.cancel()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def send(self, queue: str, data: Any, *, delay_s: float = 0.0, **attrs: Any) -> str:
        """Send one event to ``queue`` (see ``Producer.event`` for the attributes)."""
        return await self.producer.send(queue, data, delay_s=delay_s, **attrs)

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
