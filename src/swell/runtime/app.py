"""The app: a declaration of queues, topics, streams, the functions they wake, limiters, sagas and
outbox relays. It holds no broker: a Runtime runs it, a ``swell.Client`` sends from outside
(``app.publish`` is a thin shim over one, or over the app's running Runtime)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from swell.brokers.base import KiB, QueueSpec, StreamSpec, TopicSpec
from swell.core.config import Duration, Size, seconds
from swell.core.cost import Budget
from swell.core.errors import AppError
from swell.core.retry import Retry
from swell.core.slo import SLO
from swell.patterns.idempotency import Idempotency
from swell.runtime.app_sources import SourceDeclarations
from swell.runtime.app_windows import WindowDeclarations
from swell.runtime.channels import (
    MAX_PARTITIONS,
    Group,
    Queue,
    Stream,
    Subscription,
    Topic,
    check_name,
    derived,
    message_bytes,
    whole_count,
)
from swell.runtime.client import close_own, producer_for
from swell.runtime.context import Context
from swell.runtime.cost import declared
from swell.runtime.handler import Handler
from swell.scaling.base import Controller
from swell.scaling.limiters import Limiter, RateLimit

if TYPE_CHECKING:
    from swell.brokers.base import Broker
    from swell.runtime.app_windows import WindowSpec
    from swell.runtime.runtime import Runtime
    from swell.triggers.base import Source

__all__ = ["App", "Function", "Group", "Mode", "Queue", "Stream", "Subscription", "Topic", "declare"]

F = TypeVar("F", bound=Callable[..., Any])

Mode = Literal["inline", "process"]


@dataclass(frozen=True, slots=True)
class Function:
    """A handler with its trigger and policies."""

    name: str
    queue: Queue
    handler: Handler
    concurrency: Controller
    """A prototype: each runtime works with its own copy (``controller()``)."""
    retry: Retry
    timeout_s: float | None
    mode: Mode = "inline"
    min_instances: int = 0
    rate_limit: RateLimit | None = None
    limiters: tuple[str, ...] = ()
    group: Group | None = None
    """For a function on a stream's consumer group (its ``queue`` is then the group's dead-letter
    queue)."""
    idempotency: Idempotency | None = None
    competing: bool = False
    """Declared to share its queue (or group) with other functions, each event going to one."""
    window: WindowSpec | None = None
    """For a window function (``app.window``): what its operator does with the group's events."""
    slo: SLO | None = None
    """What it promises (latency, success), watched with burn-rate alerts (``swell slo``)."""
    memory: int | None = None
    """Bytes a process instance is priced at (``None``: ``[tool.swell.cost]``'s default)."""
    budget_per_h: float | None = None
    """Dollars per hour its projected spend may reach: caps ``Auto``'s max (``swell cost``)."""
    workload: str = ""
    """The tag its cost is summed under with other functions' (its name unless given)."""

    @property
    def consumes(self) -> str:
        """What it consumes: its queue, or its stream's consumer group."""
        return f"group {self.group.key!r}" if self.group is not None else f"queue {self.queue.name!r}"

    def controller(self) -> Controller:
        """A fresh controller for one runtime (controllers keep state)."""
        return copy.deepcopy(self.concurrency)


class App(SourceDeclarations, WindowDeclarations):
    """Declares queues, topics, streams, trigger sources and functions.

    >>> app = App("shop")
    >>> orders = app.queue("orders", visibility_timeout=30, max_receives=5)
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.queues: dict[str, Queue] = {}
        self.topics: dict[str, Topic] = {}
        self.streams: dict[str, Stream] = {}
        self.subscriptions: dict[str, Subscription] = {}
        """By the name of their queue."""
        self.functions: dict[str, Function] = {}
        self.limiters: dict[str, Limiter] = {}
        self.sources: dict[str, Source] = {}
        """Trigger sources (webhooks, schedules, watches), by name: see ``app_sources``."""
        self.services: list[Callable[[Runtime], Coroutine[Any, Any, None]]] = []
        """Background work that runs beside the functions while a Runtime runs (the outbox
        relay, for one): each is started with the Runtime and cancelled when it stops."""

    def limiter(self, name: str, *, rate: str | float | None = None, burst: int | None = None,
                concurrency: int | None = None) -> Limiter:
        """A named limiter that functions share, across every process on the backend:
        ``app.limiter("payments-api", rate="100/s", concurrency=20)``."""
        if rate is None and concurrency is None:
            raise AppError(f"limiter {name!r} needs a rate, a concurrency or both")
        if concurrency is not None:
            whole_count(concurrency, f"limiter {name!r}: concurrency", low=1)
        lim = Limiter(name, None if rate is None else RateLimit(rate, burst), concurrency)
        if self.limiters.get(name, lim) != lim:
            raise AppError(f"limiter {name!r} is declared twice with different settings")
        self.limiters[name] = lim
        return lim

    if TYPE_CHECKING:
        from swell.patterns.sagas.saga import Saga

    def saga(self, name: str, *, step_timeout: Duration = "30s", retry: Retry | None = None,
             compensation_retry: Retry | None = None, visibility_timeout: Duration = 30.0,
             concurrency: int | Controller | None = None, retention: Duration = "7d") -> Saga:
        """Declare a saga: ordered steps, each an action and a compensation, run by the queue and
        function ``saga.<name>`` that this declares (see ``swell.patterns.sagas.Saga``)."""
        from swell.patterns.sagas.saga import Saga

        saga = Saga(name, connect=functools.partial(producer_for, self), step_timeout=step_timeout,
                    retry=retry, compensation_retry=compensation_retry, retention=retention)
        if saga.queue_name in self.functions:
            raise AppError(f"saga {name!r} is declared twice")
        # max_receives=0: crashes bring a message back any number of times; a saga is never
        # dead-lettered (its log says when it is stuck), and its runner's own errors retry
        queue = self.queue(saga.queue_name, visibility_timeout=visibility_timeout, max_receives=0)

        async def run(message: dict[str, Any], ctx: Context) -> None:
            await saga.run(message, ctx, producer=ctx.producer, wake=ctx.event.id)

        self.function(queue, concurrency=concurrency, name=saga.queue_name,
                      retry=Retry(backoff=0.5, max_backoff=30.0))(run)
        return saga

    def topic(self, name: str, *, retention: Duration = "1d", max_message_bytes: int = 256 * KiB,
              dedup_window: Duration = 300.0) -> Topic:
        """Declare a topic: ``publish`` to it, and ``subscribe`` to it. ``retention`` is how long
        a backend that keeps a topic's log (NATS) keeps it."""
        check_name("topic", name)
        self._check_free(name, "topic")
        what = f"topic {name!r}"
        spec = TopicSpec(name=name,
                         retention_s=seconds(retention, name=f"{what}: retention", positive=True),
                         max_message_bytes=message_bytes(what, max_message_bytes),
                         dedup_window_s=seconds(dedup_window, name=f"{what}: dedup_window"))
        existing = self.topics.get(name)
        if existing is not None:
            if existing.spec != spec:
                raise AppError(f"topic {name!r} is declared twice with different settings")
            return existing
        topic = self.topics[name] = Topic(self, spec)
        return topic

    def stream(self, name: str, *, partitions: int = 8, retention: Duration = "7d",
               max_message_bytes: int = 256 * KiB) -> Stream:
        """Declare a partitioned stream: an event's partition is a stable hash of its ``key``;
        order holds per partition; events older than ``retention`` may be dropped."""
        check_name("stream", name)
        self._check_free(name, "stream")
        what = f"stream {name!r}"
        spec = StreamSpec(name=name,
                          partitions=whole_count(partitions, f"{what}: partitions", low=1,
                                            high=MAX_PARTITIONS),
                          retention_s=seconds(retention, name=f"{what}: retention", positive=True),
                          max_message_bytes=message_bytes(what, max_message_bytes))
        existing = self.streams.get(name)
        if existing is not None:
            if existing.spec != spec:
                raise AppError(f"stream {name!r} is declared twice with different settings")
            return existing
        stream = self.streams[name] = Stream(self, spec)
        return stream

    async def publish(self, target: Queue | Topic | Stream | str, data: Any, *,
                      subject: str | None = None, key: str | None = None,
                      attributes: Mapping[str, Any] | None = None, broker: str | None = None,
                      **attrs: Any) -> str:
        """Put one event where ``target`` (a declared queue, topic or stream, or its name) says,
        from anywhere (not only from a handler): send it to a queue, publish it to a topic
        (``subject`` is its routing key) or append it to a stream (``key`` is its partition key;
        without one the event's id is, so events spread over the partitions). It goes through
        the running Runtime of this app, or else through a broker of the app's own (``broker``,
        else ``SWELL_BROKER`` or the embedded default), on which everything the app declares is
        declared first. Returns the event's id. ``await app.close()`` closes that broker."""
        producer = await producer_for(self, broker)
        return await producer.publish(target, data, subject=subject, key=key,
                                      attributes=attributes, **attrs)

    if TYPE_CHECKING:
        from swell.patterns.outbox import Outbox

    def outbox(self, connection: Any) -> Outbox:
        """Events that go out only if ``connection``'s transaction commits (a sqlite3 or psycopg
        connection): ``with app.outbox(conn) as outbox: outbox.publish("emails", {...})`` (or
        ``async with``) writes them into its ``swell_outbox`` table; the relay publishes them.
        Neither commits nor rolls back: the caller's transaction does (see ``swell.patterns.outbox``)."""
        from swell.patterns.outbox import Outbox

        return Outbox(self, connection)

    def outbox_relay(self, connect: Callable[[], Any], *, interval: Duration = "100ms",
                     batch: int = 100) -> None:
        """Relay the outbox of the database ``connect()`` opens while a Runtime of this app runs
        (``swell run``): unsent events in order, ``batch`` at a time, every ``interval``, each
        with its event id as dedup id; failures are retried, nothing is skipped."""
        from swell.patterns.outbox import relay_service

        self.services.append(relay_service(self, connect, interval=interval, batch=batch))

    async def close(self) -> None:
        """Close the broker ``publish`` opened (a running Runtime's is left to it)."""
        await close_own(self)

    def queue(self, name: str, *, visibility_timeout: Duration = 30.0, max_receives: int = 5,
              dead_letter: str | None = None, max_message_bytes: int = 256 * KiB,
              dedup_window: Duration = 300.0, _subscription: bool = False) -> Queue:
        """Declare a queue. After ``max_receives`` deliveries a message moves to ``dead_letter``
        (``<name>.dlq`` unless named); ``max_receives=0`` never dead-letters on its own."""
        check_name("queue", name)
        if not _subscription and name in self.subscriptions:
            raise AppError(f"queue {name!r} is the queue of a subscription; name the queue otherwise")
        self._check_free(name, "queue")
        what = f"queue {name!r}"
        if dead_letter is not None:
            check_name("dead-letter queue", dead_letter)
        else:
            derived(f"{name}.dlq", f"the dead-letter queue of {what}")
        spec = QueueSpec(name=name,
                         visibility_timeout_s=seconds(visibility_timeout,
                                                      name=f"{what}: visibility_timeout",
                                                      positive=True),
                         max_receives=whole_count(max_receives, f"{what}: max_receives"),
                         dead_letter=dead_letter,
                         max_message_bytes=message_bytes(what, max_message_bytes),
                         dedup_window_s=seconds(dedup_window, name=f"{what}: dedup_window"))
        existing = self.queues.get(name)
        if existing is not None and existing.spec != spec:
            raise AppError(f"queue {name!r} is declared twice with different settings")
        q = self.queues[name] = Queue(spec)
        return q

    def function(self, trigger: Queue | Group | Source | str, *, concurrency: int | Controller | None = None,
                 retry: Retry | None = None, timeout: Duration | None = None,
                 mode: Mode = "inline", min_instances: int = 0,
                 rate_limit: RateLimit | str | None = None,
                 limiters: Sequence[Limiter | str] = (), name: str | None = None,
                 idempotency: Idempotency | None = None,
                 competing: bool = False, slo: SLO | None = None, memory: Size | None = None,
                 budget: Budget | None = None, workload: str | None = None) -> Callable[[F], F]:
        """Run the decorated handler for every event of ``trigger``.

        ``concurrency``: a controller (``Auto(...)``, the default, scales with the work) or a fixed
        number. ``mode="process"`` runs the handler in worker processes (instances) forked from a
        warm parent; ``min_instances`` keeps that many warm. An exception retries with backoff
        (``retry``); a payload that fails validation goes to the dead-letter queue at once; a
        handler running past ``timeout`` counts as failed. ``rate_limit`` caps this function's
        calls per second; ``limiters`` names limiters shared with other functions.
        ``idempotency``: run the handler once per idempotency key (see ``swell.Idempotency``).
        ``slo``: its objectives, counted by the runtime with burn-rate alerts (see ``swell.SLO``).
        ``memory`` (``"512MiB"``) prices a process instance; ``budget`` (``"$2/h"``) caps ``Auto``'s
        max at what the spend allows; ``workload`` tags its cost (``swell cost``).

        One queue (or consumer group) feeds one function: each event goes to one consumer, so a
        second function on it would take a share of the events, not a copy of each. For each
        function to get every event, publish to a topic and give each its own subscription. Two
        or more functions that are meant to split the events pass ``competing=True``, each of them
        (the first one declared too: whoever reads it learns that it gets only a share).
        """
        group = trigger if isinstance(trigger, Group) else None
        queue = self._trigger(trigger.dead_letter.name if isinstance(trigger, Group) else trigger)
        controller = _controller(concurrency)
        if mode not in ("inline", "process"):
            raise AppError(f"mode must be 'inline' or 'process', not {mode!r}")
        whole_count(min_instances, "min_instances", high=controller.max_units)
        timeout_s = None if timeout is None else seconds(timeout, name="timeout", positive=True)
        if slo is not None and not isinstance(slo, SLO):
            raise AppError(f"slo must be an SLO(...), not {slo!r}")
        limit = RateLimit(rate_limit) if isinstance(rate_limit, str) else rate_limit
        names = tuple(lim.name if isinstance(lim, Limiter) else lim for lim in limiters)
        for n in names:
            if n not in self.limiters:
                raise AppError(f"unknown limiter {n!r}: declare it first with app.limiter({n!r}, ...)")

        def register(fn: F) -> F:
            fname: str = name or getattr(fn, "__name__", None) or "handler"
            if fname in self.functions:
                raise AppError(f"function {fname!r} is declared twice")
            size, budget_h, tag = declared(fname, mode, controller, memory, budget, workload)
            new = Function(fname, queue, Handler.inspect(fn), controller, retry or Retry(),
                           timeout_s, mode, min_instances, limit, names, group, idempotency,
                           competing, slo=slo, memory=size, budget_per_h=budget_h, workload=tag)
            self._check_sharing(new)
            self.functions[fname] = new
            return fn

        return register

    def _check_sharing(self, new: Function) -> None:
        """Refuse a second function on one queue or group unless each says ``competing=True``."""
        others = [f for f in self.functions.values() if f.consumes == new.consumes]
        if not others or (new.competing and all(f.competing for f in others)):
            return
        names = ", ".join(repr(f.name) for f in others)
        if new.group is not None:
            hint = (f"for each to see every event, give each a group of its own (another "
                    f"group of stream {new.group.stream.name!r})")
        else:
            topic = self.subscriptions.get(new.queue.name)
            hint = ("for each to get every event, publish to a topic and give each function its "
                    "own subscription" + (f" (another {topic.topic}.subscribe(...))" if topic else
                                          " (app.topic(...).subscribe(...))"))
        raise AppError(f"{new.consumes} already feeds function {names}: two functions on it split its "
                       f"events between them, each event to one; {hint}; if they are meant to "
                       "compete for the events, pass competing=True to each of them")

    def _check_free(self, name: str, kind: str) -> None:
        """Refuse a name another kind of target has: a publish to a name must know where it goes."""
        for other, names in (("queue", self.queues), ("topic", self.topics),
                             ("stream", self.streams)):
            if other != kind and name in names:
                article = "an" if kind[0] in "aeiou" else "a"
                raise AppError(f"{name!r} is a {other} already: {article} {kind} needs a name of "
                               "its own (a publish to a name must know where it goes)")

    def _trigger(self, trigger: Queue | Source | str) -> Queue:
        if not isinstance(trigger, Queue | str):  # a source: the queue its events go to
            if trigger.target not in self.queues:
                raise AppError(f"source {trigger.name!r} puts its events on {trigger.target!r}, "
                               "not a queue: a function takes a queue, or a subscription of a topic")
            return self.queues[trigger.target]
        if isinstance(trigger, Queue):
            return self.queues.setdefault(trigger.name, trigger)
        if trigger in self.queues:
            return self.queues[trigger]
        raise AppError(f"unknown queue {trigger!r}: declare it first with app.queue({trigger!r})")


async def declare(app: App, broker: Broker) -> None:
    """Create (or update) what the app declares on ``broker``: its topics, their subscriptions
    (each with its queue), and its other queues."""
    for topic in app.topics.values():
        await broker.declare_topic(topic.spec)
    for sub in app.subscriptions.values():
        await broker.subscribe(sub.subscription)
    for q in app.queues.values():
        if q.name not in app.subscriptions:
            await broker.declare_queue(q.spec)
    for stream in app.streams.values():
        await broker.declare_stream(stream.spec)


def _controller(concurrency: int | Controller | None) -> Controller:
    from swell.scaling.auto import Auto
    from swell.scaling.controllers import Fixed

    if concurrency is None:
        return Auto()
    if isinstance(concurrency, bool) or not isinstance(concurrency, int | Controller):
        raise AppError(f"concurrency must be a number or a controller such as Auto(), "
                       f"not {concurrency!r}")
    if isinstance(concurrency, int):
        if concurrency < 1:
            raise AppError(f"concurrency must be at least 1, got {concurrency}")
        return Fixed(concurrency)
    return concurrency
