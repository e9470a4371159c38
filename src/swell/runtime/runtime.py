"""The Runtime: declares an app's queues on a broker, runs a Dispatcher per function, and every
tick turns each function's signals into its concurrency through its controller.

A runtime is one node: with several on one broker, each decides from the function's global
readings and takes its share of the decision (see ``cluster``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import msgspec

from swell.brokers.base import Broker
from swell.brokers.url import open_broker
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.errors import SwellError
from swell.runtime.app import App, Function, declare
from swell.runtime.cluster import (
    NODES_PREFIX,
    STATUS_PREFIX,
    ClusterView,
    NodeInfo,
    for_publishing,
    leader,
    node_id,
    share,
)
from swell.runtime.dispatcher import Dispatcher
from swell.runtime.executor import Executor, InlineExecutor
from swell.runtime.groups import GroupDispatcher
from swell.runtime.producer import Producer
from swell.scaling.base import Controller, Decision
from swell.scaling.hotkeys import HotKey
from swell.scaling.limiters import SharedLimiter, TokenBucket
from swell.scaling.signals import Observation, Sampler, SignalHistory, Signals

log = logging.getLogger("swell.runtime")

DEFAULT_GRACE_S = 30.0
TICK_S = 0.5
STOP_WAIT_S = 10.0


@dataclass
class FunctionState:
    """What the runtime knows of one running function."""

    fn: Function
    dispatcher: Dispatcher | GroupDispatcher
    controller: Controller
    sampler: Sampler = field(default_factory=Sampler)
    history: SignalHistory = field(default_factory=SignalHistory)
    view: ClusterView = field(default_factory=ClusterView)
    decision: Decision = field(default_factory=lambda: Decision(0, "start"))
    """The controller's decision for the function as a whole."""
    share: int = 0
    """This node's part of it."""
    nodes: int = 1
    leader: str = ""
    decided_at: float = 0.0
    applied: int = -1

    @property
    def signals(self) -> Signals | None:
        return self.history.latest()


class FunctionStatus(msgspec.Struct, kw_only=True):
    """A function on one node, kept in the kv store: what ``swell status`` shows, and what the
    other nodes merge into their global readings (``obs``, this node's own)."""

    app: str
    function: str
    node: str
    queue: str
    mode: str
    controller: str
    desired: int
    """The decision for the function on all nodes together (the leader's)."""
    share: int
    """This node's part of ``desired``."""
    nodes: int
    leader: str
    decided_at: float
    """When the leader made the decision (its wall clock): nodes that show the same have applied
    the same decision."""
    reason: str
    signals: dict[str, Any]
    """The global signals the decision was made on."""
    obs: Observation
    group: str | None = None
    """``stream/group`` for a function on a consumer group."""
    partitions: list[int] = []
    """A group's partitions this node works."""
    lags: list[int] = []
    """A group's lag per partition."""
    hot_keys: list[HotKey] = []
    succeeded: int
    dead_lettered: int
    at: float


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
                                 topics=app.topics)
        self.functions: dict[str, FunctionState] = {}
        self.node = node_id()
        self.started = time.time()
        self._shared: dict[str, SharedLimiter] = {}
        self._last_peers: dict[str, dict[str, FunctionStatus]] = {}
        self._stop = asyncio.Event()
        self._scaler: asyncio.Task[None] | None = None
        self._services: list[asyncio.Task[None]] = []

    @property
    def dispatchers(self) -> dict[str, Dispatcher | GroupDispatcher]:
        return {name: st.dispatcher for name, st in self.functions.items()}

    async def declare(self) -> None:
        """Create (or update) every topic, subscription and queue the app declares."""
        await declare(self.app, self.broker)

    def _executor(self, fn: Function, controller: Controller) -> Executor:
        if fn.mode == "process":
            from swell.runtime.process import ProcessExecutor

            return ProcessExecutor(fn, self.producer, controller.max_units, fn.min_instances)
        return InlineExecutor(fn, self.producer, controller.max_units)

    def _dispatcher(self, fn: Function, controller: Controller) -> Dispatcher | GroupDispatcher:
        if fn.group is not None:
            return GroupDispatcher(fn, self.broker, self.producer, self.clock,
                                   self._executor(fn, controller), self.node)
        shared = tuple(self._shared.setdefault(
            n, SharedLimiter(self.app.limiters[n], self.broker.kv, self.clock)) for n in fn.limiters)
        bucket = None if fn.rate_limit is None else TokenBucket(fn.rate_limit, self.clock)
        return Dispatcher(fn, self.broker, self.producer, self.clock, fn.queue.spec,
                          self._executor(fn, controller), bucket=bucket, shared=shared)

    async def start(self) -> None:
        await self.declare()
        self.app._producer = self.producer  # app.publish goes through this runtime now
        peers = await self._peers()
        for fn in self.app.functions.values():
            controller = fn.controller()
            st = FunctionState(fn, self._dispatcher(fn, controller), controller)
            self.functions[fn.name] = st
            # a first decision on no data: a fixed pool starts full, Auto starts cold
            first = Signals(t=self.clock.monotonic(), depth=None, in_flight=0)
            st.decision = controller.decide(first)
            await self._apply(st, peers.get(fn.name, {}))
            if isinstance(st.dispatcher, GroupDispatcher):
                await st.dispatcher.lag()  # work waiting at start: a unit now (its activator)
            st.dispatcher.start()
            # announced at once, so a node starting next counts this one from its start
            await self._publish_status(st, first, st.dispatcher.observe(first.t, None, 0, None))
        await self._heartbeat()
        self._scaler = asyncio.create_task(self._scale_loop(), name="swell:scaler")
        self._services = [asyncio.create_task(service(self), name=f"swell:{service.__name__}")
                          for service in self.app.services]
        log.info("running %d function(s) of %r as node %s", len(self.functions), self.app.name,
                 self.node)

    async def _scale_loop(self) -> None:
        while True:
            await self.clock.sleep(self.tick_s)
            try:
                await self.tick()
            except SwellError as exc:  # a backend hiccup: the next tick tries again
                log.warning("scaling tick failed: %s", exc)

    async def tick(self) -> None:
        """Sample every function (with its peers' readings), ask its controller, take this node's
        share of the leader's decision, publish the status and the heartbeat."""
        peers = await self._peers()
        for st in self.functions.values():
            depth, delayed, age = await self._backlog(st)
            own = st.dispatcher.observe(self.clock.monotonic(), depth, delayed, age)
            fn_peers = peers.get(st.fn.name, {})
            s = st.sampler.observe(st.view.merge(own, {n: p.obs for n, p in fn_peers.items()}))
            st.history.append(s)
            st.decision = st.controller.decide(s)
            await self._apply(st, fn_peers)
            await self._publish_status(st, s, own)
        await self._heartbeat()

    async def _backlog(self, st: FunctionState) -> tuple[int | None, int, float | None]:
        """(depth, delayed, age of the oldest) of a function's work; a group's depth is its lag.
        ``None`` depth: no data (controllers hold)."""
        if isinstance(st.dispatcher, GroupDispatcher):
            return await st.dispatcher.lag(), 0, None
        try:
            stats = await self.broker.stats(st.fn.queue.name)
        except SwellError:
            return None, 0, None
        return stats.depth, stats.delayed, stats.oldest_age_s

    async def _apply(self, st: FunctionState, peers: dict[str, FunctionStatus]) -> None:
        """Take this node's share of the function's decision (and of its warm floor): its own
        controller's if it leads the function, else the leader's latest."""
        nodes = sorted({self.node, *peers})
        rank, st.nodes = nodes.index(self.node), len(nodes)
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
        elif st.decision.desired != st.applied:
            st.decided_at = self.clock.time()  # this node leads, and its decision is a new one
        st.applied = st.decision.desired
        st.share = share(st.decision.desired, rank, st.nodes, st.fn.name)
        floor = share(st.fn.min_instances, rank, st.nodes, st.fn.name)
        d = st.dispatcher
        if isinstance(d, GroupDispatcher):
            await d.set_limit(max(st.share, floor))
            try:
                await d.rebalance(nodes, leads=st.leader == self.node)
            except SwellError as exc:
                log.warning("%s: rebalance failed: %s", st.fn.name, exc)
            return
        # from zero, every node waits for the first event; above zero, only the shares work
        d.activator = st.decision.desired == 0
        await d.set_limit(max(st.share, floor))

    async def _peers(self) -> dict[str, dict[str, FunctionStatus]]:
        """The other live nodes' latest status per function: ``{function: {node: status}}``. If
        the kv store does not answer, the last known peers (never "alone", which would let this
        node take every share)."""
        try:
            entries = await self.broker.kv.scan(f"{STATUS_PREFIX}{self.app.name}/")
        except SwellError as exc:
            log.warning("could not read the other nodes' status: %s", exc)
            return self._last_peers
        peers: dict[str, dict[str, FunctionStatus]] = {}
        for e in entries:
            try:
                status = msgspec.json.decode(e.value, type=FunctionStatus)
            except msgspec.ValidationError:
                continue  # a record of another swell version
            if status.node != self.node:
                peers.setdefault(status.function, {})[status.node] = status
        self._last_peers = peers
        return peers

    def _key(self, prefix: str, *parts: str) -> str:
        return "/".join((f"{prefix}{self.app.name}", *parts, self.node))

    async def _publish_status(self, st: FunctionState, s: Signals, own: Observation) -> None:
        m = st.dispatcher.metrics
        status = FunctionStatus(
            app=self.app.name, function=st.fn.name, node=self.node, queue=st.fn.queue.name,
            mode=st.fn.mode, controller=repr(st.controller), desired=st.decision.desired,
            share=st.share, nodes=st.nodes, leader=st.leader, decided_at=st.decided_at,
            reason=st.decision.reason, signals=_asdict(s),
            obs=for_publishing(own), succeeded=m.succeeded, dead_lettered=m.dead_lettered,
            at=self.clock.time())
        if isinstance(st.dispatcher, GroupDispatcher):
            g = st.dispatcher
            status = msgspec.structs.replace(status, group=g.group.key, partitions=g.partitions,
                                             lags=g.lags, hot_keys=g.hot_keys())
        await self.broker.kv.put(self._key(STATUS_PREFIX, st.fn.name), msgspec.json.encode(status),
                                 ttl_s=self._ttl_s)

    async def _heartbeat(self) -> None:
        info = NodeInfo(
            app=self.app.name, node=self.node, host=socket.gethostname(), pid=os.getpid(),
            started=self.started, seen=self.clock.time(),
            functions={name: st.share for name, st in self.functions.items()},
            in_flight=sum(st.dispatcher.in_flight for st in self.functions.values()))
        await self.broker.kv.put(self._key(NODES_PREFIX), msgspec.json.encode(info),
                                 ttl_s=self._ttl_s)

    @property
    def _ttl_s(self) -> float:
        """How long a node's entries outlive its last tick: a node silent for this long is gone."""
        return max(5.0, 4 * self.tick_s)

    async def stop(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Graceful stop: no new leases, in-flight work finishes within ``grace_s``, the rest is
        released so another process gets it at once."""
        background = [t for t in (self._scaler, *self._services) if t is not None]
        for task in background:
            task.cancel()
        if background:  # bounded: a task that swallowed its cancel must not hold the stop up
            _, stuck = await asyncio.wait(background, timeout=STOP_WAIT_S)
            for task in stuck:
                log.warning("%s did not stop within %g s; going on", task.get_name(), STOP_WAIT_S)
        await asyncio.gather(*(st.dispatcher.stop(grace_s) for st in self.functions.values()))
        for key in [self._key(STATUS_PREFIX, name) for name in self.functions]:
            await _forget(self.broker, key)
        await _forget(self.broker, self._key(NODES_PREFIX))
        if self.app._producer is self.producer:
            self.app._producer = None
        self.functions.clear()
        if self._owns_broker:
            await self.broker.close()

    def request_stop(self) -> None:
        self._stop.set()

    def hurry(self) -> None:
        for st in self.functions.values():
            st.dispatcher.hurry()

    async def serve(self, grace_s: float = DEFAULT_GRACE_S, *,
                    on_started: Callable[[], None] | None = None) -> None:
        """Run until SIGINT or SIGTERM (or ``request_stop``), then stop gracefully; a second
        signal cuts the grace period short. ``on_started`` is called once the app runs."""
        loop = asyncio.get_running_loop()
        hurry = asyncio.Event()

        def on_signal() -> None:
            (hurry if self._stop.is_set() else self._stop).set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await self.start()
            if on_started is not None:
                on_started()
            await self._stop.wait()
            log.info("stopping: letting in-flight work finish (grace %gs)", grace_s)
            stopper = asyncio.create_task(self.stop(grace_s))
            hurried = asyncio.create_task(hurry.wait())
            await asyncio.wait((stopper, hurried), return_when=asyncio.FIRST_COMPLETED)
            if not stopper.done():
                self.hurry()  # Ctrl-C again: give in-flight work no more time
                await stopper
            hurried.cancel()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def send(self, queue: str, data: Any, *, delay_s: float = 0.0, **attrs: Any) -> str:
        """Send one event to ``queue``, or publish it if that is a topic (see ``Producer.event``
        for the attributes)."""
        return await self.producer.send(queue, data, delay_s=delay_s, **attrs)

    async def publish(self, topic: str, data: Any, *, subject: str | None = None,
                      attributes: dict[str, Any] | None = None, **attrs: Any) -> str:
        """Publish one event to ``topic`` (see ``Producer.publish``)."""
        return await self.producer.publish(topic, data, subject=subject, attributes=attributes,
                                           **attrs)

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


def _asdict(s: Signals) -> dict[str, Any]:
    return {name: getattr(s, name) for name in s.__dataclass_fields__}


async def _forget(broker: Broker, key: str) -> None:
    with suppress(SwellError):
        await broker.kv.delete(key)
