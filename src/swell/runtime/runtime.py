"""The Runtime: declares an app's queues on a broker, runs a Dispatcher per function, and every
tick turns each function's signals into its concurrency through its controller."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from contextlib import suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import msgspec

from swell.brokers.base import Broker
from swell.brokers.url import open_broker
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.errors import SwellError
from swell.runtime.app import App, Function
from swell.runtime.dispatcher import Dispatcher
from swell.runtime.executor import Executor, InlineExecutor
from swell.runtime.producer import Producer
from swell.scaling.base import Controller, Decision
from swell.scaling.limiters import SharedLimiter, TokenBucket
from swell.scaling.signals import Sampler, SignalHistory, Signals

log = logging.getLogger("swell.runtime")

DEFAULT_GRACE_S = 30.0
TICK_S = 0.5
STATUS_PREFIX = "swell/status/"


@dataclass
class FunctionState:
    """What the runtime knows of one running function."""

    fn: Function
    dispatcher: Dispatcher
    controller: Controller
    sampler: Sampler = field(default_factory=Sampler)
    history: SignalHistory = field(default_factory=SignalHistory)
    decision: Decision = field(default_factory=lambda: Decision(0, "start"))

    @property
    def signals(self) -> Signals | None:
        return self.history.latest()


class FunctionStatus(msgspec.Struct, kw_only=True):
    """What ``swell status`` shows of a function on one node (kept in the kv store)."""

    app: str
    function: str
    node: str
    queue: str
    mode: str
    controller: str
    desired: int
    reason: str
    signals: dict[str, Any]
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
        self.producer = Producer(self.broker, source=f"/swell/{app.name}", clock=clock)
        self.functions: dict[str, FunctionState] = {}
        self.node = f"{socket.gethostname()}-{os.getpid()}"
        self._shared: dict[str, SharedLimiter] = {}
        self._stop = asyncio.Event()
        self._scaler: asyncio.Task[None] | None = None

    @property
    def dispatchers(self) -> dict[str, Dispatcher]:
        return {name: st.dispatcher for name, st in self.functions.items()}

    async def declare(self) -> None:
        """Create (or update) every queue the app declares."""
        for q in self.app.queues.values():
            await self.broker.declare_queue(q.spec)

    def _executor(self, fn: Function, controller: Controller) -> Executor:
        if fn.mode == "process":
            from swell.runtime.process import ProcessExecutor

            return ProcessExecutor(fn, self.producer, controller.max_units, fn.min_instances)
        return InlineExecutor(fn, self.producer, controller.max_units)

    def _dispatcher(self, fn: Function, controller: Controller) -> Dispatcher:
        shared = tuple(self._shared.setdefault(
            n, SharedLimiter(self.app.limiters[n], self.broker.kv, self.clock)) for n in fn.limiters)
        bucket = None if fn.rate_limit is None else TokenBucket(fn.rate_limit, self.clock)
        return Dispatcher(fn, self.broker, self.producer, self.clock, fn.queue.spec,
                          self._executor(fn, controller), bucket=bucket, shared=shared)

    async def start(self) -> None:
        await self.declare()
        for fn in self.app.functions.values():
            controller = fn.controller()
            st = FunctionState(fn, self._dispatcher(fn, controller), controller)
            self.functions[fn.name] = st
            # a first decision on no data: a fixed pool starts full, Auto starts cold
            st.decision = controller.decide(Signals(t=self.clock.monotonic(), depth=None,
                                                    in_flight=0))
            await st.dispatcher.set_limit(max(st.decision.desired, fn.min_instances))
            st.dispatcher.start()
        self._scaler = asyncio.create_task(self._scale_loop(), name="swell:scaler")
        log.info("running %d function(s) of %r", len(self.functions), self.app.name)

    async def _scale_loop(self) -> None:
        while True:
            await self.clock.sleep(self.tick_s)
            try:
                await self.tick()
            except SwellError as exc:  # a backend hiccup: the next tick tries again
                log.warning("scaling tick failed: %s", exc)

    async def tick(self) -> None:
        """Sample every function, ask its controller, apply the decision, publish the status."""
        for st in self.functions.values():
            try:
                stats = await self.broker.stats(st.fn.queue.name)
                depth, delayed, age = stats.depth, stats.delayed, stats.oldest_age_s
            except SwellError:
                depth, delayed, age = None, 0, None  # no data: controllers hold
            obs = st.dispatcher.observe(self.clock.monotonic(), depth, delayed, age)
            s = st.sampler.observe(obs)
            st.history.append(s)
            st.decision = st.controller.decide(s)
            await st.dispatcher.set_limit(max(st.decision.desired, st.fn.min_instances))
            await self._publish_status(st, s)

    async def _publish_status(self, st: FunctionState, s: Signals) -> None:
        m = st.dispatcher.metrics
        status = FunctionStatus(
            app=self.app.name, function=st.fn.name, node=self.node, queue=st.fn.queue.name,
            mode=st.fn.mode, controller=repr(st.controller), desired=st.decision.desired,
            reason=st.decision.reason, signals=_asdict(s),
            succeeded=m.succeeded, dead_lettered=m.dead_lettered, at=self.clock.time())
        key = f"{STATUS_PREFIX}{self.app.name}/{st.fn.name}/{self.node}"
        await self.broker.kv.put(key, msgspec.json.encode(status), ttl_s=max(5.0, 4 * self.tick_s))

    async def stop(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Graceful stop: no new leases, in-flight work finishes within ``grace_s``, the rest is
        released so another process gets it at once."""
        if self._scaler is not None:
            self._scaler.cancel()
            await asyncio.gather(self._scaler, return_exceptions=True)
        await asyncio.gather(*(st.dispatcher.stop(grace_s) for st in self.functions.values()))
        for st in self.functions.values():
            await _forget(self.broker, f"{STATUS_PREFIX}{self.app.name}/{st.fn.name}/{self.node}")
        self.functions.clear()
        if self._owns_broker:
            await self.broker.close()

    def request_stop(self) -> None:
        self._stop.set()

    def hurry(self) -> None:
        for st in self.functions.values():
            st.dispatcher.hurry()

    async def serve(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Run until SIGINT or SIGTERM (or ``request_stop``), then stop gracefully; a second
        signal cuts the grace period short."""
        loop = asyncio.get_running_loop()
        hurry = asyncio.Event()

        def on_signal() -> None:
            (hurry if self._stop.is_set() else self._stop).set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await self.start()
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
        """Send one event to ``queue`` (see ``Producer.event`` for the attributes)."""
        return await self.producer.send(queue, data, delay_s=delay_s, **attrs)

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
