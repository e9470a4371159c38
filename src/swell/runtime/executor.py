"""Executors run one event's handler and say how it went; the Dispatcher settles by the outcome.

``InlineExecutor`` runs async handlers as tasks on the runtime's loop and sync ones in threads;
``ProcessExecutor`` (process.py) runs them in worker processes forked from a warm parent.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal, Protocol

import msgspec
import pydantic

from swell.brokers.base import Delivery
from swell.core.errors import IdempotencyConflict, PayloadError, SwellError, Throttled
from swell.core.event import Event
from swell.idempotency import Busy, Done, Idempotency, IdempotencyStore, fingerprint
from swell.runtime.app import Function
from swell.runtime.context import Context, SyncContext
from swell.runtime.producer import Producer

log = logging.getLogger("swell.executor")

Kind = Literal["ok", "failed", "invalid", "malformed", "throttled", "timeout", "crashed", "duplicate"]


class Outcome(msgspec.Struct, frozen=True):
    """How one attempt went. ``service_s`` is the handler's own time. (A Struct, not a frozen
    dataclass: one is made per event, and a Struct is several times quicker to make.)"""

    kind: Kind
    error: str | None = None
    retry_after_s: float | None = None
    service_s: float = 0.0
    result: Any = None
    """What the handler returned (inline handlers), kept for an idempotency key."""


def describe(exc: BaseException) -> str:
    """An exception on one line (or a few, for chained messages): type and message."""
    return "".join(traceback.format_exception_only(exc)).strip()


def describe_validation(exc: pydantic.ValidationError) -> str:
    """A validation error on one line per field, without pydantic's documentation links."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
                     for e in exc.errors(include_url=False))


def bind(fn: Function, d: Delivery, context: type[Context], extras: dict[str, Any]
         ) -> tuple[Event[Any], dict[str, Any]] | Outcome:
    """Decode and validate an event for ``fn``: its call arguments, or the outcome that ends it."""
    try:
        event = Event.from_json(d.body)
        ctx = None
        if fn.handler.context is not None:  # built only for a handler that takes one
            ctx = context(event=event, delivery=d, function=fn.name, **extras)
        return event, fn.handler.arguments(event, ctx)
    except PayloadError as exc:
        return Outcome("malformed", str(exc))
    except pydantic.ValidationError as exc:
        return Outcome("invalid", describe_validation(exc))


def outcome_of(exc: Exception, timeout_s: float | None, timed_out: bool, service_s: float) -> Outcome:
    """The outcome of a handler that raised."""
    if isinstance(exc, Throttled):
        return Outcome("throttled", describe(exc), exc.retry_after_s, service_s)
    if timed_out:
        return Outcome("timeout", f"timed out after {timeout_s:g}s", None, service_s)
    return Outcome("failed", describe(exc), None, service_s)


async def once(function: str, idem: Idempotency, store: IdempotencyStore, d: Delivery, lease_s: float,
               execute: Callable[[dict[str, Any]], Awaitable[Outcome]]) -> Outcome:
    """Run ``execute`` under the event's idempotency key (see ``swell.idempotency``): a key done
    before is a ``duplicate``, one in progress elsewhere (or a store that fails: fail closed) is
    ``throttled``, a key reused for other content is ``invalid``; afterwards the key is completed
    with the handler's result, or cleared so a retry can run. ``execute`` gets the state the
    handler's Context shares with this (``skip_idempotency`` marks it)."""
    try:
        event = Event.from_json(d.body)
        key, print_ = idem.key_of(event), fingerprint(event.data)
    except PayloadError as exc:
        return Outcome("malformed", str(exc))
    except IdempotencyConflict as exc:
        return Outcome("invalid", str(exc))
    except Exception as exc:  # the user's key function raised
        return Outcome("failed", f"idempotency key: {describe(exc)}")
    try:
        begun = await store.begin(key, print_, lease_s)
    except IdempotencyConflict as exc:
        return Outcome("invalid", str(exc))
    except SwellError as exc:  # fail closed: the handler does not run without its record
        return Outcome("throttled", f"idempotency store unavailable: {exc}", 1.0)
    if isinstance(begun, Done):
        return Outcome("duplicate")
    if isinstance(begun, Busy):
        return Outcome("throttled", f"idempotency key {key!r} is in progress elsewhere", 1.0)
    state: dict[str, Any] = {}
    out = await execute(state)
    try:
        if out.kind == "ok" and "skipped" not in state:
            await store.complete(key, begun, print_, out.result, idem.ttl_s)
        else:
            await store.abandon(key, begun)
    except SwellError as exc:
        log.warning("%s: idempotency key %r not recorded: %s", function, key, exc)
    return out


class Executor(Protocol):
    """Where handlers run. Units are async slots (inline) or instances (process)."""

    on_change: Callable[[], None] | None
    """Called when units start, become ready or end (the Dispatcher looks again)."""

    @property
    def starting(self) -> int:
        """Units cold-starting."""

    @property
    def cold_starts(self) -> int:
        """Units started so far."""

    def ready(self) -> int:
        """Units able to take an event now or soon (idle or busy), not counting cold ones."""

    async def scale_to(self, units: int) -> None: ...

    async def execute(self, d: Delivery, extras: dict[str, Any]) -> Outcome: ...

    async def stop(self) -> None: ...


class InlineExecutor:
    """Async handlers on the loop; sync handlers in a thread pool. Units cost nothing to start."""

    starting = 0
    cold_starts = 0
    on_change: Callable[[], None] | None = None  # inline units are ready at once

    def __init__(self, fn: Function, producer: Producer, max_units: int) -> None:
        self.fn = fn
        self.producer = producer
        self._units = 0
        self._threads = None if fn.handler.is_async else ThreadPoolExecutor(
            max_units, thread_name_prefix=f"swell-{fn.name}")
        self._context = Context if fn.handler.is_async else SyncContext
        self._stuck = 0  # threads still running handlers that timed out

    def ready(self) -> int:
        # a thread cannot be stopped: a timed-out one keeps its unit until it returns
        return max(0, self._units - self._stuck)

    def _unstick(self, _: object) -> None:
        self._stuck -= 1

    async def scale_to(self, units: int) -> None:
        self._units = units

    async def execute(self, d: Delivery, extras: dict[str, Any]) -> Outcome:
        bound = bind(self.fn, d, self._context, extras)
        if isinstance(bound, Outcome):
            return bound
        _, kwargs = bound
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = extras.get("deadline")
        thread = None
        if self._threads is None:
            call: Any = self.fn.handler.fn(**kwargs)
        else:
            thread = loop.run_in_executor(self._threads, partial(self.fn.handler.fn, **kwargs))
            call = asyncio.shield(thread)
        try:
            if deadline is None:
                result = await call
            else:
                async with asyncio.timeout_at(deadline):
                    result = await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            timed_out = (isinstance(exc, TimeoutError) and deadline is not None
                         and loop.time() >= deadline)
            if thread is not None and not thread.done():
                self._stuck += 1
                thread.add_done_callback(self._unstick)
            return outcome_of(exc, self.fn.timeout_s, timed_out, loop.time() - started)
        return Outcome("ok", service_s=loop.time() - started, result=result)

    async def stop(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
