"""Executors run one event's handler and say how it went; the Dispatcher settles by the outcome.

``InlineExecutor`` runs async handlers as tasks on the runtime's loop and sync ones in threads;
``ProcessExecutor`` (process.py) runs them in worker processes forked from a warm parent.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from functools import partial
from types import CoroutineType
from typing import Any, Protocol

import pydantic

from swell.brokers.base import Delivery
from swell.brokers.producer import Producer
from swell.core import logs
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.describe import describe, describe_validation
from swell.core.errors import IdempotencyConflict, PayloadError, SwellError
from swell.core.event import Event
from swell.core.outcome import Kind, Outcome, outcome_of
from swell.patterns.idempotency import Busy, Done, Idempotency, IdempotencyStore, fingerprint
from swell.runtime.app import Function
from swell.runtime.context import ContextBase, Invocation
from swell.runtime.cost import CountingBackend, Usage

log = logging.getLogger("swell.executor")

__all__ = ["Executor", "InlineExecutor", "Invocation", "Kind", "NotRun", "Outcome", "bind",
           "check_result", "describe", "describe_validation", "log_failure", "once", "outcome_of"]


def bind(fn: Function, body: bytes, context: Callable[[Event[Any]], ContextBase]
         ) -> tuple[Event[Any], dict[str, Any]] | Outcome:
    """Decode and validate an event for ``fn``: its call arguments, or the outcome that ends it.
    Whatever goes wrong here is the event's fault, never the runtime's: anything raised while
    decoding makes it ``malformed``, while validating ``invalid``; either is dead-lettered at once.
    ``context(event)`` makes the handler's Context (called only for a handler that takes one)."""
    try:
        event = Event.from_json(body)
    except PayloadError as exc:
        return Outcome("malformed", str(exc))
    except Exception as exc:  # a body built to break the decoder: it must not break the runtime
        return Outcome("malformed", f"cannot decode the event: {describe(exc)}")
    try:
        ctx = None if fn.handler.context is None else context(event)
        return event, fn.handler.arguments(event, ctx)
    except pydantic.ValidationError as exc:
        return Outcome("invalid", describe_validation(exc))
    except PayloadError as exc:
        return Outcome("malformed", str(exc))
    except Exception as exc:  # a validator that raised something else (RecursionError, ...)
        return Outcome("invalid", f"cannot validate the payload: {describe(exc)}")


class NotRun(Exception):
    """A handler's call gave back something that is not its work done (a coroutine that nobody
    awaits, a generator): the event must not be acked as if it had run."""


def check_result(fn: Function, value: Any) -> Any:
    """``value``, the result of a handler called without ``await``; ``NotRun`` if it is a
    coroutine or other awaitable (closed, so Python does not warn it was never awaited) or a
    generator."""
    if not (inspect.isawaitable(value) or inspect.isgenerator(value) or inspect.isasyncgen(value)):
        return value
    if inspect.iscoroutine(value) or inspect.isgenerator(value):
        value.close()
    raise NotRun(f"handler {fn.name!r} returned a {type(value).__name__} instead of running: make it an "
                 "`async def` that swell can see (a decorator around it should use "
                 "functools.wraps, or be `async def` itself and await it)")


def _call_sync(fn: Function, kwargs: dict[str, Any]) -> Any:
    return check_result(fn, fn.handler.fn(**kwargs))


def _no_context(event: Event[Any]) -> ContextBase:
    raise AssertionError("a Context made for a handler that takes none")


async def _given(value: Any) -> Any:
    return value


def log_failure(fn: str, event_id: str, attempt: int, exc: BaseException | str) -> None:
    """The one log record of a handler's failed attempt, with its traceback (an exception, or its
    text from a worker process)."""
    if isinstance(exc, NotRun):
        log.error("%s: event %s, attempt %d: %s", fn, event_id, attempt, exc)
    elif isinstance(exc, str):
        log.warning("%s: event %s, attempt %d failed:\n%s", fn, event_id, attempt, exc.rstrip())
    else:
        log.warning("%s: event %s, attempt %d failed", fn, event_id, attempt, exc_info=exc)


async def once(function: str, idem: Idempotency, store: IdempotencyStore, d: Delivery, lease_s: float,
               execute: Callable[[dict[str, Any]], Awaitable[Outcome]]) -> Outcome:
    """Run ``execute`` under the event's idempotency key (see ``swell.patterns.idempotency``): a key done
    before is a ``duplicate``, one in progress elsewhere (or a store that fails: fail closed) is
    ``throttled``, a key reused for other content is ``invalid``; afterwards the key is completed
    with the handler's result, or cleared so a retry can run. ``execute`` gets the state the
    handler's Context shares with this (``skip_idempotency`` marks it)."""
    try:
        event = Event.from_json(d.body)
        print_ = fingerprint(event.data)
    except PayloadError as exc:
        return Outcome("malformed", str(exc))
    except Exception as exc:  # a body built to break the decoder (or the fingerprint)
        return Outcome("malformed", f"cannot decode the event: {describe(exc)}")
    try:
        key = idem.key_of(event)
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
    usage: Usage
    """The unit-seconds it has held (what its cost is priced from)."""

    @property
    def starting(self) -> int:
        """Units cold-starting."""

    @property
    def cold_starts(self) -> int:
        """Units started so far."""

    def ready(self) -> int:
        """Units able to take an event now or soon (idle or busy), not counting cold ones."""

    async def scale_to(self, units: int) -> None: ...

    async def execute(self, d: Delivery, inv: Invocation) -> Outcome: ...

    async def stop(self) -> None: ...


class InlineExecutor:
    """Async handlers on the loop; sync handlers in a thread pool. Units cost nothing to start."""

    starting = 0
    cold_starts = 0
    on_change: Callable[[], None] | None = None  # inline units are ready at once

    def __init__(self, fn: Function, producer: Producer, max_units: int,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.fn = fn
        self.producer = producer
        self._units = 0
        self.usage = Usage(clock.monotonic)  # a unit is held from when it is scaled to until away
        self._threads = None if fn.handler.is_async else ThreadPoolExecutor(
            max_units, thread_name_prefix=f"swell-{fn.name}")
        self._stuck = 0  # threads still running handlers that timed out

    def ready(self) -> int:
        # a thread cannot be stopped: a timed-out one keeps its unit until it returns
        return max(0, self._units - self._stuck)

    def _unstick(self, _: object) -> None:
        self._stuck -= 1

    async def scale_to(self, units: int) -> None:
        self._units = units
        self.usage.held(units)

    async def execute(self, d: Delivery, inv: Invocation) -> Outcome:
        loop = asyncio.get_running_loop()
        deadline = inv.deadline
        handler = self.fn.handler
        # (a Context, and so its backend, only for a handler that takes one)
        make = _no_context if handler.context is None else partial(
            CountingBackend(self.usage, inv, self.fn.name, d.receive_count, loop).context,
            deadline=deadline, is_async=handler.is_async)
        bound = bind(self.fn, d.body, make)
        if isinstance(bound, Outcome):
            if logs.NAMED:
                logs.ATTEMPT.set(None)  # (no event to name; not the one before it either)
            return bound
        event, kwargs = bound
        if logs.NAMED:  # (the lines logged about this attempt, its settling too, name it)
            logs.ATTEMPT.set((self.fn.name, d.receive_count, event))
        started = loop.time()
        thread = None
        try:
            if self._threads is None:
                call: Any = self.fn.handler.fn(**kwargs)
                if type(call) is not CoroutineType and not inspect.isawaitable(call):
                    call = _given(check_result(self.fn, call))  # a decorator gave a value
            else:
                # in the attempt's context: its log fields, its trace span
                thread = loop.run_in_executor(self._threads, copy_context().run, _call_sync, self.fn,
                                              kwargs)
                call = asyncio.shield(thread)
            if deadline is None:
                result = await call
            else:
                async with asyncio.timeout_at(deadline):
                    result = await call
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # (a handler's SystemExit or KeyboardInterrupt too: out of here it would stop the loop)
            timed_out = (isinstance(exc, TimeoutError) and deadline is not None
                         and loop.time() >= deadline)
            if thread is not None and not thread.done():
                self._stuck += 1
                thread.add_done_callback(self._unstick)
            out = outcome_of(exc, self.fn.timeout_s, timed_out, loop.time() - started)
            if out.kind == "failed":
                log_failure(self.fn.name, event.id, d.receive_count, exc)
            return out
        return Outcome("ok", service_s=loop.time() - started, result=result)

    async def stop(self) -> None:
        self.usage.held(0)
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
