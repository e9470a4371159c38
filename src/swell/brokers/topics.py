"""Fan-out for the backends that route at publish time (memory, SQLite): which of a batch's
messages each subscription takes, by routing key and then by content filter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from swell.brokers.base import Message, SubscriptionSpec, TopicSpec
from swell.core.errors import MessageTooLarge
from swell.core.filters import Pattern, SubjectPattern, check_subject

_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class Router:
    """A subscription's compiled routing: its routing-key pattern and its content filter."""

    spec: SubscriptionSpec
    subject: SubjectPattern | None
    filter: Pattern | None

    @classmethod
    def of(cls, spec: SubscriptionSpec) -> Router:
        """Compile ``spec``'s patterns (a ``PatternError`` if one is invalid)."""
        return cls(spec, None if spec.subject is None else SubjectPattern.parse(spec.subject),
                   None if spec.filter is None else Pattern.parse(spec.filter))


@dataclass(slots=True)
class Routed:
    """What one subscription takes of a batch, and how many its filter kept out."""

    router: Router
    messages: list[Message]
    filtered: int


def check_publish(topic: TopicSpec, messages: Sequence[Message]) -> None:
    """Refuse a batch with an oversize message or a routing key that is not dot-separated
    tokens, before anything is stored."""
    for m in messages:
        if len(m.body) > topic.max_message_bytes:
            raise MessageTooLarge(topic.name, len(m.body), topic.max_message_bytes)
        if m.subject is not None:
            check_subject(m.subject)


def route(routers: Sequence[Router], messages: Sequence[Message]) -> list[Routed]:
    """Each subscription's share of ``messages``. Bodies are decoded (once) only if a filter
    needs them; a body that is not a JSON object matches no filter."""
    events: list[Any] | None = None
    out = []
    for r in routers:
        taken: list[Message] = []
        filtered = 0
        for i, m in enumerate(messages):
            if r.subject is not None and not r.subject.match(m.subject):
                continue
            if r.filter is not None:
                if events is None:
                    events = [_event(x.body) for x in messages]
                event = events[i]
                if event is None or not r.filter.match(event):
                    filtered += 1
                    continue
            taken.append(m)
        out.append(Routed(r, taken, filtered))
    return out


def _event(body: bytes) -> dict[str, Any] | None:
    try:
        event = _decode(body)
    except msgspec.DecodeError:
        return None
    return event if isinstance(event, dict) else None
