"""Idempotency keys: a handler's effect once per key, while deliveries come at least once.

A record per key lives in the broker's kv store, namespaced by function (``swell/idem/<function>/
<key>``), never in the process: so every node sees it, and its memory is bounded by its TTL.

- The first attempt writes ``IN_PROGRESS`` with a conditional put (create-if-absent), with the
  event's lease as its TTL: if its owner dies, the record expires with the lease and a retry runs.
- A second attempt meanwhile is told "in progress" and retried later, not run.
- Success turns the record ``COMPLETED`` (compare-and-set on the revision the attempt wrote), with
  the handler's result, for ``ttl``; a later duplicate is acked with that result, not run.
- A handler failure deletes the record, so a retry can run.
- A key reused for different content (another payload fingerprint) raises ``IdempotencyConflict``:
  the event goes to the dead-letter queue, since no retry can make it right.
- If the store cannot be read or written, the handler does not run (fail closed): the event comes
  back later.

What this does not guarantee: an effect outside a transaction (a call to a payment API, a line in a
file) that happened just before a crash, when the ``COMPLETED`` record had not been written, can
happen again once the ``IN_PROGRESS`` record expires. For exactly-once effects on a database,
write the effect and its key in one transaction (``swell.patterns.sinks.claim``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from swell.brokers.base import KV
from swell.core import keys
from swell.core.config import Duration, seconds
from swell.core.errors import IdempotencyConflict, SwellError
from swell.core.event import Event

log = logging.getLogger("swell.patterns.idempotency")

PREFIX = keys.IDEMPOTENCY
MAX_RESULT_BYTES = 64 * 1024

State = Literal["in_progress", "completed"]


class _Record(msgspec.Struct, frozen=True):
    state: State
    fingerprint: str
    result: Any = None
    at: float = 0.0


@dataclass(frozen=True, slots=True, init=False)
class Idempotency:
    """``@app.function(..., idempotency=Idempotency(key=lambda e: e.data["order_id"], ttl="24h"))``.

    ``key`` gets the event (``Event``, with ``data`` as sent); by default the event's
    ``idempotencykey`` extension, else its id. ``ttl``: how long a completed key is remembered."""

    key: Callable[[Event[Any]], Any] | None
    ttl_s: float

    def __init__(self, key: Callable[[Event[Any]], Any] | None = None, ttl: Duration = "24h") -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "ttl_s", seconds(ttl, name="ttl"))

    def key_of(self, event: Event[Any]) -> str:
        if self.key is None:
            return event.idempotencykey or event.id
        value = self.key(event)
        if value is None or value == "":
            raise IdempotencyConflict(f"the idempotency key of event {event.id!r} is empty")
        return str(value)


def fingerprint(data: Any) -> str:
    """A digest of an event's content, to tell a retry from another payload under the same key."""
    return hashlib.sha256(msgspec.json.encode(data, order="sorted")).hexdigest()[:32]


class Started(msgspec.Struct, frozen=True):
    revision: int


class Done(msgspec.Struct, frozen=True):
    result: Any


class Busy(msgspec.Struct, frozen=True):
    pass


Begun = Started | Done | Busy


class IdempotencyStore:
    """One function's idempotency records in a kv store."""

    def __init__(self, kv: KV, function: str, now: Callable[[], float]) -> None:
        self.kv = kv
        self.prefix = keys.idempotency(function)
        self.now = now

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def begin(self, key: str, print_: str, lease_s: float) -> Begun:
        """Claim ``key`` for one attempt: ``Started`` (run it), ``Done`` (it ran: here is its
        result) or ``Busy`` (another attempt runs it now). Raises ``IdempotencyConflict`` for a key
        reused with other content, and ``SwellError`` if the store fails."""
        k = self._key(key)
        raw = msgspec.json.encode(_Record("in_progress", print_, None, self.now()))
        for _ in range(3):
            rev = await self.kv.put_if_absent(k, raw, ttl_s=max(lease_s, 1.0))
            if rev is not None:
                return Started(rev)  # a new key (the common case): one write
            entry = await self.kv.get(k)
            if entry is None:
                continue  # it expired or was cleared just now: try again
            rec = msgspec.json.decode(entry.value, type=_Record)
            if rec.fingerprint != print_:
                raise IdempotencyConflict(f"idempotency key {key!r} was used before for other "
                                          "content")
            return Done(rec.result) if rec.state == "completed" else Busy()
        return Busy()

    async def complete(self, key: str, started: Started, print_: str, result: Any,
                       ttl_s: float) -> None:
        """Mark ``key`` done with ``result`` (kept for ``ttl_s``)."""
        try:
            encoded = msgspec.json.encode(_Record("completed", print_, result, self.now()))
        except (TypeError, msgspec.EncodeError):
            encoded = msgspec.json.encode(_Record("completed", print_, None, self.now()))
        if len(encoded) > MAX_RESULT_BYTES:
            encoded = msgspec.json.encode(_Record("completed", print_, None, self.now()))
        rev = await self.kv.compare_and_set(self._key(key), encoded, started.revision, ttl_s=ttl_s)
        if rev is None:
            log.warning("idempotency key %r: its in-progress record expired before the handler "
                        "finished; another attempt may have run it too", key)

    async def abandon(self, key: str, started: Started) -> None:
        """Forget an attempt that failed, so a retry can run."""
        try:
            await self.kv.delete(self._key(key), revision=started.revision)
        except SwellError as exc:  # it expires with its lease anyway
            log.warning("idempotency key %r: could not clear after a failure: %s", key, exc)


class Once:
    """What ``ctx.idempotent(key)`` yields: ``done`` is True if the block already ran for this key
    (then ``result`` is what it stored, and the block must skip its effect)::

        async with ctx.idempotent(f"charge-{order.id}") as once:
            if not once.done:
                once.result = await payments.charge(order)
    """

    __slots__ = ("done", "result")

    def __init__(self, done: bool, result: Any = None) -> None:
        self.done = done
        self.result = result
