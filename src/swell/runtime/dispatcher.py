"""One Dispatcher per function: lease batches, run up to the controller's limit at once, settle.

Settling follows the rules of ``swell.runtime.settle`` (ack, retry with backoff, throttle, dead-letter
with the reason): an ack is batched while the previous batch is being stored; a retry or a throttle
releases the event with its delay (a throttle's release is not counted as a receive); a dead letter
goes through the broker. Long handlers keep their lease alive.

**The lease invariant.** Every leased event is started, or released to its queue, within one
visibility timeout, and at once when the node's limit no longer covers it:

- events are leased ahead (the buffer) only as many as the free units can start soon;
- a lease is renewed only while a unit works on its event; a buffered event is never renewed;
- a buffered event still unstarted when half its lease has gone is released (not counted as a
  receive); the lease keeper looks every fifth of a lease, so one started late still has time to
  be renewed;
- when the limit falls, the buffer beyond what the new limit would lease is released at once (all
  of it at a limit of zero), so a node whose share drops to zero holds nothing another could run;
- a release at a graceful stop is not a receive either; an error out of settling fails that
  attempt, it never strands the event or its unit.

At a limit of zero the dispatcher is its function's activator: it waits for one event and asks
for a unit at once, instead of waiting for the scaler's next tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any

from swell.brokers.base import Broker, Delivery, QueueSpec, Receipt
from swell.brokers.producer import Producer
from swell.core import logs, tracing
from swell.core.clock import Clock
from swell.core.errors import SwellError
from swell.core.outcome import Outcome
from swell.patterns.idempotency import IdempotencyStore
from swell.runtime.app import Function
from swell.runtime.channels import Subscription
from swell.runtime.context import BLOCK_LEASE_S, Invocation
from swell.runtime.executor import Executor, once
from swell.runtime.metrics import FunctionMetrics
from swell.runtime.settle import Settle
from swell.scaling.limiters import SharedLimiter, TokenBucket
from swell.scaling.signals import Observation

log = logging.getLogger("swell.dispatcher")

RECEIVE_WAIT_S = 5.0
# the most to lease at once: a backlog drained about 30 % faster at 500 than at 100 (fewer trips
# to the broker) and no slower than at 1,000; at 1,000 events/s a receive gets one or two anyway
MAX_BATCH = 500
ACK_STALL_S = 0.25  # a batch of acks stored slower than this lets the next start beside it
MAX_ACK_FLIGHTS = 8
PREFETCH_S = 0.05  # lease ahead what free units can start within this long


class Dispatcher:
    """Runs one function against its queue."""

    def __init__(self, fn: Function, broker: Broker, producer: Producer, clock: Clock,
                 spec: QueueSpec, executor: Executor, *, bucket: TokenBucket | None = None,
                 shared: tuple[SharedLimiter, ...] = (),
                 on_activate: Callable[[], None] | None = None) -> None:
        self.fn = fn
        self.broker = broker
        self.producer = producer
        self.clock = clock
        self.executor = executor
        executor.on_change = self.poke  # a unit became ready (or went): look again
        self.metrics = FunctionMetrics()
        self.limit = 0
        self.activator = True
        """At a limit of zero, whether to wait for an event and activate: yes while the function
        is at zero on every node; no on a node whose share is zero while others work."""
        self._rules = Settle(fn.retry, fn.retry.allowed(spec.max_receives), self.metrics)
        self._lease_s = spec.visibility_timeout_s
        self._queue = spec.name
        self._dest, self._sub = ((fn.queue.topic, fn.queue.subscription.name)  # (for its spans)
                                 if isinstance(fn.queue, Subscription) else (spec.name, ""))
        self._bucket = bucket
        self._shared = shared
        self._idem = fn.idempotency
        self._store = None if fn.idempotency is None else IdempotencyStore(
            broker.kv, fn.name, clock.time)
        self._blocks = self._store or IdempotencyStore(broker.kv, fn.name, clock.time)
        self._on_activate = on_activate
        # leased, not yet started, each with when its lease ends (monotonic); never renewed
        self._buffer: deque[tuple[Delivery, float]] = deque()
        # one task per busy unit; each works through the buffer, so an event costs no new task
        self._workers: dict[asyncio.Task[None], Delivery | None] = {}
        self._busy = 0  # workers with an event (the non-None values above), kept as they change
        self._lease_until: dict[Receipt, float] = {}  # started events only: the ones renewed
        self._wake = asyncio.Event()
        self._acks: list[Receipt] = []
        self._acks_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._hurry = asyncio.Event()

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._lease_loop(), name=f"{self.fn.name}:lease"),
                       asyncio.create_task(self._keep_leases(), name=f"{self.fn.name}:keep"),
                       asyncio.create_task(self._ack_loop(), name=f"{self.fn.name}:ack")]

    async def set_limit(self, units: int) -> None:
        """The controller's decision: how many units may run at once. Buffered events the new
        limit would not have leased are released at once, so no other node waits on them."""
        before, self.limit = self.limit, max(0, units)
        await self.executor.scale_to(self.limit)
        if self.limit < before:
            await self._trim()
        self.poke()

    async def _trim(self) -> None:
        """Release the buffered events the current limit would not have leased."""
        keep = 0 if self.limit == 0 or self._stopping else max(
            0, self._wanted(self.limit) - self.in_flight)
        await self._release_buffered(len(self._buffer) - keep, f"limit {self.limit}")

    async def _release_buffered(self, n: int, why: str, *, newest: bool = True) -> None:
        """Give ``n`` unstarted events back to the queue, not counted as receives."""
        if n <= 0 or not self._buffer:
            return
        take = self._buffer.pop if newest else self._buffer.popleft
        out = [take()[0].receipt for _ in range(min(n, len(self._buffer)))]
        log.debug("%s: released %d unstarted event(s): %s", self.fn.name, len(out), why)
        try:
            await self.broker.release(out, count=False)
        except SwellError as exc:  # their leases end on their own: visible again in one timeout
            log.warning("%s: could not release %d event(s): %s", self.fn.name, len(out), exc)

    def poke(self) -> None:
        """Something changed (a unit became ready, the limit moved): look again."""
        self._wake.set()
        self._pump()

    async def stop(self, grace_s: float) -> None:
        """Stop leasing; let in-flight work finish within ``grace_s``; release what is left."""
        self._stopping = True
        lease_task = self._tasks[0]
        lease_task.cancel()
        with suppress(asyncio.CancelledError):
            await lease_task
        await self._release_buffered(len(self._buffer), "stopping")
        await self._wait_in_flight(grace_s)
        workers = list(self._workers)
        left = [d for d in self._workers.values() if d is not None]
        for task in workers:
            task.cancel()
        self._tasks[1].cancel()
        await asyncio.gather(self._tasks[1], *workers, return_exceptions=True)
        self._acks_ready.set()  # the ack loop stores what is pending, then ends
        await asyncio.gather(self._tasks[2], return_exceptions=True)
        await self._flush_acks()
        if left:  # handed back, not failed: a graceful stop is not an attempt
            stale = await self.broker.release([d.receipt for d in left], count=False)
            log.info("%s: released %d unfinished event(s) at shutdown", self.fn.name,
                     len(left) - len(stale))
        await self.executor.stop()

    def hurry(self) -> None:
        """Cut the grace period of a stop short."""
        self._hurry.set()

    async def _wait_in_flight(self, grace_s: float) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + grace_s
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            while self.in_flight and not hurry.done() and loop.time() < until:
                await asyncio.wait([*self._workers, hurry], timeout=until - loop.time(),
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()

    @property
    def in_flight(self) -> int:
        return self._busy

    def observe(self, t: float, depth: int | None, delayed: int, oldest_age_s: float | None
                ) -> Observation:
        """This tick's raw readings, for the scaler's Sampler."""
        m, ex = self.metrics, self.executor
        return Observation(
            t=t, depth=depth, in_flight=self.in_flight, delayed=delayed,
            oldest_age_s=oldest_age_s, finished=m.finished, attempts=m.attempts, errors=m.errors,
            throttles=m.throttles, service_times_s=m.take_tick_times(), starting=ex.starting,
            ready=ex.ready(), busy=self.in_flight, cold_starts=ex.cold_starts,
            current=self.limit)

    # -- leasing -------------------------------------------------------------------------------
    def _wanted(self, units: int) -> int:
        """Events ``units`` units should hold (working and buffered): what they start within
        ``PREFETCH_S`` at the latest service time."""
        svc = self.metrics.service_times_s[-1] if self.metrics.service_times_s else None
        per_unit = 1 if svc is None else max(1, min(MAX_BATCH, int(PREFETCH_S / max(svc, 1e-4))))
        return min(MAX_BATCH, units * per_unit)

    def _batch(self) -> int:
        """How many to lease now."""
        return self._wanted(self.executor.ready()) - self.in_flight - len(self._buffer)

    async def _lease_loop(self) -> None:
        while not self._stopping:
            busy = bool(self._workers or self._buffer)
            if self.limit == 0:
                n = 0 if busy or not self.activator else 1  # the activator's probe
            else:
                n = self._batch()
                if n < max(1, self.limit // 4, self._refill) and busy:
                    n = 0  # wait for a batch worth a round trip
            if n <= 0:
                self._wake.clear()
                with suppress(TimeoutError):
                    async with asyncio.timeout(0.002 if busy else None):
                        await self._wake.wait()
                continue
            asked_at = self.limit
            asked_ns = time.time_ns()  # (a receive span's start)
            try:
                got = await self.broker.receive(self._queue, n, self._lease_s, wait_s=RECEIVE_WAIT_S)
            except SwellError as exc:
                log.error("%s: receive failed: %s; retrying in 1 s", self.fn.name, exc)
                await self.clock.sleep(1.0)
                continue
            if got and tracing.ON:
                tracing.receive_span(self._dest, [g.body for g in got], asked_ns, self.fn.name)
            until = self.clock.monotonic() + self._lease_s
            self._buffer.extend((d, until) for d in got)
            if got and self.limit == 0 and self.activator and not self._stopping:
                await self._activate()
            elif got and (self.limit < asked_at or self.limit == 0 or self._stopping):
                await self._trim()  # the limit fell while receiving
            self._pump()

    async def _activate(self) -> None:
        log.debug("%s: activated from zero", self.fn.name)
        await self.set_limit(1)
        if self._on_activate is not None:
            self._on_activate()

    @property
    def _refill(self) -> int:
        """Lease again when the buffer is down to half a batch, so units never wait for it."""
        return len(self._buffer) // 2 if self._buffer else 0

    def _pump(self) -> None:
        """Put free units to work on buffered events."""
        units = self.executor.ready()
        while self._buffer and len(self._workers) < units:
            task = asyncio.create_task(self._work())
            self._workers[task] = None
            task.add_done_callback(self._worker_done)

    async def _work(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        done = 0
        while self._buffer and len(self._workers) <= self.executor.ready():
            d, until = self._buffer.popleft()
            self._workers[me] = d
            self._busy += 1
            self.metrics.in_flight = self._busy
            self._lease_until[d.receipt] = until
            await self._process(d)
            self._workers[me] = None
            self._busy -= 1
            self._lease_until.pop(d.receipt, None)
            done += 1
            if len(self._buffer) <= MAX_BATCH // 2:
                self._wake.set()  # time to lease the next batch
            if done % 16 == 0:
                await asyncio.sleep(0)  # a handler that never waits must not starve the loop

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        d = self._workers.pop(task, None)
        if d is not None:  # ended mid-event (cancelled, or an error out of settling)
            self._busy -= 1
            self._lease_until.pop(d.receipt, None)
        self.metrics.in_flight = self._busy
        self._pump()
        self._wake.set()

    async def _keep_leases(self) -> None:
        """Extend the leases of events being worked on before they expire; release buffered
        events that waited half a lease unstarted (a slow unit must not hold them).

        Every fifth of a lease: a buffered event then starts with at least 3/10 of its lease
        left (it is released below 1/2), and is renewed at the next round, within 1/5."""
        period = max(self._lease_s / 5, 0.05)
        while True:
            await self.clock.sleep(period)
            now = self.clock.monotonic()
            waited = sum(1 for _, until in self._buffer if until - now < self._lease_s / 2)
            await self._release_buffered(waited, "unstarted for half a lease", newest=False)
            soon = now + self._lease_s / 2
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
    @asynccontextmanager
    async def _gates(self) -> AsyncIterator[None]:
        """Wait for the function's rate limit and its named limiters (not counted as service)."""
        if self._bucket is not None:
            await self._bucket.acquire()
        if not self._shared:
            yield
            return
        async with AsyncExitStack() as stack:
            for limiter in self._shared:
                await stack.enter_async_context(limiter.hold())
            yield

    async def _process(self, d: Delivery) -> None:
        self.metrics.received += 1
        if logs.NAMED:
            logs.ATTEMPT.set(None)  # (until the executor names this one: not the one before)
        if tracing.ON:
            return await self._traced(d)
        run = self._execute if self._idem is None else self._once
        try:
            if self._bucket is None and not self._shared:
                outcome = await run(d, None)  # no gates: spare the context manager per event
            else:
                async with self._gates():
                    outcome = await run(d, None)
        except Exception as exc:  # swell's own failure around the handler: a failed attempt
            log.exception("%s: event %s: error around the handler", self.fn.name, d.receipt.id)
            outcome = Outcome("crashed", f"swell error: {exc!r}")
        try:
            await self._settle(d, outcome)
        except Exception:  # its lease is no longer renewed: back in the queue within a timeout
            log.exception("%s: event %s could not be settled", self.fn.name, d.receipt.id)

    async def _traced(self, d: Delivery) -> None:
        """``_process`` in a process span, with a settle span for what became of the attempt."""
        run = self._execute if self._idem is None else self._once
        with tracing.ProcessSpan(self._dest, d.body, attempt=d.receive_count, group=self.fn.name,
                                  subscription=self._sub or None) as attempt:
            try:
                async with self._gates():
                    outcome = await run(d, attempt.traceparent)
            except Exception as exc:
                log.exception("%s: event %s: error around the handler", self.fn.name, d.receipt.id)
                outcome = Outcome("crashed", f"swell error: {exc!r}")
            attempt.outcome(outcome.kind, outcome.error)
            span = tracing.settle_span(self._dest)
            try:
                span.set_attribute("messaging.operation.name", await self._settle(d, outcome))
            except Exception:
                log.exception("%s: event %s could not be settled", self.fn.name, d.receipt.id)
            span.end()

    def _execute(self, d: Delivery, trace: str | None, state: dict[str, Any] | None = None
                 ) -> Coroutine[Any, Any, Outcome]:
        """The executor's call for ``d``; its deadline starts now, once the gates have opened."""
        timeout = self.fn.timeout_s
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        receipt = d.receipt
        inv = Invocation(deadline, self.producer, lambda s: self._extend(receipt, s), self._blocks,
                         self._lease_s if state is not None else BLOCK_LEASE_S, state, trace)
        return self.executor.execute(d, inv)

    async def _once(self, d: Delivery, trace: str | None) -> Outcome:
        """``_execute`` under the function's idempotency key (see ``swell.patterns.idempotency``)."""
        assert self._idem is not None and self._store is not None
        return await once(self.fn.name, self._idem, self._store, d, self._lease_s,
                          lambda state: self._execute(d, trace, state))

    async def _settle(self, d: Delivery, out: Outcome) -> str:
        """Act on ``out`` by the rules of ``swell.runtime.settle``; what it did."""
        action = self._rules(out, d.receive_count, d)
        kind = action.kind
        if kind == "ack":
            self._acks.append(d.receipt)
            self._acks_ready.set()
            return kind
        if kind == "dead_letter":
            log.warning("%s: event dead-lettered (%s): %s", self.fn.name, action.reason,
                        action.error)
            try:
                await self.broker.dead_letter(d.receipt, action.reason, action.error)
            except SwellError as exc:  # the lease expires and the broker's max_receives takes over
                log.error("%s: could not dead-letter: %s", self.fn.name, exc)
            return kind
        if kind == "retry":
            log.info("%s: attempt %d failed (%s); retrying", self.fn.name, d.receive_count,
                     action.error)
        with suppress(SwellError):  # a throttle is not a receive: it does not count
            await self.broker.release([d.receipt], action.delay_s, count=kind == "retry")
        return kind

    # -- acks ----------------------------------------------------------------------------------
    async def _ack_loop(self) -> None:
        """Store acks in batches: what finishes while a batch is being stored goes in the next.
        A batch that takes longer than ``ACK_STALL_S`` (a connection that died under it) does
        not hold the next ones up, which would leave finished events to their leases."""
        flights: set[asyncio.Task[None]] = set()
        while not (self._stopping and not self._workers and not self._acks):
            await self._acks_ready.wait()
            if flights:
                await asyncio.wait(flights, timeout=ACK_STALL_S)
                if len(flights) >= MAX_ACK_FLIGHTS:
                    await asyncio.wait(flights, return_when=asyncio.FIRST_COMPLETED)
                if not self._acks:
                    continue
            flight = asyncio.create_task(self._flush_acks(), name=f"{self.fn.name}:ack")
            flights.add(flight)
            flight.add_done_callback(flights.discard)
            await asyncio.sleep(0)  # the flight takes its batch
        if flights:
            await asyncio.gather(*flights, return_exceptions=True)

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
