"""What a running handler may touch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from swell.brokers.base import Delivery
from swell.core.event import Event

if TYPE_CHECKING:
    from swell.runtime.producer import Producer

T = TypeVar("T")
log = logging.getLogger("swell.handler")


class Context:
    """Given to a handler that asks for it: its event, attempt, deadline, logger, and ways to
    publish onward and to extend its lease.

    ``publish`` and ``extend`` are awaited in ``async def`` handlers; a plain ``def`` handler (which
    runs in a thread) gets a ``SyncContext``, whose ``publish`` and ``extend`` run when called.
    """

    __slots__ = ("_delivery", "_extend", "_loop", "_producer", "attempt", "deadline", "event",
                 "function")

    def __init__(self, *, event: Event[Any], delivery: Delivery, function: str,
                 deadline: float | None, producer: Producer,
                 extend: Callable[[float], Coroutine[Any, Any, bool]]) -> None:
        self.event = event
        #: 1 on the first try, 2 on the first retry, ...
        self.attempt = delivery.receive_count
        #: the monotonic time (``loop.time()``) by which the handler must finish, if it has a timeout
        self.deadline = deadline
        self.function = function
        self._delivery = delivery
        self._producer = producer
        self._extend = extend
        self._loop = asyncio.get_running_loop()

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        return logging.LoggerAdapter(log, {"function": self.function, "event_id": self.event.id,
                                           "attempt": self.attempt})

    @property
    def remaining_s(self) -> float | None:
        """Seconds left before the handler's timeout, if it has one."""
        return None if self.deadline is None else self.deadline - self._loop.time()

    def _publish(self, target: str, data: Any, delay_s: float,
                 attrs: dict[str, Any]) -> Coroutine[Any, Any, str]:
        attrs.setdefault("correlationid", self.event.correlationid or self.event.id)
        attrs.setdefault("traceparent", self.event.traceparent)
        return self._producer.send(target, data, delay_s=delay_s, **attrs)

    async def publish(self, target: str, data: Any, *, delay_s: float = 0.0, **attrs: Any) -> str:
        """Send an event onward to a queue, or publish it to a topic (``subject=`` is its routing
        key, ``attributes=`` its extension attributes); the correlation id (and trace context)
        of this event go with it. Returns the new event's id."""
        return await self._publish(target, data, delay_s, attrs)

    async def extend(self, seconds: float) -> bool:
        """Hold this event's lease for ``seconds`` from now; ``False`` if the lease was lost."""
        return await self._extend(seconds)


class SyncContext(Context):
    """The Context of a plain ``def`` handler, which runs in a thread: ``publish`` and ``extend``
    run when called and return their result (no ``await``)."""

    __slots__ = ()

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def publish(self, target: str, data: Any, *, delay_s: float = 0.0,  # type: ignore[override]
                **attrs: Any) -> str:
        return self._wait(self._publish(target, data, delay_s, attrs))

    def extend(self, seconds: float) -> bool:  # type: ignore[override]
        return self._wait(self._extend(seconds))
