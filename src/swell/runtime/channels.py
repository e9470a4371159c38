"""What an app declares to carry events: queues, topic subscriptions, topics, streams and their
consumer groups, and the one naming rule every backend takes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swell.brokers.base import KiB, QueueSpec, StreamSpec, SubscriptionSpec, TopicSpec
from swell.core.config import MAX_COUNT, Duration, seconds, whole
from swell.core.errors import AppError, ConfigError
from swell.core.filters import Pattern, SubjectPattern

if TYPE_CHECKING:
    from swell.runtime.app import App


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
        check_name("subscription", name, dots=False)
        derived(f"{self.name}.{name}", f"the queue of subscription {name!r}")
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
        check_name("group", name, dots=False)
        whole_count(checkpoint_every, f"group {name!r}: checkpoint_every", low=1)
        dlq_name = derived(f"{self.name}.{name}.dlq", f"the dead-letter queue of group {name!r}")
        dlq = QueueSpec(name=dlq_name, max_receives=0, is_dead_letter=True,
                        max_message_bytes=self.spec.max_message_bytes + 16 * KiB)
        self.app.queues.setdefault(dlq.name, Queue(dlq))
        return Group(self.spec, name, checkpoint_every,
                     seconds(checkpoint_interval, name="checkpoint_interval"), dlq)


MAX_NAME = 80
"""The longest name of a queue, topic, stream or group, and of a queue swell names after them
(``<queue>.dlq``, ``<topic>.<subscription>``, ``<stream>.<group>.dlq``): what every backend can
take (a NATS stream's name holds it, escaped, within the server's 255 characters)."""
MAX_PARTITIONS = 4096
MAX_MESSAGE_BYTES = 64 * 1024 * KiB
"""The largest ``max_message_bytes`` (64 MiB, the most a NATS server can be set to carry)."""
_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def check_name(kind: str, name: object, *, dots: bool = True) -> str:
    """``name`` if it follows the one naming rule of every backend: 1 to 80 characters, letters,
    digits, ``_`` and ``-`` (in segments joined by ``.``, unless ``dots`` is false); else an
    ``AppError`` that quotes the name (shortened)."""
    if not isinstance(name, str):
        raise AppError(f"a {kind} name must be a string, not {type(name).__name__}")
    if len(name) <= MAX_NAME and (_NAME if dots else _SEGMENT).fullmatch(name):
        return name
    rule = ("letters, digits, '_' and '-', in segments joined by '.' (like orders.eu)" if dots
            else "letters, digits, '_' and '-' (no '.')")
    raise AppError(f"bad {kind} name {shorten(name)}: a name is 1 to {MAX_NAME} characters: {rule}; "
                   "the same rule holds on every backend")


def shorten(name: str, keep: int = 40) -> str:
    """``repr(name)``, cut to ``keep`` characters and its length said when it is longer."""
    if len(name) <= keep:
        return repr(name)
    return f"{name[:keep]!r}... ({len(name):,} characters)"


def derived(name: str, what: str) -> str:
    """A queue name swell derives (``<queue>.dlq``...), within the length every backend takes."""
    if len(name) > MAX_NAME:
        raise AppError(f"{what} would be {shorten(name)}, over the {MAX_NAME} characters a name "
                       "may have: choose a shorter name")
    return name


def whole_count(value: object, what: str, *, low: int = 0, high: int = MAX_COUNT) -> int:
    try:
        return whole(value, name=what, low=low, high=high)
    except ConfigError as exc:
        raise AppError(str(exc)) from None


def message_bytes(what: str, value: object) -> int:
    return whole_count(value, f"{what}: max_message_bytes", low=1, high=MAX_MESSAGE_BYTES)
