"""Queues on NATS JetStream: declarations, sends, and looking (peek, stats, purge). Receiving and
settling are in ``deliveries.py``, the leases it hands out in ``leases.py``.

How the queue protocol maps onto JetStream
------------------------------------------

------------------------------------------

- **A queue is a stream** ``swell-<namespace>-<queue>`` (work-queue retention: an acked message is
  gone) holding the subject ``swell.<namespace>.q.<queue>``, with **one durable pull consumer**
  ``swell``. The queue's ``visibility_timeout_s`` is the consumer's ack wait, its
  ``dedup_window_s`` the stream's duplicate window (``dedup_id`` travels as ``Nats-Msg-Id``). The
  declared ``QueueSpec`` is kept in the stream's metadata, which is what ``queues()`` and
  ``queue_spec()`` read. Declaring creates the stream and consumer, or checks them: settings swell
  owns (ack wait, duplicate window, the stored spec) follow the declaration (logged); anything else
  that differs (retention, subjects, storage, replicas, a stream swell did not make) is a
  ``ConfigError``, never changed. A queue name must be a dotted name of ``[A-Za-z0-9_-]`` tokens.
- **Receipts** are ``Receipt(queue, stream sequence, consumer delivery sequence)``. JetStream
  itself takes an ack for an old delivery of a message, so each broker keeps the leases it handed
  out and refuses a receipt that is not its latest, live lease: a receipt is good in the broker
  that received it, until its lease ends (expiry, settle, or redelivery).
- **The receive count** is the delivery count from the message metadata, plus a ``Swell-Receives``
  base that a re-published copy carries (below). Past ``max_receives`` a receive moves the message
  to its dead-letter queue (a publish there, then an ack) with the reason in its headers.
- **Leases**: the consumer's ack wait is the lease the server enforces. A receive with another
  ``visibility_timeout_s``, and ``extend``, are kept by this broker: a longer lease is held with
  in-progress acks (``+WPI``) sent before the server's ack wait runs out, the last one timed so the
  server's redelivery falls on the deadline; a shorter one ends with a ``-NAK`` at its deadline. If
  the process dies the server's ack wait still ends the lease. A lease counts as held only up to the
  last ack wait the server confirmed, so after a lost connection a receipt turns stale rather than
  settle a message the server may have handed to someone else.
- ``release(delay_s)`` is a ``-NAK`` with that delay. ``release(count=False)`` cannot be a nak
  (JetStream counts every delivery): the message is re-published with its receive count, first
  receive time and enqueue time in headers (scheduled if delayed) and the original is acked; it gets
  a new id and joins the back of the queue, like any released message.
- **Delayed sends** are JetStream message schedules (``Nats-Schedule: @at ...``, server 2.12+): a
  holder message on ``swell.<namespace>.d.<queue>.<id>`` that the server turns into a queue message
  when due. The server fires schedules up to about 0.25 s late.
- **Receives** are pulls with ``no_wait`` and an expiry: the server answers as soon as it has
  anything (up to the batch) or when ``wait_s`` runs out. Even ``wait_s=0`` waits up to 20 ms,
  because a pull right after a publish can otherwise be told "no messages" before the consumer has
  heard of it; with that, a receive sees every send that returned before it.
- ``stats``: the stream's message count on the queue's subject (the rest of the stream is
  scheduled, so ``delayed``) and the consumer's ``num_ack_pending`` (leased) give ready =
  stored - leased. JetStream does not tell a nak'd message waiting out its delay, or an expired
  lease waiting for redelivery, from a live lease; this broker moves the ones it knows of (its own
  releases and expiries) to ``delayed`` and ``depth``, so a single process sees exact numbers, and
  another process's delayed releases count as in flight until they are due and received again.
  ``oldest_age_s`` is read from the first message of the stream.
- ``peek`` reads the stream directly (including scheduled messages); its receive counts are what
  this broker knows. ``purge`` purges the stream. ``redrive`` leases the dead letters from the
  dead-letter queue's consumer, re-publishes them and acks them.
- ``first_received_at`` is exact for a first delivery and for redeliveries to the broker that saw
  the first one (and travels with a re-published copy); a redelivery to another process reports
  ``None`` (unknown).
- Times (``enqueued_at``, schedules, ack waits) are the server's wall clock and this broker's
  clock together, so the broker's clock must be the real one (the default).

"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from swell.brokers.base import (
    Delivery,
    Message,
    QueueSpec,
    QueueStats,
    Receipt,
    SubscriptionSpec,
    check_sizes,
)
from swell.brokers.nats.wire import (
    CONSUMER,
    ERR_CONSUMER_NOT_FOUND,
    H_BASE,
    H_ENQUEUED,
    H_FIRST,
    H_HEADERS,
    HEADER_ROOM,
    MIN_DEDUP_WINDOW_S,
    NAME,
    SPEC_KEY,
    SPEC_REFRESH_S,
    SUBSCRIPTION_KEY,
    ApiError,
    decode_headers,
    message_headers,
    nanos,
    parse_ts,
    queue_names,
    schedule_at,
    sequence,
)
from swell.brokers.topics import Router
from swell.core.errors import BrokerError, ConfigError, UnknownQueue

if TYPE_CHECKING:
    from swell.brokers.nats.client import NatsClient
    from swell.brokers.nats.leases import Leases
    from swell.brokers.nats.topics import NatsTopics

log = logging.getLogger("swell.brokers.nats")


@dataclass(slots=True)
class QueueInfo:
    """A queue's settings and names, as last read from the server."""

    spec: QueueSpec
    stream: str
    subject: str
    delayed_prefix: str
    ack_wait_s: float
    loaded_at: float
    subscription: SubscriptionSpec | None = None
    """Set for a subscription's queue, whose consumer applies its content filter."""
    router: Router | None = None


class NatsQueues:
    """The queue part of a ``NatsBroker`` (see the module docstring)."""

    def __init__(self, client: NatsClient, leases: Leases, topics: NatsTopics) -> None:
        self.client = client
        self.leases = leases
        self.topics = topics
        self._queues: dict[str, QueueInfo] = {}

    # -- declarations ----------------------------------------------------------------------
    def names(self, queue: str) -> tuple[str, str, str]:
        """(stream, subject, prefix of scheduled messages) of ``queue``."""
        return queue_names(self.client.namespace, queue)

    async def declare_queue(self, spec: QueueSpec, *,
                            subscription: SubscriptionSpec | None = None) -> None:
        specs = [s for s in (spec, spec.dlq_spec()) if s is not None]
        for s in specs:
            self.names(s.name)  # every name checked before anything is made
        for s in specs:
            await self.client.check_payload(f"queue {s.name!r}", s.max_message_bytes, HEADER_ROOM,
                                            f" less {HEADER_ROOM:,} for headers")
        for s in specs:
            await self._declare(s, is_main=s is spec, subscription=subscription if s is spec else None)

    async def _declare(self, spec: QueueSpec, *, is_main: bool,
                       subscription: SubscriptionSpec | None = None) -> None:
        stream, subject, delayed = self.names(spec.name)
        wanted = self._stream_config(spec, stream, subject, delayed)
        if subscription is not None:  # fed from the topic's stream, from its next message on
            _, last = await self.topics.topic_spec(subscription.topic)
            wanted["sources"] = self.topics.sources(subscription, subject, last + 1)
            wanted["metadata"][SUBSCRIPTION_KEY] = msgspec.json.encode(subscription).decode()
            wanted["subjects"] = [subject]  # delays are scheduled in the topic's stream
            wanted["allow_msg_schedules"] = False
        config = await self.client.ensure_stream(stream, wanted, f"queue {spec.name!r}",
                                                 "swell.queue")
        stored = stored_spec(config)
        meta = config.get("metadata") or {}
        if not is_main and stored is not None and not stored.is_dead_letter:
            spec = stored  # a dead-letter queue declared as a queue of its own keeps its settings
        elif (stored != spec or config.get("duplicate_window") != wanted["duplicate_window"]
              or meta.get(SUBSCRIPTION_KEY) != wanted["metadata"].get(SUBSCRIPTION_KEY)):
            log.info("queue %r: stored settings updated as declared (stream %s)", spec.name, stream)
            config["duplicate_window"] = wanted["duplicate_window"]
            config["metadata"] = {**meta, **wanted["metadata"]}
            if meta.get(SUBSCRIPTION_KEY) != wanted["metadata"].get(SUBSCRIPTION_KEY):
                config["sources"] = wanted.get("sources")  # a changed subscription: from now on
            await self.client.api(f"STREAM.UPDATE.{stream}", config)
        await self._remember(spec.name, spec, config)

    def _stream_config(self, spec: QueueSpec, stream: str, subject: str,
                       delayed: str) -> dict[str, Any]:
        return {
            "name": stream, "subjects": [subject, f"{delayed}.*"], "retention": "workqueue",
            "storage": self.client.storage, "num_replicas": self.client.replicas, "discard": "old",
            "max_msgs": -1, "max_bytes": -1, "max_age": 0, "max_msg_size": -1,
            "max_msgs_per_subject": -1, "max_consumers": -1,
            "duplicate_window": nanos(max(spec.dedup_window_s, MIN_DEDUP_WINDOW_S)),
            "allow_direct": True, "allow_msg_schedules": True,
            "metadata": {SPEC_KEY: msgspec.json.encode(spec).decode(), "swell.queue": spec.name},
        }

    async def _ensure_consumer(self, spec: QueueSpec, stream: str, subject: str | None) -> float:
        """Create or check the queue's consumer; its ack wait follows the declared visibility.
        ``subject=None``: no filter (a subscription's stream holds only what the queue takes)."""
        config: dict[str, Any] = {
            "durable_name": CONSUMER, "name": CONSUMER, "ack_policy": "explicit",
            "ack_wait": nanos(spec.visibility_timeout_s), "max_deliver": -1,
            "deliver_policy": "all", "replay_policy": "instant", "max_ack_pending": -1}
        if subject is not None:
            config["filter_subject"] = subject
        try:
            have: dict[str, Any] | None = (
                await self.client.api(f"CONSUMER.INFO.{stream}.{CONSUMER}"))["config"]
        except ApiError as exc:
            if exc.err_code != ERR_CONSUMER_NOT_FOUND:
                raise
            have = None
        if have is not None:
            odd = [k for k in ("ack_policy", "max_deliver", "filter_subject", "deliver_policy")
                   if have.get(k) != config.get(k)]
            if odd:
                raise ConfigError(f"the consumer of queue {spec.name!r} (stream {stream!r}) exists "
                                  f"with other settings ({', '.join(odd)}); swell does not change "
                                  "them: delete it or use another namespace")
            if have.get("ack_wait") == config["ack_wait"]:
                return float(have["ack_wait"]) / 1e9
        request = {"stream_name": stream, "config": config,
                   "action": "create" if have is None else "update"}
        try:
            got = await self.client.api(f"CONSUMER.CREATE.{stream}.{CONSUMER}", request)
        except ApiError:
            if have is not None:
                raise
            request["action"] = "update"  # another process made it meanwhile
            got = await self.client.api(f"CONSUMER.CREATE.{stream}.{CONSUMER}", request)
        return float(got["config"]["ack_wait"]) / 1e9

    async def _remember(self, queue: str, spec: QueueSpec, config: dict[str, Any]) -> QueueInfo:
        """The settings of ``queue`` (its stream's ``config``), its consumer made or checked."""
        stream, subject, delayed = self.names(queue)
        sub, router = routing(config)
        ack_wait = await self._ensure_consumer(spec, stream, None if sub else subject)
        info = self._queues[queue] = QueueInfo(spec, stream, subject, delayed, ack_wait,
                                               self.client.clock.monotonic(), sub, router)
        return info

    async def info(self, queue: str, *, fresh: bool = False) -> QueueInfo:
        """The queue's settings, read again from the server every ``SPEC_REFRESH_S``."""
        info = self._queues.get(queue)
        if (info is not None and not fresh
                and self.client.clock.monotonic() - info.loaded_at < SPEC_REFRESH_S):
            return info
        if not NAME.fullmatch(queue):
            raise UnknownQueue(queue)
        got = await self.client.stream_info(self.names(queue)[0])
        spec = None if got is None else stored_spec(got["config"])
        if spec is None or got is None:
            self._queues.pop(queue, None)
            raise UnknownQueue(queue)
        return await self._remember(queue, spec, got["config"])

    async def queue_spec(self, queue: str) -> QueueSpec:
        return (await self.info(queue, fresh=True)).spec

    async def queues(self) -> list[QueueSpec]:
        streams = await self.client.list_streams(f"swell.{self.client.namespace}.q.>")
        return sorted((s for s in (stored_spec(i["config"]) for i in streams) if s is not None),
                      key=lambda s: s.name)

    # -- send ------------------------------------------------------------------------------
    async def send(self, queue: str, messages: Sequence[Message]) -> list[bool]:
        info = await self.info(queue)
        check_sizes(info.spec, messages)
        now = self.client.clock.time()
        items = []
        for m in messages:
            # no Nats-Expected-Stream here: it would be stored with the message and parsed again
            # at every delivery; the publish ack names the stream that stored it instead
            headers = message_headers(m.headers, m.dedup_id, {})
            items.append((self.target(info, headers, now, m.delay_s), m.body, headers))
        acks = await self.client.publish_all(items)
        for (_, _, headers), ack in zip(items, acks, strict=True):
            stream = headers.get("Nats-Expected-Stream", info.stream)  # (a schedule names its own)
            if ack.get("stream") != stream:  # another stream took the queue's subject
                raise BrokerError(f"queue {queue!r}: a message was stored by stream "
                                  f"{ack.get('stream')!r}, not by the queue's {stream!r}")
        return [not ack.get("duplicate", False) for ack in acks]

    def target(self, info: QueueInfo, headers: dict[str, str], now: float, delay_s: float) -> str:
        """The subject to publish on: the queue's, or a schedule that fires into it when due (a
        subscription's queue, which sources from its topic, cannot schedule: the topic's stream
        holds the schedule, which fires onto the subscription's own subject there)."""
        if delay_s <= 0:
            return info.subject
        headers.setdefault(H_ENQUEUED, repr(now))
        headers["Nats-Schedule"] = schedule_at(now + delay_s)
        if info.subscription is not None:
            stream, target, prefix = self.topics.schedule(info.subscription)
            headers["Nats-Expected-Stream"] = stream
            headers["Nats-Schedule-Target"] = target
            return f"{prefix}.{secrets.token_hex(10)}"
        headers["Nats-Schedule-Target"] = info.subject
        return f"{info.delayed_prefix}.{secrets.token_hex(10)}"

    # -- looking ---------------------------------------------------------------------------
    async def peek(self, queue: str, max_messages: int = 100) -> list[Delivery]:
        info = await self.info(queue)
        if max_messages <= 0:
            return []
        out = []
        for msg in await self.client.direct(info.stream, {"seq": 1, "batch": max_messages}):
            raw = msg.headers or {}
            sseq = sequence(msg)
            lease = self.leases.by_key.get((queue, sseq))
            first = self.leases.firsts.get((queue, sseq))
            if first is None and H_FIRST in raw:
                first = float(raw[H_FIRST])
            out.append(Delivery(
                receipt=Receipt(queue, sseq, -1), body=msg.data,
                headers=decode_headers(raw.get(H_HEADERS)),
                receive_count=lease.count if lease else int(raw.get(H_BASE, "0")),
                enqueued_at=enqueued(raw) or 0.0, first_received_at=first))
        return out

    async def stats(self, queue: str) -> QueueStats:
        info = await self.info(queue)
        # what is stored, on the queue's subject and in all (the rest are scheduled); what the
        # consumer has handed out and not had acked (leased, or given back and not taken again)
        state = (await self.client.api(f"STREAM.INFO.{info.stream}",
                                       {"subjects_filter": info.subject}))["state"]
        consumer = await self.client.api(f"CONSUMER.INFO.{info.stream}.{CONSUMER}")
        total = int(state.get("messages", 0))
        on_queue = total if info.subscription is not None else (  # (which schedules nothing)
            min(total, int((state.get("subjects") or {}).get(info.subject, 0))))
        leased = min(on_queue, int(consumer["num_ack_pending"]))
        ready, delayed = self.leases.known_returns(info.spec.name, info.spec.visibility_timeout_s)
        ready = min(ready, leased)
        delayed = min(delayed, leased - ready)
        oldest = await self._oldest(info, state) if total else None
        now = self.client.clock.time()
        return QueueStats(queue=queue, depth=on_queue - leased + ready,
                          in_flight=leased - ready - delayed,
                          delayed=total - on_queue + delayed,
                          oldest_age_s=0.0 if oldest is None else max(0.0, now - oldest))

    async def stats_many(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        out: dict[str, QueueStats] = {}
        for queue in queues:
            with contextlib.suppress(UnknownQueue):
                out[queue] = await self.stats(queue)
        return out

    async def _oldest(self, info: QueueInfo, state: dict[str, Any]) -> float | None:
        got = await self.client.direct(info.stream, {"seq": int(state["first_seq"]), "batch": 1})
        if got:
            return enqueued(got[0].headers or {})
        return parse_ts(state["first_ts"]) if state.get("first_ts") else None

    async def purge(self, queue: str) -> int:
        info = await self.info(queue)
        purged = int((await self.client.api(f"STREAM.PURGE.{info.stream}", {}))["purged"])
        self.leases.forget_queue(queue)
        return purged


def enqueued(raw: dict[str, str]) -> float | None:
    """When a stored message was first sent: our header, else the server's timestamp."""
    if H_ENQUEUED in raw:
        return float(raw[H_ENQUEUED])
    return parse_ts(raw["Nats-Time-Stamp"]) if "Nats-Time-Stamp" in raw else None


def routing(config: dict[str, Any]) -> tuple[SubscriptionSpec | None, Router | None]:
    """The subscription a queue stream belongs to, if any, and its compiled routing."""
    raw = (config.get("metadata") or {}).get(SUBSCRIPTION_KEY)
    if raw is None:
        return None, None
    sub = msgspec.json.decode(raw, type=SubscriptionSpec)
    return sub, Router.of(sub)


def stored_spec(config: dict[str, Any]) -> QueueSpec | None:
    """The ``QueueSpec`` kept in a queue stream's metadata."""
    raw = (config.get("metadata") or {}).get(SPEC_KEY)
    return None if raw is None else msgspec.json.decode(raw, type=QueueSpec)
