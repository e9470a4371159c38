"""Dead letters moved back to their queue: all of them, some, or those with given event ids; for
``swell dlq redrive`` and the admin API alike."""

from __future__ import annotations

from collections.abc import Sequence

from swell.brokers.base import Broker, Message, redrive_headers
from swell.core.errors import ConfigError
from swell.core.event import Event
from swell.runtime.status import dead_letter_queue

__all__ = ["REDRIVE_LEASE_S", "redrive", "redrive_ids"]

REDRIVE_LEASE_S = 60.0  # the dead letters looked through are held this long, if this dies


async def redrive(broker: Broker, queue: str, *, ids: Sequence[str] = (),
                  max_messages: int | None = None) -> tuple[int, list[str], str]:
    """Move ``queue``'s dead letters (those with event ids ``ids``, else at most
    ``max_messages``, else all) back to it: (how many moved, the ids not found, the dead-letter
    queue). ``queue`` may name the dead-letter queue itself; a consumer group's has no queue to
    go back to (a ``ConfigError``)."""
    name = await dead_letter_queue(broker, queue)
    if name == queue:
        spec = await broker.queue_spec(name)
        source = next((q.name for q in await broker.queues() if q.dead_letter_queue == name), None)
        if not spec.is_dead_letter or source is None:
            raise ConfigError(f"{queue!r} is a consumer group's dead-letter queue: there is no "
                              "queue to move its events back to (look at them with swell dlq "
                              "show, and run them again with swell replay)")
        queue = source
    if ids:
        moved, missing = await redrive_ids(broker, queue, name, ids)
        return moved, missing, name
    return await broker.redrive(queue, max_messages), [], name


async def redrive_ids(broker: Broker, queue: str, dlq_name: str, ids: Sequence[str]
                      ) -> tuple[int, list[str]]:
    """Move the dead letters of ``dlq_name`` whose event ids are ``ids`` back to ``queue``; (how
    many moved, the ids not found). The dead-letter queue is leased through until they are
    found; what is not moved is given back at once (its receive count untouched). A message is
    sent before its dead letter is deleted: one that dies in between leaves a copy, not a loss."""
    wanted, held = set(ids), []
    moved = 0
    try:
        while wanted:
            batch = await broker.receive(dlq_name, 100, REDRIVE_LEASE_S)
            if not batch:
                break
            hits = [d for d in batch if event_id(d.body) in wanted]
            hit = {d.receipt for d in hits}
            held += [d.receipt for d in batch if d.receipt not in hit]
            if hits:
                await broker.send(queue, [Message(body=d.body, headers=redrive_headers(d.headers))
                                          for d in hits])
                await broker.ack([d.receipt for d in hits])
                moved += len(hits)
                wanted -= {event_id(d.body) for d in hits}
    finally:
        if held:
            await broker.release(held, count=False)
    return moved, [i for i in ids if i in wanted]


def event_id(body: bytes) -> str | None:
    """A stored message's event id (``None``: it is not an event, and has none)."""
    try:
        return Event.from_json(body).id
    except Exception:  # not an event: it has no id to be named by
        return None
