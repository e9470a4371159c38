"""What a running handler may touch: one ``Context`` (``async def`` handlers) and one
``SyncContext`` (plain ``def`` handlers), both over a ``Backend`` that does their effects.

The backend is where the broker is. Inline, it is a ``LocalBackend`` made from the attempt's
``Invocation``; in a worker process (``swell.runtime.process``) it is a channel to the parent,
which serves each request with a ``LocalBackend`` of its own: one set of rules, in either mode.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from swell.brokers.producer import Producer
from swell.core.errors import AppError, InProgress
from swell.core.event import Event
from swell.patterns.idempotency import Busy, Done, IdempotencyStore, Once, Started, fingerprint

if TYPE_CHECKING:
    from swell.brokers.producer import Target

T = TypeVar("T")
log = logging.getLogger("swell.handler")

BLOCK_LEASE_S = 30.0
"""The lease of a ``ctx.idempotent`` block's record in a function without an idempotency key."""
BLOCK_TTL_S = 86400.0
"""How long a finished ``ctx.idempotent`` block is remembered."""

Begun = tuple[int, bool, Any]
"""A ``ctx.idempotent`` block begun: its token, whether it was done before, and its result."""


class Publisher(Protocol):
    """What sends a handler's events onward (a ``Producer``, a replay's sink)."""

    async def publish(self, target: Target, data: Any, *, delay_s: float = 0.0,
                      **attrs: Any) -> str: ...


class Invocation(msgspec.Struct, frozen=True):
    """What one attempt runs with, besides its delivery: when it must end (``deadline``, loop
    time), where it publishes, how it extends its lease, and where its ``ctx.idempotent`` blocks
    keep their records. ``key_state`` is shared with the function's idempotency key, if it has one
    (``ctx.skip_idempotency`` marks it), and ``lease_s`` is then the key's lease."""

    deadline: float | None
    publisher: Publisher
    extend: Callable[[float], Awaitable[bool]]
    store: IdempotencyStore
    lease_s: float = BLOCK_LEASE_S
    key_state: dict[str, Any] | None = None
    traceparent: str | None = None
    """With tracing on, the attempt's process span: what the handler publishes continues from it."""


class Backend(Protocol):
    """A Context's effects. ``wait`` runs one of them to its end from a plain ``def`` handler."""

    def publish(self, target: Target, data: Any, delay_s: float,
                attrs: dict[str, Any]) -> Awaitable[str]: ...

    def extend(self, seconds: float) -> Awaitable[bool]: ...

    def begin(self, key: str) -> Awaitable[Begun | None]:
        """Begin the block ``key``; ``None`` if another attempt holds it now."""

    def end(self, token: int, ok: bool, result: Any = None) -> Awaitable[None]:
        """End a block begun (not done before): done with ``result``, or failed (forgotten)."""

    def skip(self, reason: str, event_id: str) -> None: ...

    @property
    def producer(self) -> Producer:
        """The producer behind ``publish``, for swell's own patterns (a saga's runner) that need
        more of it; there is none in a worker process."""

    def wait(self, call: Awaitable[T]) -> T: ...


class ContextBase:
    """What ``Context`` and ``SyncContext`` share: all but ``publish``, ``extend`` and
    ``idempotent``, which are awaited in one and called in the other."""

    __slots__ = ("_backend", "_now", "attempt", "deadline", "event", "function")

    def __init__(self, *, event: Event[Any], attempt: int, deadline: float | None, function: str,
                 backend: Backend, now: Callable[[], float]) -> None:
        self.event = event
        #: 1 on the first try, 2 on the first retry, ...
        self.attempt = attempt
        #: the monotonic time (``loop.time()``) by which the handler must finish, if it has a timeout
        self.deadline = deadline
        self.function = function
        self._backend = backend
        self._now = now

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        return logging.LoggerAdapter(log, {"function": self.function, "event_id": self.event.id,
                                           "attempt": self.attempt})

    @property
    def remaining_s(self) -> float | None:
        """Seconds left before the handler's timeout, if it has one."""
        return None if self.deadline is None else self.deadline - self._now()

    def _publish(self, target: Target, data: Any, delay_s: float,
                 attrs: dict[str, Any]) -> Awaitable[str]:
        attrs.setdefault("correlationid", self.event.correlationid or self.event.id)
        attrs.setdefault("traceparent", self.event.traceparent)
        if "tracestate" in self.event.extensions:  # (the vendors' part of the trace context)
            attrs.setdefault("tracestate", self.event.extensions["tracestate"])
        return self._backend.publish(target, data, delay_s, attrs)

    @property
    def producer(self) -> Producer:
        """The producer this handler's events go out through, for swell's own patterns that need
        more than ``publish`` (a saga's runner); not in a worker process."""
        return self._backend.producer

    def skip_idempotency(self, reason: str) -> None:
        """Do not record this event's idempotency key as done (a later duplicate runs again):
        for a handler that decided its effect must be allowed again. The reason is logged."""
        self._backend.skip(reason, self.event.id)


class Context(ContextBase):
    """Given to a handler that asks for it: its event, attempt, deadline, logger, and ways to
    publish onward and to extend its lease.

    ``publish`` and ``extend`` are awaited in ``async def`` handlers; a plain ``def`` handler (which
    runs in a thread) gets a ``SyncContext``, whose ``publish`` and ``extend`` run when called.
    """

    __slots__ = ()

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
        return await self._backend.extend(seconds)

    def idempotent(self, key: str) -> AbstractAsyncContextManager[Once]:
        """A part of a handler done once per ``key`` (within this function)::

            async with ctx.idempotent(f"charge-{order.id}") as once:
                if not once.done:
                    once.result = await payments.charge(order)

        Another attempt holding the key now raises ``InProgress`` (the event comes back later,
        not counted as a failure); the block raising forgets the key, so a retry runs it."""
        return self._block(key)

    @asynccontextmanager
    async def _block(self, key: str) -> AsyncIterator[Once]:
        token, once = _opened(key, await self._backend.begin(key))
        if once.done:
            yield once
            return
        try:
            yield once
        except BaseException:
            await asyncio.shield(self._backend.end(token, False))
            raise
        await self._backend.end(token, True, once.result)


class SyncContext(ContextBase):
    """The Context of a plain ``def`` handler: ``publish``, ``extend`` and ``idempotent`` run
    when called and return their result (no ``await``)."""

    __slots__ = ()

    def publish(self, target: Target, data: Any, *, delay_s: float = 0.0, **attrs: Any) -> str:
        """See ``Context.publish``."""
        return self._backend.wait(self._publish(target, data, delay_s, attrs))

    def extend(self, seconds: float) -> bool:
        """See ``Context.extend``."""
        return self._backend.wait(self._backend.extend(seconds))

    @contextmanager
    def idempotent(self, key: str) -> Iterator[Once]:
        """``with ctx.idempotent(key) as once: if not once.done: ...`` (see ``Context``)."""
        token, once = _opened(key, self._backend.wait(self._backend.begin(key)))
        if once.done:
            yield once
            return
        try:
            yield once
        except BaseException:
            self._backend.wait(self._backend.end(token, False))
            raise
        self._backend.wait(self._backend.end(token, True, once.result))


def _opened(key: str, begun: Begun | None) -> tuple[int, Once]:
    """A block's token and ``Once``; ``InProgress`` if another attempt holds its key."""
    if begun is None:
        raise InProgress(key)
    token, done, result = begun
    return token, Once(done, result)


class LocalBackend:
    """The effects of one attempt's Context where the broker is: an inline handler's, and those a
    worker process asks its parent for. ``close`` forgets the blocks still open (the attempt
    ended inside one), so a retry runs them."""

    __slots__ = ("_attempt", "_function", "_inv", "_loop", "_open", "_tokens")

    def __init__(self, inv: Invocation, function: str, attempt: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._inv = inv
        self._function = function
        self._attempt = attempt
        self._loop = loop
        self._open: dict[int, tuple[str, Started, str]] = {}
        self._tokens = 0

    def publish(self, target: Target, data: Any, delay_s: float,
                attrs: dict[str, Any]) -> Coroutine[Any, Any, str]:
        if self._inv.traceparent is not None:  # tracing: a child of this attempt's span (whose
            attrs["traceparent"] = self._inv.traceparent  # tracestate is the event's, as given)
        return self._inv.publisher.publish(target, data, delay_s=delay_s, **attrs)

    def extend(self, seconds: float) -> Awaitable[bool]:
        return self._inv.extend(seconds)

    async def begin(self, key: str) -> Begun | None:
        scoped, print_ = f"block/{key}", fingerprint(key)
        begun = await self._inv.store.begin(scoped, print_, self._inv.lease_s)
        if isinstance(begun, Busy):
            return None
        if isinstance(begun, Done):
            return 0, True, begun.result
        self._tokens += 1
        self._open[self._tokens] = scoped, begun, print_
        return self._tokens, False, None

    async def end(self, token: int, ok: bool, result: Any = None) -> None:
        scoped, begun, print_ = self._open.pop(token)
        if ok:
            await self._inv.store.complete(scoped, begun, print_, result, BLOCK_TTL_S)
        else:
            await self._inv.store.abandon(scoped, begun)

    def skip(self, reason: str, event_id: str) -> None:
        logging.LoggerAdapter(log, {"function": self._function, "event_id": event_id,
                                    "attempt": self._attempt}).warning(
            "idempotency skipped: %s", reason)
        if self._inv.key_state is not None:
            self._inv.key_state["skipped"] = reason

    @property
    def producer(self) -> Producer:
        publisher = self._inv.publisher
        if not isinstance(publisher, Producer):
            raise AppError(f"{self._function}: this attempt publishes through "
                           f"{type(publisher).__name__}, not a Producer")
        return publisher

    def wait(self, call: Awaitable[T]) -> T:
        """Run ``call`` on the loop from a handler's thread, and wait for it."""
        async def run() -> T:
            return await call
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    async def close(self) -> None:
        while self._open:
            token = next(iter(self._open))
            await asyncio.shield(self.end(token, False))

    def context(self, event: Event[Any], deadline: float | None, is_async: bool
                ) -> Context | SyncContext:
        """A Context for ``event``'s handler over this backend."""
        kind = Context if is_async else SyncContext
        return kind(event=event, attempt=self._attempt, deadline=deadline, function=self._function,
                    backend=self, now=self._loop.time)


async def no_extend(seconds: float) -> bool:
    """The ``extend`` of an event whose lease is not its own (a consumer group's partition, renewed
    by the runtime; a replay's record): always held."""
    return True
