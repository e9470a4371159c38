"""What a running handler may touch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from swell.brokers.base import Delivery
from swell.core.errors import InProgress
from swell.core.event import Event
from swell.patterns.idempotency import Once

if TYPE_CHECKING:
    from swell.patterns.idempotency import IdempotencyStore
    from swell.runtime.producer import Producer, Target

T = TypeVar("T")
log = logging.getLogger("swell.handler")


class Context:
    """Given to a handler that asks for it: its event, attempt, deadline, logger, and ways to
    publish onward and to extend its lease.

    ``publish`` and ``extend`` are awaited in ``async def`` handlers; a plain ``def`` handler (which
    runs in a thread) gets a ``SyncContext``, whose ``publish`` and ``extend`` run when called.
    """

    __slots__ = ("_delivery", "_extend", "_idem", "_loop", "_producer", "attempt", "deadline",
                 "event", "function")

    def __init__(self, *, event: Event[Any], delivery: Delivery, function: str,
                 deadline: float | None, producer: Producer,
                 extend: Callable[[float], Coroutine[Any, Any, bool]],
                 idempotency: tuple[IdempotencyStore, float, dict[str, Any]] | None = None) -> None:
        self.event = event
        #: 1 on the first try, 2 on the first retry, ...
        self.attempt = delivery.receive_count
        #: the monotonic time (``loop.time()``) by which the handler must finish, if it has a timeout
        self.deadline = deadline
        self.function = function
        self._delivery = delivery
        self._producer = producer
        self._extend = extend
        self._idem = idempotency
        self._loop = asyncio.get_running_loop()

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        return logging.LoggerAdapter(log, {"function": self.function, "event_id": self.event.id,
                                           "attempt": self.attempt})

    @property
    def remaining_s(self) -> float | None:
        """Seconds left before the handler's timeout, if it has one."""
        return None if self.deadline is None else self.deadline - self._loop.time()

    def _publish(self, target: Target, data: Any, delay_s: float,
                 attrs: dict[str, Any]) -> Coroutine[Any, Any, str]:
        attrs.setdefault("correlationid", self.event.correlationid or self.event.id)
        attrs.setdefault("traceparent", self.event.traceparent)
        return self._producer.publish(target, data, delay_s=delay_s, **attrs)

    async def publish(self, target: Target, data: Any, *, delay_s: float = 0.0,
                      **attrs: Any) -> str:
        """Send an event onward: to a queue, a topic (``subject=`` is its routing key,
        ``attributes=`` its extension attributes) or a stream (``key=`` is its partition key; an
        event without one has its id as its partition key, so events spread over the
        partitions). ``target`` is the declared ``Queue``, ``Topic`` or ``Stream``, or its name.
        The correlation id (and trace context) of this event go with it. Returns the new
        event's id."""
        return await self._publish(target, data, delay_s, attrs)

    async def extend(self, seconds: float) -> bool:
        """Hold this event's lease for ``seconds`` from now; ``False`` if the lease was lost."""
        return await self._extend(seconds)

    def idempotent(self, key: str) -> AbstractAsyncContextManager[Once]:
        """A part of a handler done once per ``key`` (within this function)::

            async with ctx.idempotent(f"charge-{order.id}") as once:
                if not once.done:
                    once.result = await payments.charge(order)

        Another attempt holding the key now raises ``InProgress`` (the event comes back later,
        not counted as a failure); the block raising forgets the key, so a retry runs it."""
        return self._once(key)

    @asynccontextmanager
    async def _once(self, key: str) -> AsyncIterator[Once]:
        from swell.patterns.idempotency import Busy, Done, IdempotencyStore, fingerprint

        if self._idem is None:  # no function-level store: one for this function
            self._idem = (IdempotencyStore(self._producer.broker.kv, self.function,
                                           self._producer.clock.time), 30.0, {})
        store, lease_s, _ = self._idem
        scoped = f"block/{key}"
        print_ = fingerprint(key)
        begun = await store.begin(scoped, print_, lease_s)
        if isinstance(begun, Busy):
            raise InProgress(key)
        if isinstance(begun, Done):
            yield Once(True, begun.result)
            return
        once = Once(False)
        try:
            yield once
        except BaseException:
            await asyncio.shield(store.abandon(scoped, begun))
            raise
        await store.complete(scoped, begun, print_, once.result, 86400.0)

    def skip_idempotency(self, reason: str) -> None:
        """Do not record this event's idempotency key as done (a later duplicate runs again):
        for a handler that decided its effect must be allowed again. The reason is logged."""
        self.logger.warning("idempotency skipped: %s", reason)
        if self._idem is not None:
            self._idem[2]["skipped"] = reason


class SyncContext(Context):
    """The Context of a plain ``def`` handler, which runs in a thread: ``publish`` and ``extend``
    run when called and return their result (no ``await``)."""

    __slots__ = ()

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def publish(self, target: Target, data: Any, *, delay_s: float = 0.0,  # type: ignore[override]
                **attrs: Any) -> str:
        return self._wait(self._publish(target, data, delay_s, attrs))

    def extend(self, seconds: float) -> bool:  # type: ignore[override]
        return self._wait(self._extend(seconds))

    @contextmanager
    def idempotent(self, key: str) -> Iterator[Once]:  # type: ignore[override]
        """``with ctx.idempotent(key) as once: if not once.done: ...`` (see ``Context``)."""
        manager = self._once(key)
        once = self._wait(manager.__aenter__())
        try:
            yield once
        except BaseException as exc:
            if not self._wait(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self._wait(manager.__aexit__(None, None, None))
