"""What a running handler may touch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from swell.brokers.base import Delivery
from swell.core.event import Event

if TYPE_CHECKING:
    from swell.runtime.producer import Producer

T = TypeVar("T")
log = logging.getLogger("swell.handler")


class _Done(Generic[T]):
    """An awaitable that is already finished: what ``publish`` returns inside a sync handler."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, T]:
        return self.value
        yield  # pragma: no cover - makes this a generator


class Context:
    """Given to a handler that asks for it: its event, attempt, deadline, logger, and ways to
    publish onward and to extend its lease.

    ``publish`` and ``extend`` are awaited in ``async def`` handlers; in a plain ``def`` handler
    (which runs in a thread) they run at once when called, and awaiting them is not needed.
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

    def publish(self, queue: str, data: Any, *, delay_s: float = 0.0, **attrs: Any) -> Awaitable[str]:
        """Send an event onward; the correlation id (and trace context) of this event go with it."""
        attrs.setdefault("correlationid", self.event.correlationid or self.event.id)
        attrs.setdefault("traceparent", self.event.traceparent)
        return self._maybe_sync(self._producer.send(queue, data, delay_s=delay_s, **attrs))

    def extend(self, seconds: float) -> Awaitable[bool]:
        """Hold this event's lease for ``seconds`` from now; ``False`` if the lease was lost."""
        return self._maybe_sync(self._extend(seconds))

    def _maybe_sync(self, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        if _in_loop(self._loop):
            return coro
        return _Done(asyncio.run_coroutine_threadsafe(coro, self._loop).result())


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
