"""Build events and send them to queues or publish them to topics: used by ``Context.publish``,
``App.publish``, the runtime and ``swell send``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from swell.brokers.base import Broker, Message
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.errors import PayloadError, UnknownQueue
from swell.core.event import RESERVED_ATTRIBUTES, Event

_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")


class Producer:
    """Sends events to queues, or publishes them to topics, through a broker, as CloudEvents JSON.

    ``send`` takes either: a name among ``topics`` (or, failing a queue of that name, a topic the
    broker knows) is published to."""

    def __init__(self, broker: Broker, *, source: str, clock: Clock = SYSTEM_CLOCK,
                 topics: Iterable[str] = ()) -> None:
        self.broker = broker
        self.source = source
        self.clock = clock
        self.topics = set(topics)

    def event(self, queue: str, data: Any, *, type: str | None = None, subject: str | None = None,
              key: str | None = None, id: str | None = None, correlationid: str | None = None,
              idempotencykey: str | None = None, traceparent: str | None = None,
              datacontenttype: str | None = None,
              attributes: Mapping[str, Any] | None = None) -> Event[Any]:
        """An event for ``queue`` (or a topic); an explicit ``id`` also serves as its dedup id.
        ``attributes`` are CloudEvents extension attributes (names of lowercase letters and
        digits), which topic filters can match."""
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
        return Event(**fields)

    async def send_events(self, queue: str, events: list[Event[Any]], *, delay_s: float = 0.0,
                          dedup: bool = False) -> list[bool]:
        """Send events; with ``dedup`` their ids are dedup ids. Per event: stored (not a duplicate)."""
        messages = [Message(body=e.to_json(), dedup_id=e.id if dedup else None, delay_s=delay_s)
                    for e in events]
        return await self.broker.send(queue, messages)

    async def send(self, queue: str, data: Any, *, delay_s: float = 0.0, **attrs: Any) -> str:
        """Send one event with ``data`` to a queue, or publish it if ``queue`` names a topic;
        returns its id."""
        if queue in self.topics:
            return await self.publish(queue, data, delay_s=delay_s, **attrs)
        event = self.event(queue, data, **attrs)
        try:
            await self.send_events(queue, [event], delay_s=delay_s, dedup=attrs.get("id") is not None)
        except UnknownQueue:
            if not await self.is_topic(queue):
                raise
            return await self.publish(queue, data, delay_s=delay_s, **attrs)
        return event.id

    async def is_topic(self, name: str) -> bool:
        """Whether the broker knows a topic ``name`` (remembered once seen)."""
        if name not in self.topics:
            self.topics.update(t.spec.name for t in await self.broker.topics())
        return name in self.topics

    async def publish_events(self, topic: str, events: list[Event[Any]], *, delay_s: float = 0.0,
                             dedup: bool = False) -> list[bool]:
        """Publish events to ``topic``, their subjects as routing keys; per event: not a duplicate."""
        messages = [Message(body=e.to_json(), dedup_id=e.id if dedup else None, delay_s=delay_s,
                            subject=e.subject) for e in events]
        return await self.broker.publish(topic, messages)

    async def publish(self, topic: str, data: Any, *, subject: str | None = None,
                      attributes: Mapping[str, Any] | None = None, delay_s: float = 0.0,
                      **attrs: Any) -> str:
        """Publish one event to ``topic``: every subscription whose subject pattern matches
        ``subject`` and whose filter matches the event gets it. Returns its id."""
        event = self.event(topic, data, subject=subject, attributes=attributes, **attrs)
        await self.publish_events(topic, [event], delay_s=delay_s, dedup=attrs.get("id") is not None)
        return event.id


def _extensions(attributes: Mapping[str, Any]) -> dict[str, Any]:
    for name, value in attributes.items():
        if not _EXTENSION_NAME.fullmatch(name) or name in RESERVED_ATTRIBUTES:
            raise PayloadError(f"attribute {name!r}: an extension attribute's name is 1-20 lowercase "
                               "letters or digits, and not one of the CloudEvents attributes")
        if not isinstance(value, str | int | bool):
            raise PayloadError(f"attribute {name!r}: a value must be a string, an integer or a "
                               f"boolean, not {type(value).__name__}")
    return dict(attributes)
