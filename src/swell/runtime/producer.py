"""Build events and send them: used by ``Context.publish``, the runtime and ``swell send``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from swell.brokers.base import Broker, Message
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.event import Event


class Producer:
    """Sends events to queues through a broker, as CloudEvents JSON."""

    def __init__(self, broker: Broker, *, source: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.broker = broker
        self.source = source
        self.clock = clock

    def event(self, queue: str, data: Any, *, type: str | None = None, subject: str | None = None,
              key: str | None = None, id: str | None = None, correlationid: str | None = None,
              idempotencykey: str | None = None, traceparent: str | None = None,
              datacontenttype: str | None = None) -> Event[Any]:
        """An event for ``queue``; an explicit ``id`` also serves as its dedup id."""
        fields: dict[str, Any] = {
            "type": type or f"swell.{queue}", "source": self.source, "subject": subject,
            "time": datetime.fromtimestamp(self.clock.time(), UTC), "data": data, "key": key,
            "correlationid": correlationid, "idempotencykey": idempotencykey,
            "traceparent": traceparent, "datacontenttype": datacontenttype,
        }
        if id is not None:
            fields["id"] = id
        return Event(**fields)

    async def send_events(self, queue: str, events: list[Event[Any]], *, delay_s: float = 0.0,
                          dedup: bool = False) -> list[bool]:
        """Send events; with ``dedup`` their ids are dedup ids. Per event: stored (not a duplicate)."""
        messages = [Message(body=e.to_json(), dedup_id=e.id if dedup else None, delay_s=delay_s)
                    for e in events]
        return await self.broker.send(queue, messages)

    async def send(self, queue: str, data: Any, *, delay_s: float = 0.0, **attrs: Any) -> str:
        """Send one event with ``data``; returns its id."""
        event = self.event(queue, data, **attrs)
        await self.send_events(queue, [event], delay_s=delay_s, dedup=attrs.get("id") is not None)
        return event.id
