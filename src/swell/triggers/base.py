"""What every trigger source shares: a source turns outside occurrences (an HTTP request, a timer, a
file) into events on one channel (a queue, a topic or a stream), through an ``Emitter`` that
stores them once, and keeps ``SourceStats`` that ``swell status`` and ``/metrics`` show.

A source is run by the runtime: ``await source.run(env)`` until it is cancelled (a webhook's
``run`` returns at once: the HTTP server calls it). It gets what it needs through ``SourceEnv``
(the emitter, the kv store, the clock, the app and node names), never the runtime itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Coroutine, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

import msgspec

from swell.brokers.base import KV
from swell.brokers.producer import Kind, Producer
from swell.brokers.types import Message, dead_letter_headers
from swell.core import keys
from swell.core.clock import Clock
from swell.core.errors import BrokerError, SwellError
from swell.core.event import Event

__all__ = ["Emitter", "Source", "SourceEnv", "SourceStats", "SourceStatus", "unbroken"]

#: how long a stream source remembers an event id it appended (a queue or topic has its own window)
STREAM_DEDUP_S = 300.0
#: how long an id being appended holds its claim (a crash in between frees it after this)
PENDING_S = 30.0
_PENDING, _DONE = b"pending", b"done"


@dataclass
class SourceStats:
    """What a source did since it started, on this node."""

    received: int = 0
    """Occurrences seen (requests, firings, files)."""
    emitted: int = 0
    """Events stored on the channel."""
    duplicates: int = 0
    """Events the channel held already (a retried delivery, a file sent before a crash)."""
    errors: int = 0
    """Failures to store (the broker down, say): the sender retries, or the source does."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Occurrences refused, by reason (``"signature"``, ``"too_large"``, ``"rate"`` ...)."""
    lag_s: float | None = None
    """How far behind the source is: a schedule's lateness, the age of the oldest pending file."""
    pending: int = 0
    """Occurrences seen and not yet stored (files still growing, firings due)."""
    last_error: str | None = None
    started: float = field(default_factory=time.time)

    def reject(self, reason: str) -> None:
        self.received += 1
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


class SourceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A source's status on one node, as written to the kv store for ``swell status``."""

    app: str
    source: str
    kind: str
    node: str
    target: str
    received: int
    emitted: int
    duplicates: int
    errors: int
    rejected: dict[str, int]
    lag_s: float | None
    pending: int
    last_error: str | None
    detail: dict[str, Any] = {}
    at: float


@dataclass(frozen=True)
class SourceEnv:
    """What a running source is given."""

    app: str
    node: str
    emitter: Emitter
    kv: KV
    clock: Clock


class Emitter:
    """Stores a source's events on its channel, each event once: its id is its dedup id (a queue
    or topic drops a second copy inside its dedup window; a stream, which has none, is guarded by
    a kv record of the ids appended in the last ``STREAM_DEDUP_S`` seconds)."""

    def __init__(self, producer: Producer, kv: KV, target: str, stats: SourceStats, *,
                 source: str, dead_letter: str | None = None) -> None:
        self.producer = producer
        self.kv = kv
        self.target = target
        self.stats = stats
        self.source = source
        self.dead_letter_queue = dead_letter
        """The source's own dead-letter queue (``<source>.dlq``), for occurrences that cannot
        become events (a payload that is not JSON, a device id that cannot be a key)."""
        self._kind: Kind | None = None
        self._max_bytes: int | None = None

    async def max_bytes(self) -> int:
        """The largest message the channel takes (a queue's or stream's ``max_message_bytes``; a
        topic's): a source dead-letters a bigger
        occurrence (a stub of it, with reason ``"too_large"``) rather than fail its batch."""
        if self._max_bytes is None:
            kind = await self.producer.kind(self.target)
            broker = self.producer.broker
            if kind == "stream":
                self._max_bytes = (await broker.stream_spec(self.target)).max_message_bytes
            elif kind == "queue":
                self._max_bytes = (await broker.queue_spec(self.target)).max_message_bytes
            else:
                limit = next((t.spec.max_message_bytes for t in await broker.topics()
                              if t.spec.name == self.target), None)
                if limit is None:
                    raise SwellError(f"source {self.source!r}: no channel {self.target!r}")
                self._max_bytes = limit
        return self._max_bytes

    def event(self, data: Any, *, time: datetime | None = None, **attrs: Any) -> Event[Any]:
        """An event for this channel (see ``Producer.event``); its ``source`` is the source's,
        and ``time`` (when the occurrence happened) is now unless given."""
        event = self.producer.event(self.target, data, **attrs)
        if time is not None:
            return msgspec.structs.replace(event, source=self.source, time=time)
        return msgspec.structs.replace(event, source=self.source)

    async def emit(self, events: Sequence[Event[Any]], *, dedup: bool = True) -> list[bool]:
        """Store ``events`` (once each); per event, whether it was new (``False``: a duplicate).
        Raises the broker's error if they could not be stored: nothing is then acknowledged.

        ``dedup=False`` is for a source that keeps its own position (a replication slot, a
        change table): on a stream the events are appended as they are, without the per-id
        claims; a queue or topic still drops an id it holds already (that costs nothing)."""
        if self._kind is None:
            self._kind = await self.producer.kind(self.target)
        kind = self._kind
        if kind == "stream" and not dedup:
            if events:
                await self.producer.append_events(self.target, list(events))
            stored = [True] * len(events)
        elif kind == "stream":
            stored = await self._append(events)
        else:
            stored = await self.producer.put(kind)(
                self.target, self.producer.messages(kind, events, dedup=True))
        new = sum(stored)
        self.stats.emitted += new
        self.stats.duplicates += len(stored) - new
        return stored

    async def dead_letter(self, rejects: Sequence[tuple[Event[Any], str, str | None]]) -> None:
        """Put each ``(event, reason, error)`` on the source's dead-letter queue, with the
        reason and error as ``swell dlq show`` reads them (``reason``: a short word such as
        ``"malformed"``, ``"invalid"``, ``"bad_key"``; ``error``: what was wrong, for people).
        Raises the broker's error if they could not be stored (the occurrence is then not
        acknowledged either). Counts each under ``stats.rejected[reason]``."""
        if not rejects:
            return
        if self.dead_letter_queue is None:
            raise SwellError(f"source {self.source!r} has no dead-letter queue")
        now = self.producer.clock.time()
        messages = [Message(body=e.to_json(), dedup_id=e.id, headers=dead_letter_headers(
            None, source=self.source, reason=reason, error=error, attempts=0, at=now))
            for e, reason, error in rejects]
        await self.producer.broker.send(self.dead_letter_queue, messages)
        for _, reason, _ in rejects:  # (the source counted them as received)
            self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1

    async def _append(self, events: Sequence[Event[Any]]) -> list[bool]:
        """Append the events whose ids no one appended in the last ``STREAM_DEDUP_S`` s. Each id
        is claimed first (``put_if_absent``, so two deliveries of one id never both append),
        marked done once appended; an id another delivery is appending right now is a
        ``BrokerError`` (a webhook's sender is told to retry, and then finds it done). A crash
        between the append and the mark appends it again after ``PENDING_S``: at least once."""
        fresh: list[tuple[Event[Any], int]] = []
        try:
            for e in events:
                key = keys.source_seen(self.target, e.id)
                rev = await self.kv.put_if_absent(key, _PENDING, ttl_s=PENDING_S)
                if rev is not None:
                    fresh.append((e, rev))
                    continue
                entry = await self.kv.get(key)
                if entry is not None and entry.value == _PENDING:
                    raise BrokerError(f"event {e.id!r} is being appended to {self.target!r} by "
                                      "another delivery now; try again")
            if fresh:
                await self.producer.append_events(self.target, [e for e, _ in fresh])
        except BaseException:
            for e, rev in fresh:  # not appended: the next delivery may
                await asyncio.shield(_quietly(self.kv.delete(keys.source_seen(self.target, e.id),
                                                             revision=rev)))
            raise
        for e, rev in fresh:
            await _quietly(self.kv.compare_and_set(keys.source_seen(self.target, e.id), _DONE, rev,
                                                   ttl_s=STREAM_DEDUP_S))
        ids = {e.id for e, _ in fresh}
        return [e.id in ids for e in events]


async def unbroken(step: Coroutine[Any, Any, None]) -> None:
    """Run ``step`` to its end even if the source is cancelled meanwhile (a stop waits for it):
    a batch's events and its checkpoints go together, or a graceful stop would leave files sent
    and not checkpointed, to be sent again on the next start."""
    task = asyncio.ensure_future(step)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with suppress(Exception):
            await task
        raise


async def _quietly(call: Awaitable[object]) -> None:
    """Bookkeeping the kv store may fail: its TTL covers it."""
    with suppress(SwellError):
        await call


@runtime_checkable
class Source(Protocol):
    """A trigger source: declared on an app, run by the runtime."""

    kind: ClassVar[str]
    """``"webhook"``, ``"schedule"``, ``"files"`` ..."""
    name: str
    target: str
    """The name of the channel its events go to."""
    stats: SourceStats
    # optional: ``dead_letter: str | None``, the name of its own dead-letter queue, declared by
    # the app (``<name>.dlq``); its Emitter's ``dead_letter()`` puts rejects there

    async def run(self, env: SourceEnv) -> None:
        """Run until cancelled (return at once if something else drives the source)."""

    def detail(self) -> dict[str, Any]:
        """What ``swell status`` shows of it beside the counts (next fire time, files pending)."""
