"""Topics on NATS JetStream.

A topic is a stream, ``swell-<ns>-T-<topic>``, on the subjects ``swell.<ns>.t.<topic>[.<routing
key>]``: one publish is one stored message, so it reaches every subscription or none. Each
subscription is a queue (its own stream, consumer, retries and dead-letter queue) whose stream
*sources* from the topic's: the server copies into it, durably and in order, what matches the
subscription's subject pattern, from the sequence after the last one published when the
subscription was made (so it never sees older events). A subscription's content filter needs the
event, which the server cannot read: its queue's consumer applies it on receive, acking what does
not match (counted as filtered) before any handler sees it.

Counts (matched, filtered) are kept per process and added to the kv store at most once a second
and when the broker closes; ``topics`` adds this process's pending counts first.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from swell.brokers.base import Message, SubscriptionSpec, SubscriptionStats, TopicInfo, TopicSpec
from swell.brokers.nats.wire import (
    H_ENQUEUED,
    HEADER_ROOM,
    MIN_DEDUP_WINDOW_S,
    SPEC_REFRESH_S,
    SUBSCRIPTION_KEY,
    check_queue_name,
    encode_segment,
    message_headers,
    nanos,
    schedule_at,
    stream_part,
)
from swell.brokers.topics import Router, check_publish
from swell.core import keys
from swell.core.errors import UnknownTopic

if TYPE_CHECKING:
    from swell.brokers.nats.client import NatsClient
    from swell.brokers.nats.kv import NatsKV

TOPIC_KEY = "swell.topic"
COUNTS_PREFIX = keys.TOPIC_COUNTS
FLUSH_EVERY_S = 1.0

_decode = msgspec.json.Decoder().decode


class _Counts(msgspec.Struct, array_like=True):
    matched: int = 0
    filtered: int = 0


class NatsTopics:
    """The topic part of a ``NatsBroker``."""

    def __init__(self, client: NatsClient, kv: NatsKV) -> None:
        self.client = client
        self.kv = kv
        self._pending: dict[tuple[str, str], _Counts] = {}
        self._flushed_at = time.monotonic()
        self._specs: dict[str, tuple[TopicSpec, float]] = {}

    # -- names -----------------------------------------------------------------------------
    def names(self, topic: str) -> tuple[str, str, str]:
        """(stream, subject of an event without a routing key, prefix of scheduled messages)."""
        check_queue_name(topic)
        ns, part = self.client.namespace, stream_part(topic)
        return f"swell-{ns}-T-{part}", f"swell.{ns}.t.{part}", f"swell.{ns}.td.{part}"

    def _own(self, spec: SubscriptionSpec) -> str:
        """The subject in the topic's stream that only this subscription takes: where its
        delayed messages (retries that must not count) land when due."""
        return (f"swell.{self.client.namespace}.tp.{stream_part(spec.topic)}."
                f"{encode_segment(spec.name)}")

    def schedule(self, spec: SubscriptionSpec) -> tuple[str, str, str]:
        """(stream, target subject, holder prefix) of a delayed message for a subscription."""
        stream, _, delayed = self.names(spec.topic)
        return stream, self._own(spec), delayed

    def sources(self, spec: SubscriptionSpec, target: str, start_seq: int) -> list[dict[str, Any]]:
        """The ``sources`` of a subscription's queue stream: the topic's messages whose routing
        key matches (and the subscription's own delayed ones), renamed to the queue's subject
        ``target``, from ``start_seq`` on."""
        stream, base, _ = self.names(spec.topic)
        subjects = [base, f"{base}.>"] if spec.subject is None else [f"{base}.{spec.subject}"]
        # a transform cannot drop what '>' matched: those land on the queue's subject plus the
        # rest, which the queue's consumer takes too (it has no filter: nothing else is there)
        return [{"name": stream, "opt_start_seq": start_seq,
                 "subject_transforms": [{"src": s, "dest": f"{target}.>" if s.endswith(">") else target}
                                        for s in (*subjects, self._own(spec))]}]

    # -- declarations ----------------------------------------------------------------------
    async def declare(self, spec: TopicSpec) -> None:
        stream, base, delayed = self.names(spec.name)
        part = stream_part(spec.name)
        await self.client.check_payload(f"topic {spec.name!r}", spec.max_message_bytes, HEADER_ROOM)
        meta = {TOPIC_KEY: msgspec.json.encode(spec).decode()}
        wanted: dict[str, Any] = {
            "name": stream, "retention": "limits",
            "subjects": [base, f"{base}.>", f"{delayed}.*", f"swell.{self.client.namespace}.tp.{part}.*"],
            "storage": self.client.storage, "num_replicas": self.client.replicas, "discard": "old",
            "max_age": nanos(spec.retention_s), "max_msg_size": -1,
            "duplicate_window": nanos(max(spec.dedup_window_s, MIN_DEDUP_WINDOW_S)),
            "allow_direct": True, "allow_msg_schedules": True,
            "metadata": meta,
        }
        config = await self.client.ensure_stream(stream, wanted, f"topic {spec.name!r}", TOPIC_KEY)
        if config["metadata"][TOPIC_KEY] != meta[TOPIC_KEY]:
            config.update(max_age=wanted["max_age"], duplicate_window=wanted["duplicate_window"],
                          metadata={**config["metadata"], **meta})
            await self.client.api(f"STREAM.UPDATE.{stream}", config)

    async def topic_spec(self, topic: str) -> tuple[TopicSpec, int]:
        """The topic's settings and its last sequence; ``UnknownTopic`` if it was never declared."""
        stream, _, _ = self.names(topic)
        info = await self.client.stream_info(stream)
        raw = None if info is None else (info["config"].get("metadata") or {}).get(TOPIC_KEY)
        if raw is None or info is None:
            raise UnknownTopic(topic)
        spec = msgspec.json.decode(raw, type=TopicSpec)
        self._specs[topic] = (spec, time.monotonic())
        return spec, int(info["state"]["last_seq"])

    async def _spec(self, topic: str) -> TopicSpec:
        """The topic's settings, read again from the server every ``SPEC_REFRESH_S``."""
        cached = self._specs.get(topic)
        if cached is not None and time.monotonic() - cached[1] < SPEC_REFRESH_S:
            return cached[0]
        return (await self.topic_spec(topic))[0]

    async def check_subscription(self, spec: SubscriptionSpec) -> None:
        """``ConfigError`` for an invalid pattern, ``UnknownTopic`` for a topic never declared:
        before a subscription's queue is made."""
        Router.of(spec)  # an invalid pattern fails here, before anything is made
        await self.topic_spec(spec.topic)

    # -- publish ---------------------------------------------------------------------------
    async def publish(self, topic: str, messages: Sequence[Message]) -> list[bool]:
        spec = await self._spec(topic)
        check_publish(spec, messages)
        stream, base, delayed = self.names(topic)
        now = self.client.clock.time()
        items = []
        for m in messages:
            subject = base if m.subject is None else f"{base}.{m.subject}"
            headers = message_headers(m.headers, m.dedup_id, {"Nats-Expected-Stream": stream})
            if m.delay_s > 0:
                headers[H_ENQUEUED] = repr(now)
                headers["Nats-Schedule"] = schedule_at(now + m.delay_s)
                headers["Nats-Schedule-Target"] = subject
                subject = f"{delayed}.{secrets.token_hex(10)}"
            items.append((subject, m.body, headers))
        return [not ack.get("duplicate", False) for ack in await self.client.publish_all(items)]

    # -- filtering on receive ----------------------------------------------------------------
    def admit(self, sub: SubscriptionSpec, router: Router, body: bytes, first: bool) -> bool:
        """Whether a delivered message passes the subscription's filter; counts it the first
        time it is delivered."""
        ok = True
        if router.filter is not None:
            try:
                event = _decode(body)
            except msgspec.DecodeError:
                event = None
            ok = isinstance(event, dict) and router.filter.match(event)
        if first:
            counts = self._pending.setdefault((sub.topic, sub.name), _Counts())
            if ok:
                counts.matched += 1
            else:
                counts.filtered += 1
        return ok

    async def flush(self, *, force: bool = False) -> None:
        """Add this process's counts to the kv store (at most once a second unless ``force``)."""
        if not self._pending or (not force and time.monotonic() - self._flushed_at < FLUSH_EVERY_S):
            return
        self._flushed_at = time.monotonic()
        pending, self._pending = self._pending, {}
        kv = self.kv
        for (topic, name), add in pending.items():
            key = f"{COUNTS_PREFIX}{topic}/{name}"
            while True:
                entry = await kv.get(key)
                if entry is None:
                    if await kv.put_if_absent(key, msgspec.msgpack.encode(add)) is not None:
                        break
                    continue
                old = msgspec.msgpack.decode(entry.value, type=_Counts)
                new = _Counts(old.matched + add.matched, old.filtered + add.filtered)
                if await kv.compare_and_set(key, msgspec.msgpack.encode(new), entry.revision):
                    break

    # -- listing ---------------------------------------------------------------------------
    async def topics(self) -> list[TopicInfo]:
        await self.flush(force=True)
        ns = self.client.namespace
        topics: dict[str, tuple[TopicSpec, int]] = {}
        subs: dict[str, list[SubscriptionSpec]] = {}
        for info in await self.client.list_streams(f"swell.{ns}.>"):
            meta = info["config"].get("metadata") or {}
            if TOPIC_KEY in meta:
                spec = msgspec.json.decode(meta[TOPIC_KEY], type=TopicSpec)
                topics[spec.name] = (spec, int(info["state"]["last_seq"]))
            elif SUBSCRIPTION_KEY in meta:
                sub = msgspec.json.decode(meta[SUBSCRIPTION_KEY], type=SubscriptionSpec)
                subs.setdefault(sub.topic, []).append(sub)
        counts = {e.key[len(COUNTS_PREFIX):]: msgspec.msgpack.decode(e.value, type=_Counts)
                  for e in await self.kv.scan(COUNTS_PREFIX)}
        out = []
        for name in sorted(topics):
            spec, published = topics[name]
            stats = []
            for sub in sorted(subs.get(name, []), key=lambda s: s.name):
                c = counts.get(f"{name}/{sub.name}", _Counts())
                stats.append(SubscriptionStats(spec=sub, matched=c.matched, filtered=c.filtered))
            out.append(TopicInfo(spec=spec, published=published, subscriptions=stats))
        return out
