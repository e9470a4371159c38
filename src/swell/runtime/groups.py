"""Consumer groups: the partitions of a stream worked in order, each by one instance at a time,
with checkpoints, a sticky assignment among the nodes, and a gentle hand-over.

Every tick the runtime gives the group the live nodes that run its function. The function's
leader (see ``cluster``) computes the assignment — sticky: a partition stays where it is while its
node lives and holds no more than its fair share; a node joins the assignment only once it has
been seen for ``JOIN_AFTER_S``, so a flapping member causes no storm — and writes it to the kv
store; every node reads it.

A node works a partition only while it holds the partition's lease in the kv store (renewed each
tick, ``LEASE_S`` long). A partition assigned elsewhere is handed over gently: its worker finishes
the event in hand, commits, and gives the lease up; the new owner takes the lease only then (or
when the old one's expires, if that node died) and starts from the committed offset. Offsets are
committed every ``checkpoint_every`` events or ``checkpoint_interval`` seconds, so after a crash
the group repeats at most what came after its last checkpoint, and never skips anything.

Retries hold the partition (order per key is kept; the rules are those of ``swell.runtime.settle``);
an event that fails every attempt goes to the group's dead-letter queue and the partition moves on.
The function's units bound how many partitions this node works at once; its controller sees the
group's lag as its backlog.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import msgspec

from swell.brokers.base import (
    Broker,
    Delivery,
    Message,
    Receipt,
    Record,
    dead_letter_headers,
)
from swell.brokers.lease import Lease
from swell.brokers.logs import commit, committed
from swell.brokers.producer import Producer
from swell.core import keys, logs, tracing
from swell.core.clock import Clock
from swell.core.errors import SwellError
from swell.core.outcome import Outcome
from swell.patterns.idempotency import IdempotencyStore
from swell.runtime.app import Function, Group
from swell.runtime.assignment import Assignment, assign, summary
from swell.runtime.context import BLOCK_LEASE_S, Invocation, no_extend
from swell.runtime.executor import Executor, once
from swell.runtime.metrics import FunctionMetrics
from swell.runtime.settle import Action, Settle
from swell.scaling.hotkeys import HotKey, HotKeys
from swell.scaling.signals import Observation

__all__ = ["GroupDispatcher", "Partition", "assign"]

log = logging.getLogger("swell.groups")

LEASE_S = 10.0
LEASE_MARGIN_S = 2.0  # stop working a partition this long before its lease could have run out
JOIN_AFTER_S = 1.0
READ_BATCH = 100
POLL_MIN_S = 0.005
POLL_MAX_S = 0.2


class _Units:
    """A semaphore whose size can change: how many partitions may run a handler at once. Taking a
    free unit costs no await; only a wait for one goes through the condition."""

    def __init__(self) -> None:
        self.limit = 0
        self.busy = 0
        self._waiting = 0
        self._changed = asyncio.Condition()

    async def resize(self, limit: int) -> None:
        self.limit = limit
        if self._waiting:
            async with self._changed:
                self._changed.notify_all()

    async def __aenter__(self) -> None:
        if self.busy < self.limit and not self._waiting:
            self.busy += 1
            return
        async with self._changed:
            self._waiting += 1
            try:
                await self._changed.wait_for(lambda: self.busy < self.limit)
            finally:
                self._waiting -= 1
            self.busy += 1

    async def __aexit__(self, *exc: object) -> None:
        self.busy -= 1
        if self._waiting:
            async with self._changed:
                self._changed.notify_all()


@dataclass
class Partition:
    p: int
    position: int
    lease: Lease
    held_until: float
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    lost: bool = False
    pending: int = 0
    committed_at: float = 0.0
    task: asyncio.Task[None] | None = None


class GroupDispatcher:
    """Runs one function on a consumer group: the Dispatcher's counterpart for streams."""

    def __init__(self, fn: Function, broker: Broker, producer: Producer, clock: Clock,
                 executor: Executor, node: str, *,
                 upstream: Callable[[], int] | None = None) -> None:
        assert fn.group is not None
        self.upstream = upstream
        """What the sources feeding the stream on this node hold and have not appended yet (an
        MQTT burst received, a change table's rows): counted in the lag, so the group scales
        on a surge before it lands."""
        self.fn = fn
        self.group: Group = fn.group
        self.broker = broker
        self.producer = producer
        self.clock = clock
        self.executor = executor
        self.node = node
        self.metrics = FunctionMetrics()
        self.limit = 0
        self.activator = False  # the controller sees the lag every tick
        self.hot = HotKeys(self.group.stream.partitions)
        self.lags: list[int] = []
        self._units = _Units()
        self._owned: dict[int, Partition] = {}
        self._seen: dict[str, float] = {}
        self._prefix = keys.group(self.group.stream.name, self.group.name)
        self._rules = Settle(fn.retry, fn.retry.allowed(), self.metrics)  # no queue's max_receives
        self._idem = fn.idempotency
        self._store = None if fn.idempotency is None else IdempotencyStore(
            broker.kv, fn.name, clock.time)
        self._blocks = self._store or IdempotencyStore(broker.kv, fn.name, clock.time)
        self._stopping = False

    # -- what the runtime calls ----------------------------------------------------------------
    def start(self) -> None:
        pass  # partitions start as the first rebalance assigns them

    @property
    def in_flight(self) -> int:
        return self._units.busy

    @property
    def partitions(self) -> list[int]:
        """The partitions this node works now."""
        return sorted(self._owned)

    def hot_keys(self, k: int = 5) -> list[HotKey]:
        """The keys with the highest recent rates in this node's partitions, each with its share
        of its partition (a promotion blast on one key shows here)."""
        found = [h for p in range(self.group.stream.partitions) for h in self.hot.top(p, k)]
        return sorted(found, key=lambda h: -h.rate_per_s)[:k]

    async def set_limit(self, units: int) -> None:
        self.limit = max(0, min(units, self.group.stream.partitions))
        await self.executor.scale_to(self.limit)
        await self._units.resize(self.limit)

    def poke(self) -> None:
        pass

    def observe(self, t: float, depth: int | None, delayed: int, oldest_age_s: float | None
                ) -> Observation:
        m, ex = self.metrics, self.executor
        return Observation(
            t=t, depth=depth, in_flight=self.in_flight, delayed=0, oldest_age_s=None,
            finished=m.finished, attempts=m.attempts, errors=m.errors, throttles=m.throttles,
            service_times_s=m.take_tick_times(), starting=ex.starting, ready=ex.ready(),
            busy=self.in_flight, cold_starts=ex.cold_starts, current=self.limit, lag=depth)

    async def lag(self) -> int | None:
        """Events not yet done, over all partitions (this node's own positions are fresher than
        the committed ones); ``None`` if the backend does not answer."""
        stream = self.group.stream
        try:
            done = await committed(self.broker.kv, stream.name, self.group.name)
            for p, part in self._owned.items():
                done[p] = part.position
            self.lags = await self.broker.lag(stream.name, [done.get(p, 0)
                                                            for p in range(stream.partitions)])
        except SwellError:
            return None
        if self.limit == 0 and any(self.lags[p] for p in self._owned):
            # from zero: work waits, so take a unit now rather than at the controller's next
            # decision (the Dispatcher's activator does the same for a queue)
            log.debug("%s: activated from zero (lag %d)", self.fn.name, sum(self.lags))
            await self.set_limit(1)
        return sum(self.lags) + (self.upstream() if self.upstream is not None else 0)

    async def rebalance(self, nodes: list[str], leads: bool,
                        working: Collection[str] | None = None) -> None:
        """This tick's membership: renew leases, follow the assignment, take what is ours.

        ``working``: the nodes with units for the function now (all of ``nodes`` if ``None``).
        The leader assigns partitions only to them, so no partition is held by a node that has
        no unit to work it (a node whose share fell to zero hands its partitions over)."""
        await self._renew()
        now = self.clock.time()
        for n in nodes:
            self._seen.setdefault(n, now)
        self._seen = {n: t for n, t in self._seen.items() if n in nodes}
        key = f"{self._prefix}assignment"
        entry = await self.broker.kv.get(key)
        current = {} if entry is None else msgspec.json.decode(entry.value, type=Assignment).owners
        if leads:
            seen = [n for n in nodes if now - self._seen[n] >= JOIN_AFTER_S or n == self.node]
            members = sorted(n for n in seen if working is None or n in working) or sorted(seen)
            wanted = assign(self.group.stream.partitions, members, current)
            if wanted != current:
                raw = msgspec.json.encode(Assignment(wanted))
                done = (await self.broker.kv.put_if_absent(key, raw) if entry is None else
                        await self.broker.kv.compare_and_set(key, raw, entry.revision))
                if done is not None:
                    log.info("%s: partitions assigned: %s", self.fn.name, summary(wanted))
                    current = wanted
        mine = {p for p, n in current.items() if n == self.node}
        for p, part in self._owned.items():
            if p not in mine:
                part.stop.set()  # hand over: finish the event in hand, commit, let go
        for p in sorted(mine - set(self._owned)):
            await self._take(p)

    async def stop(self, grace_s: float) -> None:
        self._stopping = True
        for part in self._owned.values():
            part.stop.set()
        tasks = [p.task for p in self._owned.values() if p.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.executor.stop()

    def hurry(self) -> None:
        for part in self._owned.values():
            part.stop.set()

    # -- leases ------------------------------------------------------------------------------
    def _lease_key(self, p: int) -> str:
        return f"{self._prefix}owner/{p}"

    async def _take(self, p: int) -> None:
        """Take partition ``p``'s lease if it is free, and start working it from its checkpoint."""
        if self._stopping:
            return
        try:
            lease = Lease(self.broker.kv, self._lease_key(p), self.node, self.clock, ttl_s=LEASE_S)
            if not await lease.take():
                return  # still held: the old owner is handing over (or died; its lease will end)
            done = await committed(self.broker.kv, self.group.stream.name, self.group.name)
        except SwellError as exc:
            log.warning("%s: could not take partition %d: %s", self.fn.name, p, exc)
            return
        try:
            start = await self._resume(p, done.get(p, 0))
        except SwellError as exc:
            log.warning("%s: could not resume partition %d: %s", self.fn.name, p, exc)
            await lease.release()
            return
        part = Partition(p, start, lease, self.clock.monotonic() + LEASE_S - LEASE_MARGIN_S,
                         committed_at=self.clock.monotonic())
        self._owned[p] = part
        part.task = asyncio.create_task(self._work(part), name=f"{self.fn.name}:p{p}")
        log.info("%s: working partition %d from offset %d", self.fn.name, p, part.position)

    async def _renew(self) -> None:
        for part in list(self._owned.values()):
            if part.stop.is_set():
                continue
            try:
                renewed = await part.lease.renew()
            except SwellError:
                continue  # not renewed: the worker stops when its time runs out
            if not renewed:
                log.warning("%s: lost partition %d", self.fn.name, part.p)
                part.lost = True
                part.stop.set()
            else:
                part.held_until = self.clock.monotonic() + LEASE_S - LEASE_MARGIN_S

    def _holds(self, part: Partition) -> bool:
        return not part.lost and self.clock.monotonic() < part.held_until

    # -- work ----------------------------------------------------------------------------------
    async def _work(self, part: Partition) -> None:
        stream = self.group.stream.name
        idle = POLL_MIN_S
        try:
            while not part.stop.is_set() and self._holds(part):
                try:
                    records = await self.broker.read(stream, part.p, part.position, READ_BATCH)
                except SwellError as exc:
                    log.error("%s: reading partition %d failed: %s", self.fn.name, part.p, exc)
                    records = []
                    idle = POLL_MAX_S
                if not records:
                    await self._quiet(part)
                    await self._checkpoint(part, force=part.pending > 0)
                    with suppress(TimeoutError):
                        async with asyncio.timeout(idle):
                            await part.stop.wait()
                    idle = min(POLL_MAX_S, idle * 2)
                    continue
                idle = POLL_MIN_S
                keys: Counter[str | None] = Counter()
                for r in records:
                    if part.stop.is_set() or not self._holds(part):
                        break
                    async with self._units:
                        await self._handle(part, r)
                        if logs.NAMED:
                            logs.ATTEMPT.set(None)  # (lines after it are about the partition)
                    part.position = r.offset + 1
                    part.pending += 1
                    keys[r.key] += 1
                    await self._checkpoint(part)
                for key, n in keys.items():  # the batch's keys, once each
                    self.hot.observe(part.p, key, n)
        finally:
            await asyncio.shield(self._let_go(part))

    async def _checkpoint(self, part: Partition, *, force: bool = False) -> None:
        now = self.clock.monotonic()
        due = (part.pending >= self.group.checkpoint_every
               or (part.pending and now - part.committed_at >= self.group.checkpoint_interval_s))
        if not (force or due) or not self._holds(part):
            return
        try:
            await self._save(part)  # (before the offset: a crash between repeats, never skips)
            await commit(self.broker.kv, self.group.stream.name, self.group.name,
                         {part.p: part.position})
        except SwellError as exc:
            log.warning("%s: checkpoint of partition %d failed: %s", self.fn.name, part.p, exc)
            return
        part.pending = 0
        part.committed_at = now

    # -- what a subclass (a window function's) adds --------------------------------------------
    async def _resume(self, p: int, offset: int) -> int:
        """Where partition ``p`` starts, given its committed ``offset``."""
        return offset

    async def _save(self, part: Partition) -> None:
        """What is stored with a checkpoint, before its offset."""

    async def _quiet(self, part: Partition) -> None:
        """Partition ``part`` has nothing to read now."""

    async def _let_go(self, part: Partition) -> None:
        """Commit what was done (if the lease is still ours) and give the lease up."""
        if self._holds(part):
            await self._checkpoint(part, force=True)
            await part.lease.release()
        if self._owned.get(part.p) is part:
            del self._owned[part.p]
        log.info("%s: let go of partition %d at offset %d", self.fn.name, part.p, part.position)

    async def _handle(self, part: Partition, r: Record) -> None:
        """One event, with its retries: the partition waits for it."""
        m = self.metrics
        m.received += 1
        receipt = Receipt(f"{self.group.key}#{part.p}", r.offset, 0)
        first = self.clock.time()
        attempt = 1
        while True:
            d = Delivery(receipt=receipt, body=r.body, headers=r.headers, receive_count=attempt,
                         enqueued_at=r.timestamp, first_received_at=first)
            if tracing.ON:
                action = await self._traced(part, d, attempt)
            else:
                action = self._settle(part, d, attempt, await self._run(d))
            if action.kind in ("ack", "let_go"):
                return
            if action.kind == "dead_letter":
                await self._dead_letter(r, action.reason, action.error, attempt)
                return
            if action.kind == "retry":
                log.info("%s: partition %d offset %d attempt %d failed (%s); retrying",
                         self.fn.name, part.p, r.offset, attempt, action.error)
                attempt += 1  # a throttle is not an attempt
            await self.clock.sleep(action.delay_s)

    def _settle(self, part: Partition, d: Delivery, attempt: int, out: Outcome) -> Action:
        return self._rules(out, attempt, d, owned=out.kind == "ok" or self._holds(part))

    async def _traced(self, part: Partition, d: Delivery, attempt: int) -> Action:
        """One attempt in its process span, with a settle span for what became of it."""
        with tracing.ProcessSpan(self.group.stream.name, d.body, attempt=attempt,
                                  group=self.group.name, partition=part.p) as span:
            out = await self._run(d, span.traceparent)
            span.outcome(out.kind, out.error)
            action = self._settle(part, d, attempt, out)
            tracing.settle_span(self.group.stream.name, action.kind).end()
            return action

    async def _run(self, d: Delivery, trace: str | None = None) -> Outcome:
        """One attempt: under the function's idempotency key, if it has one."""
        if self._idem is None or self._store is None:
            return await self._execute(d, trace)

        def execute(state: dict[str, Any]) -> Awaitable[Outcome]:
            return self._execute(d, trace, state)

        return await once(self.fn.name, self._idem, self._store, d, LEASE_S, execute)

    def _execute(self, d: Delivery, trace: str | None, state: dict[str, Any] | None = None
                 ) -> Awaitable[Outcome]:
        timeout = self.fn.timeout_s
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        inv = Invocation(deadline, self.producer, no_extend, self._blocks,
                         LEASE_S if state is not None else BLOCK_LEASE_S, state, trace)
        return self.executor.execute(d, inv)

    async def _dead_letter(self, r: Record, reason: str, error: str, attempts: int) -> None:
        log.warning("%s: partition %d offset %d dead-lettered (%s): %s", self.fn.name,
                    r.partition, r.offset, reason, error)
        headers = dead_letter_headers(r.headers, source=f"{self.group.key}#{r.partition}",
                                      reason=reason, error=error, attempts=attempts,
                                      at=self.clock.time())
        headers["swell-offset"] = str(r.offset)
        try:
            await self.broker.send(self.group.dead_letter.name, [Message(body=r.body, headers=headers)])
        except SwellError as exc:
            log.error("%s: could not dead-letter offset %d: %s", self.fn.name, r.offset, exc)
