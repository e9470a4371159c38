"""Build events and put them where they go: sent to a queue, published to a topic or appended to
a stream. Used by ``Context.publish``, ``swell.Client``, the runtime, the patterns and
``swell send``.

A target is a declared ``Queue``, ``Topic`` or ``Stream``, or its name; every caller takes the
same. A name is looked up in what the producer knows, then tried as a queue (the common case,
one call), then looked up on the broker; a name that is none of them is an ``UnknownTarget`` that
names what exists."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeAlias

from swell.brokers.base import Broker, Message, QueueSpec, StreamSpec, TopicSpec
from swell.core import tracing
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.errors import ConfigError, PayloadError, UnknownQueue
from swell.core.event import RESERVED_ATTRIBUTES, Event, new_id

_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
_LISTED = 8  # names listed per kind in an UnknownTarget

Kind = Literal["queue", "topic", "stream"]


class Declared(Protocol):
    """A declared queue, topic or stream (an app's ``Queue``, ``Topic`` or ``Stream``): its
    spec says which."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> QueueSpec | TopicSpec | StreamSpec: ...


Target: TypeAlias = "Declared | str"
"""Where an event goes: a declared queue, topic or stream, or its name."""
Put = Callable[[str, Sequence[Message]], Awaitable[list[bool]]]


class UnknownTarget(UnknownQueue):
    """A name that is no queue, topic or stream of the broker; the message lists what is."""

    def __init__(self, name: str, known: Mapping[str, Sequence[str]]) -> None:
        super().__init__(name)
        listed = "; ".join(f"{kind}s: {_listing(names)}" for kind, names in known.items() if names)
        self.args = (f"no queue, topic or stream is named {name!r} "
                     f"({listed or 'none is declared'}); declare it with app.queue({name!r}), "
                     f"app.topic({name!r}) or app.stream({name!r})",)


def target_name(target: Target) -> str:
    """The name of a target (a declared object, or already a name)."""
    if isinstance(target, str):
        return target
    if isinstance(getattr(target, "spec", None), QueueSpec | TopicSpec | StreamSpec):
        return target.name
    raise ConfigError(f"an event goes to a queue, topic or stream (or its name), not {target!r}")


class Producer:
    """Puts events, as CloudEvents JSON, into queues, topics and streams through a broker.

    ``topics`` and ``streams`` are names known to be topics and streams (an app's, say); others are
    learned from the broker when a name is not a queue, and remembered."""

    def __init__(self, broker: Broker, *, source: str, clock: Clock = SYSTEM_CLOCK,
                 topics: Iterable[str] = (), streams: Iterable[str] = ()) -> None:
        self.broker = broker
        self.source = source
        self.clock = clock
        self.topics = set(topics)
        self.streams = set(streams)
        tracing.detect()  # (a runtime and a client each make one: a provider set by then counts)

    def event(self, queue: str, data: Any, *, type: str | None = None, subject: str | None = None,
              key: str | None = None, id: str | None = None, correlationid: str | None = None,
              idempotencykey: str | None = None, traceparent: str | None = None,
              tracestate: str | None = None, datacontenttype: str | None = None,
              attributes: Mapping[str, Any] | None = None) -> Event[Any]:
        """An event for ``queue`` (or a topic or stream); an explicit ``id`` also serves as its
        dedup id. ``key`` is its ordering key (on a stream, its partition key); ``attributes``
        are CloudEvents extension attributes (names of lowercase letters and digits), which topic
        filters can match. With tracing on, the event gets a ``create`` span of its own as its
        creation context (a child of ``traceparent``, or of the current span)."""
        fields = self._fields(queue, data, type, subject, key, id, correlationid, idempotencykey,
                              traceparent, datacontenttype, attributes)
        if tracing.ON:
            self._created(queue, fields, tracestate)
        elif tracestate:
            _carry(fields, tracestate)
        return Event(**fields)

    def _fields(self, queue: str, data: Any, type: str | None = None, subject: str | None = None,
                key: str | None = None, id: str | None = None, correlationid: str | None = None,
                idempotencykey: str | None = None, traceparent: str | None = None,
                datacontenttype: str | None = None, attributes: Mapping[str, Any] | None = None
                ) -> dict[str, Any]:
        """An event's attributes (``event``'s, called by position: it is per event)."""
        fields: dict[str, Any] = {
            "type": type or f"swell.{queue}", "source": self.source, "subject": subject,
            "time": datetime.fromtimestamp(self.clock.time(), UTC), "data": data, "key": key,
            "correlationid": correlationid, "idempotencykey": idempotencykey,
            "traceparent": traceparent, "datacontenttype": datacontenttype,
        }
        if id is not None:
            fields["id"] = id
        if attributes:
            fields["extensions"] = _extensions(attributes)
        return fields

    @staticmethod
    def _created(queue: str, fields: dict[str, Any], tracestate: str | None) -> None:
        """Give an event's ``fields`` a ``create`` span of its own, ended at once: the creation
        context of one event of a batch (the batch's store is no part of it)."""
        fields["id"] = event_id = fields.get("id") or new_id()
        with tracing.producer_span("create", queue, parent=fields["traceparent"],
                                   parent_state=tracestate, message_id=event_id,
                                   correlation_id=fields["correlationid"]) as span:
            fields["traceparent"], tracestate = tracing.traceparent_of(span)
        if tracestate:
            _carry(fields, tracestate)

    # -- where a name goes ---------------------------------------------------------------------
    def _known(self, target: Target) -> tuple[str, Kind | None]:
        spec = getattr(target, "spec", None)
        if isinstance(spec, TopicSpec):
            return target_name(target), "topic"
        if isinstance(spec, StreamSpec):
            return target_name(target), "stream"
        if isinstance(spec, QueueSpec):
            return target_name(target), "queue"
        name = target_name(target)
        return name, ("topic" if name in self.topics else "stream" if name in self.streams
                      else None)

    async def kind(self, target: Target) -> Kind:
        """What ``target`` is on the broker; ``UnknownTarget`` if it is none of them."""
        name, kind = self._known(target)
        if kind is not None:
            return kind
        try:
            await self.broker.queue_spec(name)
        except UnknownQueue:
            return await self._learn(name)
        return "queue"

    async def _learn(self, name: str) -> Kind:
        """The kind of a name that is not a queue, from the broker's topics and streams."""
        topics = [t.spec.name for t in await self.broker.topics()]
        streams = [s.name for s in await self.broker.streams()]
        self.topics.update(topics)
        self.streams.update(streams)
        if name in self.topics:
            return "topic"
        if name in self.streams:
            return "stream"
        queues = sorted(q.name for q in await self.broker.queues() if not q.is_dead_letter)
        raise UnknownTarget(name, {"queue": queues, "topic": sorted(topics),
                                   "stream": sorted(streams)})

    async def is_topic(self, name: str) -> bool:
        """Whether the broker knows a topic ``name`` (remembered once seen)."""
        if name not in self.topics:
            self.topics.update(t.spec.name for t in await self.broker.topics())
        return name in self.topics

    # -- putting events --------------------------------------------------------------------------
    @staticmethod
    def messages(kind: Kind, events: Sequence[Event[Any]], *, delay_s: float = 0.0,
                 dedup: bool = False, bodies: Sequence[bytes] | None = None) -> list[Message]:
        """The messages that carry ``events`` to a target of ``kind`` (with ``dedup``, each event's
        id is its dedup id). On a topic the subject is the routing key; on a stream the key is the
        partition key, and an event without a key has its id as its partition key: events spread
        over the partitions, and one event (sent again with the same id) always lands in the same
        one. A stream keeps the order of appends, so it cannot delay: ``ConfigError``."""
        if kind == "stream" and delay_s:
            raise ConfigError(f"a stream cannot delay an event (delay {delay_s:g} s): it keeps the "
                              "order of appends; publish to a queue to deliver later")
        bodies = bodies if bodies is not None else [e.to_json() for e in events]
        return [Message(body=body, dedup_id=e.id if dedup else None,
                        delay_s=0.0 if kind == "stream" else delay_s,
                        subject=e.subject if kind == "topic" else None,
                        key=(e.key if e.key is not None else e.id) if kind == "stream" else None)
                for e, body in zip(events, bodies, strict=True)]

    def put(self, kind: Kind) -> Put:
        """The broker call that stores messages in a target of ``kind``; per message, whether it
        was stored (``False``: a duplicate within the dedup window; an append never is one)."""
        if kind == "topic":
            return self.broker.publish
        if kind == "queue":
            return self.broker.send

        async def append(stream: str, messages: Sequence[Message]) -> list[bool]:
            await self.broker.append(stream, messages)
            return [True] * len(messages)

        return append

    async def send_events(self, queue: str, events: list[Event[Any]], *, delay_s: float = 0.0,
                          dedup: bool = False) -> list[bool]:
        """Send events to a queue; with ``dedup`` their ids are dedup ids. Per event: stored
        (not a duplicate)."""
        return await self.broker.send(queue, self.messages("queue", events, delay_s=delay_s,
                                                           dedup=dedup))

    async def publish_events(self, topic: str, events: list[Event[Any]], *, delay_s: float = 0.0,
                             dedup: bool = False) -> list[bool]:
        """Publish events to a topic, their subjects as routing keys; per event: not a duplicate."""
        return await self.broker.publish(topic, self.messages("topic", events, delay_s=delay_s,
                                                              dedup=dedup))

    async def append_events(self, stream: str, events: list[Event[Any]]) -> list[tuple[int, int]]:
        """Append events to a stream (all or none); per event its (partition, offset)."""
        return await self.broker.append(stream, self.messages("stream", events))

    async def publish(self, target: Target, data: Any, *, subject: str | None = None,
                      key: str | None = None, attributes: Mapping[str, Any] | None = None,
                      delay_s: float = 0.0, **attrs: Any) -> str:
        """Put one event with ``data`` where ``target`` says: send it to a queue, publish it to a
        topic (every subscription whose subject pattern matches ``subject`` and whose filter
        matches the event gets it) or append it to a stream (its partition is a stable hash of
        ``key``, or of the event's id when it has no key). Returns its id. With tracing on, this
        is a ``send`` span, the event's creation context (a child of ``traceparent``, or of the
        current span)."""
        dedup = attrs.get("id") is not None
        name = target_name(target)
        if not tracing.ON:
            event = self.event(name, data, subject=subject, key=key, attributes=attributes, **attrs)
            return await self._put_one(target, event, delay_s, dedup)
        with tracing.producer_span("send", name, parent=attrs.pop("traceparent", None),
                                   parent_state=attrs.pop("tracestate", None),
                                   correlation_id=attrs.get("correlationid")) as span:
            fields = self._fields(name, data, subject=subject, key=key, attributes=attributes,
                                  **attrs)  # (no create span: this send is the creation context)
            fields["traceparent"], tracestate = tracing.traceparent_of(span)
            if tracestate:
                _carry(fields, tracestate)
            event = Event(**fields)
            span.set_attribute("messaging.message.id", event.id)
            return await self._put_one(target, event, delay_s, dedup)

    async def _put_one(self, target: Target, event: Event[Any], delay_s: float, dedup: bool) -> str:
        name, kind = self._known(target)
        if kind is None:  # a name not known to be anything else: a queue, most likely
            try:
                await self.send_events(name, [event], delay_s=delay_s, dedup=dedup)
                return event.id
            except UnknownQueue:
                kind = await self._learn(name)
        await self.put(kind)(name, self.messages(kind, [event], delay_s=delay_s, dedup=dedup))
        return event.id

    async def send(self, queue: Target, data: Any, *, delay_s: float = 0.0, **attrs: Any) -> str:
        """``publish``, under the name it had when it only sent to queues."""
        return await self.publish(queue, data, delay_s=delay_s, **attrs)


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(n if len(n) <= 40 else f"{n[:40]}..." for n in names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED:,} more" if len(names) > _LISTED else "")


def _carry(fields: dict[str, Any], tracestate: str) -> None:
    """The W3C ``tracestate`` travels as an extension attribute beside ``traceparent``."""
    fields["extensions"] = {**fields.get("extensions", {}), "tracestate": tracestate}


def _extensions(attributes: Mapping[str, Any]) -> dict[str, Any]:
    for name, value in attributes.items():
        if not _EXTENSION_NAME.fullmatch(name) or name in RESERVED_ATTRIBUTES:
            raise PayloadError(f"attribute {name!r}: an extension attribute's name is 1-20 lowercase "
                               "letters or digits, and not one of the CloudEvents attributes")
        if not isinstance(value, str | int | bool):
            raise PayloadError(f"attribute {name!r}: a value must be a string, an integer or a "
                               f"boolean, not {type(value).__name__}")
    return dict(attributes)
