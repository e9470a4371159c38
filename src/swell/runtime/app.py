"""The app: a registry of queues, topics and the functions they wake. Nothing runs until a
Runtime does (``app.publish`` opens a broker of its own when no Runtime of the app is running)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from swell.brokers.base import KiB, QueueSpec, StreamSpec, SubscriptionSpec, TopicSpec
from swell.core.config import Duration, seconds
from swell.core.errors import AppError
from swell.core.patterns import Pattern, SubjectPattern
from swell.idempotency import Idempotency
from swell.runtime.handler import Handler
from swell.runtime.retry import Retry
from swell.scaling.base import Controller
from swell.scaling.limiters import Limiter, RateLimit

if TYPE_CHECKING:
    from swell.brokers.base import Broker
    from swell.runtime.producer import Producer
    from swell.runtime.runtime import Runtime

F = TypeVar("F", bound=Callable[..., Any])

Mode = Literal["inline", "process"]


@dataclass(frozen=True, slots=True)
class Queue:
    """A declared queue: pass it to ``@app.function`` as a trigger."""

    spec: QueueSpec

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class Subscription(Queue):
    """A subscription to a topic, backed by a queue of its own: pass it to ``@app.function``."""

    subscription: SubscriptionSpec

    @property
    def topic(self) -> str:
        return self.subscription.topic


class Topic:
    """A declared topic: ``orders.subscribe("billing", subject="orders.*.created")``."""

    def __init__(self, app: App, spec: TopicSpec) -> None:
        self.app = app
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"Topic({self.name!r})"

    def subscribe(self, name: str, *, subject: str | None = None,
                  filter: str | Mapping[str, Any] | None = None,
                  visibility_timeout: Duration = 30.0, max_receives: int = 5,
                  dead_letter: str | None = None, dedup_window: Duration = 300.0) -> Subscription:
        """A subscription: the events published from now on whose routing key matches
        ``subject`` (``*`` one token, ``>`` the rest, as in NATS) and whose content matches
        ``filter`` (an EventBridge-style event pattern, as JSON or as a dict) go into its own
        queue, ``<topic>.<name>``, with its own retries, dead-letter queue and scaling. An invalid
        pattern raises ``PatternError`` here."""
        _check_name("subscription", name)
        if "." in name:
            raise AppError(f"bad subscription name {name!r}: use letters, digits, '-' or '_'")
        queue = self.app.queue(f"{self.name}.{name}", visibility_timeout=visibility_timeout,
                               max_receives=max_receives, dead_letter=dead_letter,
                               max_message_bytes=self.spec.max_message_bytes,
                               dedup_window=dedup_window, _subscription=True)
        spec = SubscriptionSpec(
            topic=self.name, name=name, queue=queue.spec,
            subject=None if subject is None else SubjectPattern.parse(subject).text,
            filter=None if filter is None else Pattern.parse(filter).json)
        sub = Subscription(queue.spec, spec)
        existing = self.app.subscriptions.get(queue.name)
        if existing is not None and existing != sub:
            raise AppError(f"subscription {name!r} of topic {self.name!r} is declared twice with "
                           "different settings")
        self.app.subscriptions[queue.name] = sub
        self.app.queues[queue.name] = sub
        return sub


@dataclass(frozen=True, slots=True)
class Group:
    """A consumer group of a stream: pass it to ``@app.function``. Each partition is worked by
    one instance at a time, in order; offsets are committed every ``checkpoint_every`` events or
    ``checkpoint_interval`` seconds, whichever comes first; an event that keeps failing goes to
    the group's dead-letter queue (``dead_letter``) and the partition moves on."""

    stream: StreamSpec
    name: str
    checkpoint_every: int
    checkpoint_interval_s: float
    dead_letter: QueueSpec

    @property
    def key(self) -> str:
        return f"{self.stream.name}/{self.name}"


class Stream:
    """A declared stream: ``app.stream("clicks", partitions=8)``; ``clicks.group("analytics")``."""

    def __init__(self, app: App, spec: StreamSpec) -> None:
        self.app = app
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"Stream({self.name!r}, partitions={self.spec.partitions})"

    def group(self, name: str, *, checkpoint_every: int = 100,
              checkpoint_interval: Duration = 1.0) -> Group:
        _check_name("group", name)
        if checkpoint_every < 1:
            raise AppError(f"group {name!r}: checkpoint_every must be at least 1")
        dlq = QueueSpec(name=f"{self.name}.{name}.dlq", max_receives=0, is_dead_letter=True,
                        max_message_bytes=self.spec.max_message_bytes + 16 * KiB)
        self.app.queues.setdefault(dlq.name, Queue(dlq))
        return Group(self.spec, name, checkpoint_every,
                     seconds(checkpoint_interval, name="checkpoint_interval"), dlq)


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

    def controller(self) -> Controller:
        """A fresh controller for one runtime (controllers keep state)."""
        return copy.deepcopy(self.concurrency)


class App:
    """Declares queues and functions.

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
        self.services: list[Callable[[Runtime], Coroutine[Any, Any, None]]] = []
        """Background work that runs beside the functions while a Runtime runs (the outbox
        relay, for one): each is started with the Runtime and cancelled when it stops."""
        self._producer: Producer | None = None  # a running Runtime's, else app.publish's own
        self._own: Broker | None = None

    def limiter(self, name: str, *, rate: str | float | None = None, burst: int | None = None,
                concurrency: int | None = None) -> Limiter:
        """A named limiter that functions share, across every process on the backend:
        ``app.limiter("payments-api", rate="100/s", concurrency=20)``."""
        if rate is None and concurrency is None:
            raise AppError(f"limiter {name!r} needs a rate, a concurrency or both")
        if concurrency is not None and concurrency < 1:
            raise AppError(f"limiter {name!r}: concurrency must be at least 1")
        lim = Limiter(name, None if rate is None else RateLimit(rate, burst), concurrency)
        if self.limiters.get(name, lim) != lim:
            raise AppError(f"limiter {name!r} is declared twice with different settings")
        self.limiters[name] = lim
        return lim

    if TYPE_CHECKING:
        from swell.sagas.saga import Saga

    def saga(self, name: str, *, step_timeout: Duration = "30s", retry: Retry | None = None,
             compensation_retry: Retry | None = None, visibility_timeout: Duration = 30.0,
             concurrency: int | Controller | None = None, retention: Duration = "7d") -> Saga:
        """Declare a saga: ordered steps, each an action and a compensation, run by the queue and
        function ``saga.<name>`` that this declares (see ``swell.sagas.Saga``)."""
        from swell.sagas.saga import Saga

        return Saga(self, name, step_timeout=step_timeout, retry=retry,
                    compensation_retry=compensation_retry, visibility_timeout=visibility_timeout,
                    concurrency=concurrency, retention=retention)

    def topic(self, name: str, *, retention: Duration = "1d", max_message_bytes: int = 256 * KiB,
              dedup_window: Duration = 300.0) -> Topic:
        """Declare a topic: ``publish`` to it, and ``subscribe`` to it. ``retention`` is how long
        a backend that keeps a topic's log (NATS) keeps it."""
        _check_name("topic", name)
        if name in self.queues:
            raise AppError(f"{name!r} is a queue already: a topic needs a name of its own (a send "
                           "to a name must know where it goes)")
        spec = TopicSpec(name=name, retention_s=seconds(retention, name="retention"),
                         max_message_bytes=max_message_bytes,
                         dedup_window_s=seconds(dedup_window, name="dedup_window"))
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
        _check_name("stream", name)
        if partitions < 1:
            raise AppError(f"stream {name!r}: partitions must be at least 1")
        spec = StreamSpec(name=name, partitions=partitions,
                          retention_s=seconds(retention, name="retention"),
                          max_message_bytes=max_message_bytes)
        existing = self.streams.get(name)
        if existing is not None:
            if existing.spec != spec:
                raise AppError(f"stream {name!r} is declared twice with different settings")
            return existing
        stream = self.streams[name] = Stream(self, spec)
        return stream

    async def publish(self, topic: Topic | str, data: Any, *, subject: str | None = None,
                      attributes: Mapping[str, Any] | None = None, broker: str | None = None,
                      **attrs: Any) -> str:
        """Publish one event to ``topic`` from anywhere (not only from a handler): through the
        running Runtime of this app, or else through a broker of the app's own (``broker``, else
        ``SWELL_BROKER`` or the embedded default), on which the app's topics and subscriptions
        are declared first. Returns the event's id. ``await app.close()`` closes that broker."""
        name = topic.name if isinstance(topic, Topic) else topic
        producer = self._producer or await self._open(broker)
        return await producer.publish(name, data, subject=subject, attributes=attributes, **attrs)

    if TYPE_CHECKING:
        from swell.outbox import Outbox

    def outbox(self, connection: Any) -> Outbox:
        """Events that go out only if ``connection``'s transaction commits (a sqlite3 or psycopg
        connection): ``with app.outbox(conn) as outbox: outbox.publish("emails", {...})`` (or
        ``async with``) writes them into its ``swell_outbox`` table; the relay publishes them.
        Neither commits nor rolls back: the caller's transaction does (see ``swell.outbox``)."""
        from swell.outbox import Outbox

        return Outbox(self, connection)

    def outbox_relay(self, connect: Callable[[], Any], *, interval: Duration = "100ms",
                     batch: int = 100) -> None:
        """Relay the outbox of the database ``connect()`` opens while a Runtime of this app runs
        (``swell run``): unsent events in order, ``batch`` at a time, every ``interval``, each
        with its event id as dedup id; failures are retried, nothing is skipped."""
        from swell.outbox import relay_service

        self.services.append(relay_service(self, connect, interval=interval, batch=batch))

    async def _open(self, url: str | None) -> Producer:
        from swell.brokers.url import open_broker
        from swell.runtime.producer import Producer

        broker = open_broker(url)
        try:
            await declare(self, broker)
        except BaseException:
            await broker.close()
            raise
        self._own = broker
        self._producer = Producer(broker, source=f"/swell/{self.name}", topics=set(self.topics))
        return self._producer

    async def close(self) -> None:
        """Close the broker ``publish`` opened (a running Runtime's is left to it)."""
        if self._own is not None:
            own, self._own, self._producer = self._own, None, None
            await own.close()

    def queue(self, name: str, *, visibility_timeout: Duration = 30.0, max_receives: int = 5,
              dead_letter: str | None = None, max_message_bytes: int = 256 * KiB,
              dedup_window: Duration = 300.0, _subscription: bool = False) -> Queue:
        """Declare a queue. After ``max_receives`` deliveries a message moves to ``dead_letter``
        (``<name>.dlq`` unless named); ``max_receives=0`` never dead-letters on its own."""
        _check_name("queue", name)
        if not _subscription and name in self.subscriptions:
            raise AppError(f"queue {name!r} is the queue of a subscription; name the queue otherwise")
        if name in self.topics:
            raise AppError(f"{name!r} is a topic already: a queue needs a name of its own")
        if max_receives < 0:
            raise AppError(f"queue {name!r}: max_receives must be >= 0")
        spec = QueueSpec(name=name, visibility_timeout_s=seconds(visibility_timeout,
                                                                 name="visibility_timeout"),
                         max_receives=max_receives, dead_letter=dead_letter,
                         max_message_bytes=max_message_bytes,
                         dedup_window_s=seconds(dedup_window, name="dedup_window"))
        existing = self.queues.get(name)
        if existing is not None and existing.spec != spec:
            raise AppError(f"queue {name!r} is declared twice with different settings")
        q = self.queues[name] = Queue(spec)
        return q

    def function(self, trigger: Queue | Group | str, *, concurrency: int | Controller | None = None,
                 retry: Retry | None = None, timeout: Duration | None = None,
                 mode: Mode = "inline", min_instances: int = 0,
                 rate_limit: RateLimit | str | None = None,
                 limiters: Sequence[Limiter | str] = (), name: str | None = None,
                 idempotency: Idempotency | None = None) -> Callable[[F], F]:
        """Run the decorated handler for every event of ``trigger``.

        ``concurrency``: a controller (``Auto(...)``, the default, scales with the work) or a fixed
        number. ``mode="process"`` runs the handler in worker processes (instances) forked from a
        warm parent; ``min_instances`` keeps that many warm. An exception retries with backoff
        (``retry``); a payload that fails validation goes to the dead-letter queue at once; a
        handler running past ``timeout`` counts as failed. ``rate_limit`` caps this function's
        calls per second; ``limiters`` names limiters shared with other functions.
        ``idempotency``: run the handler once per idempotency key (see ``swell.Idempotency``).
        """
        group = trigger if isinstance(trigger, Group) else None
        queue = self._trigger(trigger.dead_letter.name if isinstance(trigger, Group) else trigger)
        controller = _controller(concurrency)
        if mode not in ("inline", "process"):
            raise AppError(f"mode must be 'inline' or 'process', not {mode!r}")
        if min_instances < 0 or min_instances > controller.max_units:
            raise AppError(f"min_instances must be between 0 and {controller.max_units}")
        timeout_s = None if timeout is None else seconds(timeout, name="timeout")
        limit = RateLimit(rate_limit) if isinstance(rate_limit, str) else rate_limit
        names = tuple(lim.name if isinstance(lim, Limiter) else lim for lim in limiters)
        for n in names:
            if n not in self.limiters:
                raise AppError(f"unknown limiter {n!r}: declare it first with app.limiter({n!r}, ...)")

        def register(fn: F) -> F:
            fname: str = name or getattr(fn, "__name__", None) or "handler"
            if fname in self.functions:
                raise AppError(f"function {fname!r} is declared twice")
            self.functions[fname] = Function(fname, queue, Handler.inspect(fn), controller,
                                             retry or Retry(), timeout_s, mode, min_instances,
                                             limit, names, group, idempotency)
            return fn

        return register

    def _trigger(self, trigger: Queue | str) -> Queue:
        if isinstance(trigger, Queue):
            return self.queues.setdefault(trigger.name, trigger)
        if trigger in self.queues:
            return self.queues[trigger]
        raise AppError(f"unknown queue {trigger!r}: declare it first with app.queue({trigger!r})")


def _check_name(kind: str, name: str) -> None:
    if not name or any(c.isspace() for c in name):
        raise AppError(f"bad {kind} name {name!r}: use letters, digits, '.', '-' or '_'")


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
