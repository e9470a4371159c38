"""The Runtime: declares an app's queues on a broker, runs a Dispatcher per function and the app's
trigger sources, and every tick turns each function's signals into its concurrency through its
controller. A runtime is one node: with several on one broker, each decides from the function's
global readings and takes its share of the decision (see ``cluster``).

A tick costs a few trips to the broker whatever the number of functions: one read of the peers'
status (none while no other node runs), one of every queue's stats, and one batch of status
records (only those that changed, or near their TTL); a function at rest costs next to nothing
(see ``Runtime.tick``). The heartbeat has a loop of its own: a long tick never lets it expire."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from types import TracebackType
from typing import Any

import msgspec

from swell.brokers.base import Broker
from swell.brokers.producer import Producer, Target
from swell.brokers.url import open_broker
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.errors import SwellError
from swell.runtime import pause, slo
from swell.runtime.app import App, Function, declare
from swell.runtime.client import bind, unbind
from swell.runtime.cluster import (
    FunctionStatus,
    for_publishing,
    leader,
    node_id,
    share,
)
from swell.runtime.cost import budgeted, cost_record, pricing, reprice
from swell.runtime.dispatcher import Dispatcher
from swell.runtime.executor import Executor, InlineExecutor
from swell.runtime.groups import GroupDispatcher
from swell.runtime.membership import Due, Membership, Reading, observed, reading, signals_dict
from swell.runtime.sources import Sources
from swell.runtime.state import FunctionState
from swell.runtime.window_dispatch import WindowDispatcher
from swell.scaling.base import Controller, Decision
from swell.scaling.limiters import SharedLimiter, TokenBucket
from swell.scaling.signals import Observation, Signals

__all__ = ["DEFAULT_GRACE_S", "TICK_S", "FunctionState", "FunctionStatus", "Runtime"]

log = logging.getLogger("swell.runtime")

DEFAULT_GRACE_S = 30.0
TICK_S = 0.5
STOP_WAIT_S = 10.0
#: a function at rest is sampled once every this many ticks (see ``Runtime.tick``)
REST_TICKS = 16


class Runtime:
    """Runs an app. ``async with Runtime(app, "sqlite:///...") as rt: ...`` or ``await rt.serve()``.

    ``broker`` is a URL (default: ``SWELL_BROKER`` or the embedded SQLite file) or a Broker.
    """

    def __init__(self, app: App, broker: Broker | str | None = None, *,
                 clock: Clock = SYSTEM_CLOCK, tick_s: float = TICK_S) -> None:
        self.app = app
        self.clock = clock
        self.tick_s = tick_s
        self._owns_broker = not isinstance(broker, Broker)
        self.broker: Broker = broker if isinstance(broker, Broker) else open_broker(broker,
                                                                                   clock=clock)
        self.producer = Producer(self.broker, source=f"/swell/{app.name}", clock=clock,
                                 topics=app.topics, streams=app.streams)
        self.functions: dict[str, FunctionState] = {}
        self.node = node_id()
        self.started = time.time()
        self._shared: dict[str, SharedLimiter] = {}
        self.membership = Membership(self.broker, clock, app.name, self.node, tick_s)
        self.sources = Sources(app.sources, self.broker, self.producer, clock, app.name, self.node,
                               self.membership.ttl_s)
        self._ticks = 0
        self._stop = asyncio.Event()
        self._scaler: asyncio.Task[None] | None = None
        self._services: list[asyncio.Task[None]] = []

    @property
    def running(self) -> bool:
        """Started, and not stopping: taking work (``/readyz``)."""
        return self._scaler is not None and not self._stop.is_set()

    async def declare(self) -> None:
        """Create (or update) every topic, subscription and queue the app declares."""
        await declare(self.app, self.broker)

    def _executor(self, fn: Function, controller: Controller) -> Executor:
        if fn.mode == "process":
            from swell.runtime.process import ProcessExecutor

            return ProcessExecutor(fn, self.producer, controller.max_units, fn.min_instances,
                                   self.clock)
        return InlineExecutor(fn, self.producer, controller.max_units, self.clock)

    def _dispatcher(self, fn: Function, controller: Controller) -> Dispatcher | GroupDispatcher:
        if fn.group is not None:
            kind = GroupDispatcher if fn.window is None else WindowDispatcher
            feeding = [s.stats for s in self.app.sources.values()
                       if s.target == fn.group.stream.name]
            return kind(fn, self.broker, self.producer, self.clock, self._executor(fn, controller),
                        self.node, upstream=lambda: sum(st.pending for st in feeding))
        shared = tuple(self._shared.setdefault(
            n, SharedLimiter(self.app.limiters[n], self.broker.kv, self.clock)) for n in fn.limiters)
        bucket = None if fn.rate_limit is None else TokenBucket(fn.rate_limit, self.clock)
        return Dispatcher(fn, self.broker, self.producer, self.clock, fn.queue.spec,
                          self._executor(fn, controller), bucket=bucket, shared=shared)

    async def start(self) -> None:
        pricing()  # a bad [tool.swell.cost] stops the start here, before anything runs
        await self.declare()
        await self.sources.prepare()
        bind(self.app, self.producer)  # app.publish goes through this runtime now
        peers = await self.membership.peers()
        statuses: list[Due] = []
        for fn in self.app.functions.values():
            controller = budgeted(fn, fn.controller())  # (Auto capped by the fn's budget=)
            st = FunctionState(fn, self._dispatcher(fn, controller), controller)
            self.functions[fn.name] = st
            # a first decision on no data: a fixed pool starts full, Auto starts cold
            first = Signals(t=self.clock.monotonic(), depth=None, in_flight=0)
            st.decision = controller.decide(first)
            await self._apply(st, peers.get(fn.name, {}))
            if isinstance(st.dispatcher, GroupDispatcher):
                await st.dispatcher.lag()  # work waiting at start: a unit now (its activator)
            slo.watch(st, self.clock)  # (before its first event)
            st.dispatcher.start()
            statuses.append((self._status(st, first, st.dispatcher.observe(first.t, None, 0, None)),
                             None))
        # announced at once, so a node starting next counts this one from its start
        await self.membership.publish(statuses)
        await self._heartbeat()
        self.sources.start()
        self._scaler = asyncio.create_task(self._scale_loop(), name="swell:scaler")
        self._services = [asyncio.create_task(service(self), name=f"swell:{service.__name__}")
                          for service in self.app.services]
        log.info("running %d function(s) of %r as node %s", len(self.functions), self.app.name,
                 self.node)

    async def _scale_loop(self) -> None:
        beat = asyncio.create_task(self._beat_loop(), name="swell:heartbeat")
        try:
            while True:
                await self.clock.sleep(self.tick_s)
                try:
                    await self.tick()
                except SwellError as exc:  # a backend hiccup: the next tick tries again
                    log.warning("scaling tick failed: %s", exc)
        finally:
            beat.cancel()
            with suppress(asyncio.CancelledError):
                await beat

    async def _beat_loop(self) -> None:
        """The heartbeat at least every tick, even while a tick runs long (the tick writes it
        too, when it ends, with the shares it took)."""
        while True:
            beat_at = self.membership.beat_at
            await self.clock.sleep(max(0.0, beat_at + self.tick_s - self.clock.monotonic()))
            if self.clock.monotonic() - self.membership.beat_at < self.tick_s:
                continue  # a tick wrote it meanwhile
            try:
                await self._heartbeat()
            except SwellError as exc:
                log.warning("heartbeat failed: %s", exc)

    async def tick(self) -> None:
        """Sample every function (with its peers' readings), ask its controller, take this node's
        share of the leader's decision, publish the status (the sources' too) and the heartbeat.

        A function at rest (its last two samples said the same at a decision of zero, its queue
        holds nothing, it has no peers, its own readings are the same) is sampled only every
        ``REST_TICKS`` ticks: hundreds of idle functions cost little. An event wakes it through
        its activator at once; the tick after next samples it again (see ``_wake``)."""
        self._ticks += 1
        await pause.refresh(self)  # (functions paused from outside: swell.runtime.pause)
        peers = await self.membership.peers()
        backlogs = await self._backlogs()
        statuses: list[Due] = []
        for i, st in enumerate(self.functions.values()):
            backlog = backlogs.get(st.fn.name)
            fn_peers = peers.get(st.fn.name, {})
            phase = self._ticks + i
            resting = st.resting and not fn_peers and _empty(backlog)
            if resting and phase % 2:
                due = self._refresh(st)
            else:
                depth, delayed, age = (None, 0, None) if backlog is None else backlog[:3]
                own = st.dispatcher.observe(self.clock.monotonic(), depth, delayed, age)
                same = (st.resting and st.own is not None
                        and observed(own) == observed(st.own))
                if resting and same and phase % REST_TICKS:
                    due = self._refresh(st)
                else:
                    if st.resting and not (resting and same):
                        self._wake(st)
                    due = await self._sample(st, own, fn_peers)
            if due is not None:
                statuses.append(due)
            if i % 256 == 255:
                await asyncio.sleep(0)  # many functions: let receives and handlers run between
        await self.membership.publish(statuses)
        await self._heartbeat()
        await self.sources.publish()
        await slo.tick(self)

    async def _sample(self, st: FunctionState, own: Observation,
                      peers: dict[str, FunctionStatus]) -> Due | None:
        """One function's turn of the tick; its status record if one is to be written."""
        s = st.sampler.observe(st.view.merge(own, {n: p.obs for n, p in peers.items()}))
        st.history.append(s)
        reprice(st)  # (a budget's projection: at what its events cost of late)
        st.decision = st.controller.decide(s)
        await self._apply(st, peers)
        reading = None if isinstance(st.dispatcher, GroupDispatcher) else _reading(st, s, own)
        st.resting = (reading is not None and reading == st.reading and st.decision.desired == 0
                      and st.share == 0 and st.fn.min_instances == 0)
        st.own, st.reading = own, reading
        return self._status_due(st, s, own, reading)

    def _wake(self, st: FunctionState) -> None:
        """A function at rest has work again: first the sample its rest skipped last (a tick ago,
        the same as its last one), so its controller sees ticks of the usual length."""
        last = st.signals
        t = self.clock.monotonic() - self.tick_s
        if st.own is None or last is None or t <= last.t:
            return
        s = st.sampler.observe(dataclasses.replace(st.own, t=t))
        st.history.append(s)
        st.decision = st.controller.decide(s)

    async def _backlogs(self) -> dict[str, tuple[int | None, int, float | None, int]]:
        """Per function, (depth, delayed, age of the oldest, leased) of its work, the queues'
        read in one call; a group's depth is its lag. Left out (or ``None`` depth): no data
        (controllers hold)."""
        out: dict[str, tuple[int | None, int, float | None, int]] = {}
        queues = {st.fn.queue.name for st in self.functions.values()
                  if not isinstance(st.dispatcher, GroupDispatcher)}
        try:
            stats = await self.broker.stats_many(sorted(queues)) if queues else {}
        except SwellError:
            stats = {}
        for name, st in self.functions.items():
            if isinstance(st.dispatcher, GroupDispatcher):
                out[name] = await st.dispatcher.lag(), 0, None, 0
            elif (qs := stats.get(st.fn.queue.name)) is not None:
                out[name] = qs.depth, qs.delayed, qs.oldest_age_s, qs.in_flight
        return out

    async def _apply(self, st: FunctionState, peers: dict[str, FunctionStatus]) -> None:
        """Take this node's share of the function's decision (and of its warm floor): its own
        controller's if it leads the function, else the leader's latest, split over the leader's
        members. A node that some peer does not count yet (it just joined) takes nothing until
        every peer counts it, so the shares do not sum past the decision while the nodes' views
        of each other differ (a tick at most; the newcomer waits, the others do not)."""
        nodes = sorted({self.node, *peers})
        group = st.fn.group
        if group is not None and st.decision.desired > group.stream.partitions:
            # a partition is worked by one instance at a time: more would only wait
            st.decision = Decision(group.stream.partitions, f"{st.decision.reason} "
                                   f"(capped at {group.stream.partitions} partitions)")
        st.leader = leader(nodes, st.fn.name)
        led = peers.get(st.leader)
        if led is not None:
            st.decision = Decision(led.desired, led.reason)
            st.decided_at = led.decided_at
            st.members = led.members or nodes  # (a status from before members were published)
        else:
            if st.decision.desired != st.applied:
                st.decided_at = self.clock.time()  # this node leads: a new decision
            st.members = nodes
        held = await pause.hold(self, st)  # paused: 0 units, no floor, no activation
        st.applied = st.decision.desired
        # counted by every peer too: a newcomer that leads in its own view still waits for the
        # nodes that do not know it yet to take their smaller shares
        counted = self.node in st.members and all(
            not p.members or self.node in p.members for p in peers.values())
        rank, st.nodes = (st.members.index(self.node) if counted else 0), len(st.members)
        st.share = share(st.decision.desired, rank, st.nodes, st.fn.name) if counted else 0
        floor = share(st.fn.min_instances, rank, st.nodes, st.fn.name) if counted and not held else 0
        d = st.dispatcher
        if isinstance(d, GroupDispatcher):
            await d.set_limit(max(st.share, floor))
            try:
                # partitions go only to nodes with units (all of them while the function is at
                # zero: each then activates on the lag of its own partitions)
                working = None if st.decision.desired == 0 else [
                    n for i, n in enumerate(st.members)
                    if max(share(st.decision.desired, i, st.nodes, st.fn.name),
                           share(st.fn.min_instances, i, st.nodes, st.fn.name)) > 0]
                await d.rebalance(nodes, leads=st.leader == self.node, working=working)
            except SwellError as exc:
                log.warning("%s: rebalance failed: %s", st.fn.name, exc)
            return
        # from zero, every node waits for the first event; above zero, only the shares work
        d.activator = st.decision.desired == 0 and not held
        await d.set_limit(max(st.share, floor))

    def _status_due(self, st: FunctionState, s: Signals, own: Observation,
                    reading: tuple[object, ...] | None) -> Due | None:
        """A function's status record, if it is to be written this tick: when what it says
        changed (times aside), or when the one written nears its TTL (see ``membership``)."""
        if self.membership.unchanged(st.fn.name, reading):
            return None
        return self._status(st, s, own), reading

    def _refresh(self, st: FunctionState) -> Due | None:
        """A resting function's status record, if the last nears its TTL (or was not written)."""
        if not self.membership.written(st.fn.name):  # (its write failed)
            s = st.signals
            return None if s is None or st.own is None else (self._status(st, s, st.own),
                                                             st.reading)
        return self.membership.again(st.fn.name)

    async def _heartbeat(self) -> None:
        await self.membership.heartbeat(
            self.started, {name: st.share for name, st in self.functions.items()},
            sum(st.dispatcher.in_flight for st in self.functions.values()))

    def _status(self, st: FunctionState, s: Signals, own: Observation) -> FunctionStatus:
        m = st.dispatcher.metrics
        status = FunctionStatus(
            app=self.app.name, function=st.fn.name, node=self.node, queue=st.fn.queue.name,
            mode=st.fn.mode, controller=repr(st.controller), desired=st.decision.desired,
            share=st.share, nodes=st.nodes, leader=st.leader, decided_at=st.decided_at,
            members=st.members,
            reason=st.decision.reason, signals=signals_dict(s),
            obs=for_publishing(own), succeeded=m.succeeded, dead_lettered=m.dead_lettered,
            cost=cost_record(st), at=self.clock.time())
        if isinstance(g := st.dispatcher, GroupDispatcher):
            status = msgspec.structs.replace(
                status, group=g.group.key, partitions=g.partitions, lags=g.lags,
                hot_keys=g.hot_keys(),
                window=g.window_status() if isinstance(g, WindowDispatcher) else None)
        return status

    async def stop(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Graceful stop: no new leases, in-flight work finishes within ``grace_s``, the rest is
        released so another process gets it at once. Sources stop first: nothing new comes in."""
        self._stop.set()
        await self.sources.stop()
        background = [t for t in (self._scaler, *self._services) if t is not None]
        for task in background:
            task.cancel()
        if background:  # bounded: a task that swallowed its cancel must not hold the stop up
            _, stuck = await asyncio.wait(background, timeout=STOP_WAIT_S)
            for task in stuck:
                log.warning("%s did not stop within %g s; going on", task.get_name(), STOP_WAIT_S)
        await asyncio.gather(*(st.dispatcher.stop(grace_s) for st in self.functions.values()))
        await slo.tick(self, final=True)
        await self.membership.leave(list(self.functions))
        unbind(self.app, self.producer)
        self.functions.clear()
        if self._owns_broker:
            await self.broker.close()

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self, grace_s: float = DEFAULT_GRACE_S, *,
                    on_started: Callable[[], Awaitable[None]] | None = None,
                    on_stopping: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run until SIGINT or SIGTERM (or ``request_stop``), then stop gracefully; a second
        signal cuts the grace period short. ``on_started`` is awaited once the app runs,
        ``on_stopping`` before it stops (an HTTP server stops taking requests there)."""
        loop = asyncio.get_running_loop()
        hurry = asyncio.Event()

        def on_signal() -> None:
            (hurry if self._stop.is_set() else self._stop).set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await self.start()
            try:
                if on_started is not None:
                    await on_started()
            except BaseException:  # (say the HTTP server could not start): stop what started
                await self.stop(grace_s)
                raise
            await self._stop.wait()
            if on_stopping is not None:
                await on_stopping()
            log.info("stopping: letting in-flight work finish (grace %gs)", grace_s)
            stopper = asyncio.create_task(self.stop(grace_s))
            hurried = asyncio.create_task(hurry.wait())
            await asyncio.wait((stopper, hurried), return_when=asyncio.FIRST_COMPLETED)
            if not stopper.done():
                for st in self.functions.values():  # Ctrl-C again: no more time for work
                    st.dispatcher.hurry()
                await stopper
            hurried.cancel()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def send(self, queue: Target, data: Any, *, delay_s: float = 0.0, **attrs: Any) -> str:
        """Send one event to a queue, or publish it to a topic or append it to a stream, whichever
        ``queue`` names (see ``Producer.publish`` for the attributes)."""
        return await self.producer.send(queue, data, delay_s=delay_s, **attrs)

    async def publish(self, topic: Target, data: Any, *, subject: str | None = None,
                      attributes: dict[str, Any] | None = None, **attrs: Any) -> str:
        """Publish one event to a topic (or a queue or stream; see ``Producer.publish``)."""
        return await self.producer.publish(topic, data, subject=subject, attributes=attributes,
                                           **attrs)

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


def _empty(backlog: tuple[int | None, int, float | None, int] | None) -> bool:
    """Nothing ready, delayed or leased (and known to be so)."""
    return backlog is not None and backlog[0] == 0 and backlog[1] == 0 and backlog[3] == 0


def _reading(st: FunctionState, s: Signals, own: Observation) -> Reading:
    m, d = st.dispatcher.metrics, st.decision
    return reading((d.desired, d.reason, st.share, tuple(st.members), st.leader, st.decided_at,
                    m.succeeded, m.dead_lettered), s, own)
