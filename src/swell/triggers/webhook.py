"""Webhooks: an HTTP route whose requests become events on a channel, answered ``202`` only once the
event is stored (so a sender that got ``202`` never needs to send again, and one that did not
retries).

A request goes through, in this order, and stops at the first check it fails (nothing is stored):

====  ==================================================================================
429   over the route's rate (per node), with ``Retry-After``
413   a body over ``max_body`` (the HTTP server stops reading there)
401   unsigned, badly signed, or signed too long ago / too far ahead (a replay): the
      signature is checked over the raw body, in constant time (``swell.triggers.verify``)
415   a content type the route does not take (JSON by default)
400   malformed JSON, with the reason
503   the broker could not store it (down, or slower than ``store_timeout``), with
      ``Retry-After``: the sender retries, and its delivery id makes a retry a duplicate
202   stored (or stored before: the same delivery again is stored once)
====  ==================================================================================

The delivery id of the scheme (GitHub's ``X-GitHub-Delivery``, Standard Webhooks' ``webhook-id``,
Stripe's event id) or else an ``Idempotency-Key`` header is the event's id, so a channel's dedup
window stores a retried delivery once. The event's ``type`` comes from the scheme (GitHub's
``X-GitHub-Event``, Stripe's event type), ``source`` is the route's path, ``data`` the parsed JSON
(bytes for other content), and the headers the route keeps travel as extension attributes.

The HTTP server (``swell.web``) adapts requests to ``Request`` and ``Reply``; nothing here knows
an HTTP framework."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec

from swell.core import tracing
from swell.core.config import Duration, Rate, Size, byte_size, per_second, seconds
from swell.core.errors import AppError, SwellError
from swell.core.event import Event
from swell.scaling.limiters import RateLimit, TokenBucket
from swell.triggers.base import SourceEnv, SourceStats
from swell.triggers.verify import GitHub, Rejected, Verifier

__all__ = ["Record", "Reply", "Request", "Webhook"]

log = logging.getLogger("swell.webhooks")

JSON = "application/json"
#: how long a sender is told to wait after a 503 (the broker down)
RETRY_AFTER_S = 5
_ID = re.compile(r"^[\x21-\x7e]{1,200}$")
_EXTENSION = re.compile(r"[^a-z0-9]")


@dataclass(frozen=True, slots=True)
class Request:
    """What a webhook route needs of an HTTP request: its headers (names in lowercase) and raw body
    (at most ``max_body + 1`` bytes: the server stops reading past the limit)."""

    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Record:
    """One event a request carries (an object-store notification carries several)."""

    id: str
    type: str
    data: Any
    subject: str | None = None


Records = Callable[[Any], list[Record]]
"""Turns a parsed body into its records (``[]``: nothing to store, acknowledged)."""


class Webhook:
    """A webhook route (``app.webhook(...)`` declares one)."""

    kind: ClassVar[str] = "webhook"

    def __init__(self, name: str, *, path: str, to: str, verify: Verifier | None = None,
                 max_body: Size = "256KiB", rate: Rate | None = "100/s",
                 content_types: Sequence[str] = (JSON,), headers: Sequence[str] | None = None,
                 store_timeout: Duration = "5s", records: Records | None = None,
                 type: str | None = None, burst: int | None = None) -> None:
        if not path.startswith("/") or "{" in path:
            raise AppError(f"webhook {name!r}: path must start with '/' and hold no parameters, "
                           f"got {path!r}")
        self.name = name
        self.path = path
        self.target = to
        self.verifier = verify
        self.max_body = byte_size(max_body, name=f"webhook {name!r}: max_body")
        # a burst of a second's worth by default: senders post in bursts (a push of many
        # commits), and some (GitHub) do not retry a 429 by themselves
        self.rate = None if rate is None else RateLimit(
            rate, burst if burst is not None else max(1, math.ceil(per_second(rate))))
        self.content_types = tuple(t.lower() for t in content_types)
        if headers is None:  # the scheme's own headers are worth keeping
            headers = ("x-github-event", "x-github-delivery", "x-github-hook-id") \
                if isinstance(verify, GitHub) else ()
        self.headers = {h.lower(): _extension(h) for h in headers}
        self.store_timeout_s = seconds(store_timeout, name=f"webhook {name!r}: store_timeout",
                                       positive=True)
        self.records = records
        self.type = type or f"swell.webhook.{name}"
        self.stats = SourceStats()
        self._env: SourceEnv | None = None
        self._bucket: TokenBucket | None = None

    def __repr__(self) -> str:
        return f"Webhook({self.name!r}, path={self.path!r}, to={self.target!r}, verify={self.verifier!r})"

    async def run(self, env: SourceEnv) -> None:
        """Ready to take requests (the HTTP server brings them)."""
        self._env = env
        self._bucket = None if self.rate is None else TokenBucket(self.rate, env.clock)

    def detail(self) -> dict[str, Any]:
        return {"path": self.path, "verify": repr(self.verifier),
                "rate": None if self.rate is None else self.rate.rate_per_s}

    def _refuse(self, status: int, reason: str, message: str,
                headers: dict[str, str] | None = None) -> Reply:
        self.stats.reject(reason)
        return Reply(status, {"error": reason, "detail": message}, headers or {})

    async def handle(self, request: Request) -> Reply:
        """Answer one request (see the module's table)."""
        return self.admit() or await self.accept(request)

    def admit(self) -> Reply | None:
        """Whether a request may come in at all (``None``: yes): the route runs and is under its
        rate. Asked before the body is read, so a flood costs no reading."""
        if self._env is None:
            return Reply(503, {"error": "starting", "detail": "not ready yet"},
                         {"Retry-After": "1"})
        if self._bucket is not None and self.rate is not None and \
                (wait := self._bucket.try_take()) > 0:
            return self._refuse(429, "rate", f"over {self.rate.rate_per_s:g} requests/s",
                                {"Retry-After": str(max(1, math.ceil(wait)))})
        return None

    async def accept(self, request: Request) -> Reply:
        """The rest of the checks, once admitted, then the store."""
        env = self._env
        assert env is not None  # (admitted)
        if len(request.body) > self.max_body:
            return self._refuse(413, "too_large", f"the body is over {self.max_body:,} bytes")
        try:
            if self.verifier is not None:
                self.verifier.verify(request.headers, request.body, env.clock.time())
            data, content_type = self._parse(request)
            events = self._events(request, data, content_type, env)
        except Rejected as exc:
            return self._refuse(exc.status, exc.reason, str(exc))
        self.stats.received += 1
        if not events:
            return Reply(202, {"stored": 0})
        return await self._store(events, env)

    def _parse(self, request: Request) -> tuple[Any, str]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        is_json = content_type == JSON or content_type.endswith("+json")
        if not (content_type in self.content_types or "*/*" in self.content_types
                or (is_json and JSON in self.content_types)):
            raise Rejected(415, "content_type", f"content type {content_type or '(none)'!r} is "
                           f"not taken here; send {' or '.join(self.content_types)}")
        if not is_json:
            return request.body, content_type or "application/octet-stream"
        try:
            return msgspec.json.decode(request.body), JSON
        except msgspec.DecodeError as exc:
            raise Rejected(400, "malformed", f"the body is not valid JSON: {exc}") from None

    def _events(self, request: Request, data: Any, content_type: str,
                env: SourceEnv) -> list[Event[Any]]:
        attributes = {ext: request.headers[h] for h, ext in self.headers.items()
                      if h in request.headers}
        parent, state = tracing.incoming(request.headers)  # the caller's trace goes on with them
        if self.records is not None:
            try:
                records = self.records(data)
            except SwellError as exc:
                raise Rejected(400, "malformed", str(exc)) from None
            return [env.emitter.event(r.data, id=r.id, type=r.type, subject=r.subject,
                                      attributes=attributes or None, traceparent=parent,
                                      tracestate=state) for r in records]
        delivery, kind = (None, None) if self.verifier is None else \
            self.verifier.identity(request.headers, data)
        delivery = delivery or request.headers.get("idempotency-key")
        if delivery is not None and not _ID.match(delivery):
            raise Rejected(400, "malformed", "the delivery id (or Idempotency-Key) must be 1-200 "
                           "printable ASCII characters")
        return [env.emitter.event(data, id=delivery, type=kind or self.type,
                                  datacontenttype=content_type, attributes=attributes or None,
                                  traceparent=parent, tracestate=state)]

    async def _store(self, events: list[Event[Any]], env: SourceEnv) -> Reply:
        try:
            stored = await asyncio.wait_for(env.emitter.emit(events), self.store_timeout_s)
        except (SwellError, TimeoutError, OSError) as exc:
            why = str(exc) or f"no answer within {self.store_timeout_s:g} s"
            self.stats.errors += 1
            self.stats.last_error = why
            log.warning("webhook %s: could not store %d event(s): %s", self.name, len(events), why)
            return Reply(503, {"error": "unavailable", "detail": "the event could not be stored; "
                               "retry later"}, {"Retry-After": str(RETRY_AFTER_S)})
        if self.records is None:
            return Reply(202, {"id": events[0].id, "duplicate": not stored[0]})
        return Reply(202, {"stored": sum(stored), "ids": [e.id for e in events]})


def _extension(header: str) -> str:
    """The extension attribute a kept header travels as: its name in lowercase letters and digits,
    at most 20 (``X-GitHub-Event``: ``xgithubevent``)."""
    name = _EXTENSION.sub("", header.lower())[-20:]
    if not name:
        raise AppError(f"header {header!r} cannot be kept as an extension attribute")
    return name
