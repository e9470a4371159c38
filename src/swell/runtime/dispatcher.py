"""One Dispatcher per function: lease batches, run up to ``concurrency`` at once, settle each event.

Settling: ack on success (acks are batched while the previous batch is being stored); on an
exception, release with backoff while attempts remain, else dead-letter with the reason; a payload
that fails validation is dead-lettered at once. Long handlers keep their lease alive.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from functools import partial
from typing import Any

import pydantic

from swell.brokers.base import Broker, Delivery, Receipt
from swell.core.clock import Clock
from swell.core.errors import PayloadError, SwellError
from swell.core.event import Event
from swell.observe.metrics import FunctionMetrics
from swell.runtime.app import Function
from swell.runtime.context import Context, SyncContext
from swell.runtime.producer import Producer

log = logging.getLogger("swell.dispatcher")

REASON_INVALID = "invalid payload"
REASON_MALFORMED = "malformed event"
REASON_FAILED = "failed"
RECEIVE_WAIT_S = 5.0


class Dispatcher:
    """Runs one function against its queue."""

    def __init__(self, function: Function, broker: Broker, producer: Producer, clock: Clock,
                 max_receives: int, visibility_timeout_s: float) -> None:
        self.fn = function
        self.broker = broker
        self.producer = producer
        self.clock = clock
        self.metrics = FunctionMetrics()
        self._attempts = function.retry.allowed(max_receives)
        self._lease_s = visibility_timeout_s
        self._queue = function.queue.name
        self._low_water = max(1, function.concurrency // 4)
        self._slots_free = asyncio.Event()
        self._running: dict[asyncio.Task[None], Delivery] = {}
        self._lease_until: dict[Receipt, float] = {}
        self._acks: list[Receipt] = []
        self._acks_ready = asyncio.Event()
        self._threads: ThreadPoolExecutor | None = None
        self._context_type = Context if function.handler.is_async else SyncContext
        if not function.handler.is_async:
            self._threads = ThreadPoolExecutor(function.concurrency,
                                               thread_name_prefix=f"swell-{function.name}")
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._hurry = asyncio.Event()

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._lease_loop(), name=f"{self.fn.name}:lease"),
                       asyncio.create_task(self._keep_leases(), name=f"{self.fn.name}:keep"),
                       asyncio.create_task(self._ack_loop(), name=f"{self.fn.name}:ack")]

    async def stop(self, grace_s: float) -> None:
        """Stop leasing; let in-flight work finish within ``grace_s``; release what is left."""
        self._stopping = True
        lease_task = self._tasks[0]
        lease_task.cancel()
        with suppress(asyncio.CancelledError):
            await lease_task
        await self._wait_in_flight(grace_s)
        left = list(self._running.items())
        for task, _ in left:
            task.cancel()
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks[1:], *(t for t, _ in left), return_exceptions=True)
        await self._flush_acks()  # including a batch the ack loop was storing when cancelled
        if left:
            stale = await self.broker.release([d.receipt for _, d in left])
            log.info("%s: released %d unfinished event(s) at shutdown", self.fn.name,
                     len(left) - len(stale))
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)

    def hurry(self) -> None:
        """Cut the grace period of a stop short."""
        self._hurry.set()

    async def _wait_in_flight(self, grace_s: float) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + grace_s
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            while self._running and not hurry.done() and loop.time() < until:
                await asyncio.wait([*self._running, hurry], timeout=until - loop.time(),
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # -- leasing -------------------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        concurrency = self.fn.concurrency
        while not self._stopping:
            free = concurrency - len(self._running)
            if free < self._low_water and self._running:
                # a no-op handler frees slots one by one: wait for a useful batch, briefly
                self._slots_free.clear()
                with suppress(TimeoutError):
                    async with asyncio.timeout(0.002):
                        await self._slots_free.wait()
                free = concurrency - len(self._running)
                if free <= 0:
                    continue
            try:
                deliveries = await self.broker.receive(self._queue, free, self._lease_s,
                                                       wait_s=RECEIVE_WAIT_S)
            except SwellError as exc:
                log.error("%s: receive failed: %s; retrying in 1 s", self.fn.name, exc)
                await self.clock.sleep(1.0)
                continue
            lease_until = self.clock.monotonic() + self._lease_s
            for d in deliveries:
                task = asyncio.create_task(self._process(d))
                self._running[task] = d
                self._lease_until[d.receipt] = lease_until
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        d = self._running.pop(task, None)
        if d is not None:
            self._lease_until.pop(d.receipt, None)
        self.metrics.in_flight = len(self._running)
        if self.fn.concurrency - len(self._running) >= self._low_water:
            self._slots_free.set()

    async def _keep_leases(self) -> None:
        """Extend the leases of long-running handlers before they expire."""
        period = max(self._lease_s / 3, 0.05)
        while True:
            await self.clock.sleep(period)
            soon = self.clock.monotonic() + self._lease_s / 2
            due = [r for r, until in self._lease_until.items() if until <= soon]
            if not due:
                continue
            try:
                stale = set(await self.broker.extend(due, self._lease_s))
            except SwellError as exc:
                log.warning("%s: could not extend %d lease(s): %s", self.fn.name, len(due), exc)
                continue
            until = self.clock.monotonic() + self._lease_s
            for r in due:
                if r in self._lease_until and r not in stale:
                    self._lease_until[r] = until

    async def _extend(self, receipt: Receipt, seconds: float) -> bool:
        stale = await self.broker.extend([receipt], seconds)
        if not stale and receipt in self._lease_until:
            self._lease_until[receipt] = self.clock.monotonic() + seconds
        return not stale

    # -- one event -----------------------------------------------------------------------------
    async def _process(self, d: Delivery) -> None:
        m = self.metrics
        m.received += 1
        m.in_flight = len(self._running)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = None if self.fn.timeout_s is None else started + self.fn.timeout_s
        try:
            event = Event.from_json(d.body)
            ctx = self._context_type(event=event, delivery=d, function=self.fn.name,
                                     deadline=deadline, producer=self.producer,
                                     extend=lambda s: self._extend(d.receipt, s))
            kwargs = self.fn.handler.arguments(event, ctx)
        except (PayloadError, pydantic.ValidationError) as exc:
            if isinstance(exc, PayloadError):
                await self._dead_letter(d, REASON_MALFORMED, str(exc))
            else:
                await self._dead_letter(d, REASON_INVALID, describe_validation(exc))
            return
        thread = None
        if self._threads is None:
            call: Awaitable[Any] = self.fn.handler.fn(**kwargs)
        else:
            thread = loop.run_in_executor(self._threads, partial(self.fn.handler.fn, **kwargs))
            call = asyncio.shield(thread)
        try:
            async with asyncio.timeout_at(deadline):
                await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline is not None and loop.time() >= deadline:
                error = f"timed out after {self.fn.timeout_s:g}s"
            else:
                error = "".join(traceback.format_exception_only(exc)).strip()
            m.service_times_s.append(loop.time() - started)
            await self._failed(d, error)
            if thread is not None and not thread.done() and not self._stopping:
                # a thread cannot be stopped: its slot stays taken until it returns
                await asyncio.wait([thread])
            return
        m.service_times_s.append(loop.time() - started)
        m.succeeded += 1
        self._acks.append(d.receipt)
        self._acks_ready.set()

    async def _failed(self, d: Delivery, error: str) -> None:
        attempt = d.receive_count
        if attempt >= self._attempts:
            await self._dead_letter(d, f"{REASON_FAILED} after {attempt} attempt(s)", error)
            return
        self.metrics.retried += 1
        log.info("%s: attempt %d failed (%s); retrying", self.fn.name, attempt, error)
        with suppress(SwellError):
            await self.broker.release([d.receipt], self.fn.retry.delay_s(attempt))

    async def _dead_letter(self, d: Delivery, reason: str, error: str) -> None:
        self.metrics.dead_lettered += 1
        log.warning("%s: event dead-lettered (%s): %s", self.fn.name, reason, error)
        try:
            await self.broker.dead_letter(d.receipt, reason, error)
        except SwellError as exc:  # the lease expires and the broker's max_receives takes over
            log.error("%s: could not dead-letter: %s", self.fn.name, exc)

    # -- acks ----------------------------------------------------------------------------------
    async def _ack_loop(self) -> None:
        while True:
            await self._acks_ready.wait()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        self._acks_ready.clear()
        batch, self._acks = self._acks, []
        if not batch:
            return
        try:
            stale = await self.broker.ack(batch)
        except asyncio.CancelledError:
            self._acks[:0] = batch  # not known to be stored: ack again (a repeat is just stale)
            raise
        except SwellError as exc:
            log.error("%s: ack of %d event(s) failed: %s", self.fn.name, len(batch), exc)
            return
        if stale:
            log.warning("%s: %d ack(s) refused: their leases had expired", self.fn.name, len(stale))


def describe_validation(exc: pydantic.ValidationError) -> str:
    """A validation error on one line per field, without pydantic's documentation links."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
                     for e in exc.errors(include_url=False))
