"""The Dispatcher's Executor for ``mode="process"``: units are instances of a ``ProcessPool``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from swell.brokers.base import Delivery
from swell.brokers.producer import Producer
from swell.core import logs
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.errors import PayloadError
from swell.core.event import Event
from swell.core.outcome import Outcome
from swell.runtime.app import Function
from swell.runtime.context import Invocation
from swell.runtime.cost import CountingBackend, Usage
from swell.runtime.process.pool import ProcessPool
from swell.runtime.process.warm import locate


class ProcessExecutor:
    """Runs each event in an instance of the function's pool. What its handler's Context asks
    for is served here by a ``LocalBackend`` of the attempt's ``Invocation``, as inline.

    Set ``on_change`` (e.g. to the Dispatcher's ``poke``) to hear when an instance starts, becomes
    ready or ends.
    """

    def __init__(self, fn: Function, producer: Producer, max_units: int, min_instances: int,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        async def publish(queue: str, data: Any, attrs: dict[str, Any]) -> str:
            return await producer.send(queue, data, **attrs)  # a run given no backend's (none here)

        self.fn = fn
        self.starting = self.cold_starts = 0
        self.on_change: Callable[[], None] | None = None
        self.usage = Usage(clock.monotonic)  # each instance from when it is asked for until reaped
        self.pool = ProcessPool(locate(fn), fn.name, timeout_s=fn.timeout_s,
                                min_instances=min_instances, max_instances=max(1, max_units),
                                on_publish=publish, on_change=self._changed)

    def _changed(self) -> None:
        self.starting, self.cold_starts = self.pool.starting, self.pool.cold_starts
        alive = len(self.pool.instances())  # the pool calls this as each is added and removed
        if alive != self.usage.units:
            self.usage.held(alive)
        if self.on_change is not None:
            self.on_change()

    def ready(self) -> int:
        return self.pool.ready

    async def scale_to(self, units: int) -> None:
        await self.pool.scale_to(units)

    async def execute(self, d: Delivery, inv: Invocation) -> Outcome:
        if logs.NAMED:  # (the worker decodes the event; for the lines logged here, so does this)
            with suppress(PayloadError):
                logs.ATTEMPT.set((self.fn.name, d.receive_count, Event.from_json(d.body)))
        backend = CountingBackend(self.usage, inv, self.fn.name, d.receive_count,
                                  asyncio.get_running_loop())
        try:
            return await self.pool.run(d.body, d.receive_count, backend=backend)
        finally:
            await backend.close()  # blocks the worker left open (it died in one) are forgotten

    async def stop(self) -> None:
        # the Dispatcher has waited out its grace and cancelled what was left (killing those)
        await self.pool.stop(grace_s=0.0)
