"""Receiving from NATS queues and settling what was received: pulls become leases (``leases.py``),
acks, releases, extensions, dead letters and redrives (see ``queues.py`` for how each maps)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from swell.brokers.base import (
    REASON_MAX_RECEIVES,
    Delivery,
    Receipt,
    dead_letter_headers,
    redrive_headers,
)
from swell.brokers.nats.leases import Lease, each
from swell.brokers.nats.wire import (
    H_BASE,
    H_ENQUEUED,
    H_FIRST,
    H_HEADERS,
    LONG_POLL_S,
    PULL_BATCH,
    decode_headers,
    encode_headers,
    nanos,
)
from swell.core.errors import BrokerError, BrokerUnavailable

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from swell.brokers.nats.client import NatsClient
    from swell.brokers.nats.leases import Leases
    from swell.brokers.nats.pulls import Puller
    from swell.brokers.nats.queues import NatsQueues, QueueInfo
    from swell.brokers.nats.topics import NatsTopics


def delivered(reply: str) -> tuple[int, int, int, float]:
    """(stream sequence, consumer sequence, times delivered, stored at) from a delivery's ack
    subject: ``$JS.ACK.[<domain>.<account hash>.]<stream>.<consumer>.<delivered>.<stream seq>.
    <consumer seq>.<timestamp ns>.<pending>[.<token>]`` (what ``msg.metadata`` reads, without
    the datetime and objects it builds for each message)."""
    t = reply.split(".")
    i = 4 if len(t) == 9 else 6
    if len(t) < 9 or t[0] != "$JS" or t[1] != "ACK":
        raise BrokerError(f"not a JetStream delivery (ack subject {reply!r})")
    return int(t[i + 1]), int(t[i + 2]), int(t[i]), int(t[i + 3]) / 1e9


class NatsDeliveries:
    """Receive, settle and dead-letter for a ``NatsBroker``."""

    def __init__(self, client: NatsClient, queues: NatsQueues, leases: Leases,
                 topics: NatsTopics, puller: Puller) -> None:
        self.client = client
        self.queues = queues
        self.leases = leases
        self.topics = topics
        self.puller = puller

    # -- receive ---------------------------------------------------------------------------
    async def receive(self, queue: str, max_messages: int, visibility_timeout_s: float | None = None,
                      wait_s: float = 0.0) -> list[Delivery]:
        info = await self.queues.info(queue)
        lease_s = (info.spec.visibility_timeout_s if visibility_timeout_s is None
                   else visibility_timeout_s)
        loop = asyncio.get_running_loop()
        wait_until = loop.time() + max(wait_s, 0.0)
        out: list[Delivery] = []
        while len(out) < max_messages and not self.client.closing:
            want = min(max_messages - len(out), PULL_BATCH)
            wait = 0.0 if out else min(wait_until - loop.time(), LONG_POLL_S)
            got = await self.puller.pull(info.stream, want, wait)
            moved = 0
            for at, msg in got:
                d = await self._admit(info, msg, at, lease_s)
                if d is None:
                    moved += 1
                else:
                    out.append(d)
            if not got and (out or loop.time() >= wait_until):
                break
            if got and len(got) < want and not moved:
                break  # that was all there was
        out.sort(key=lambda d: d.receipt.id)  # a batch in message order, as on every backend
        return out

    async def _admit(self, info: QueueInfo, msg: Msg, at: float,
                     lease_s: float) -> Delivery | None:
        """A pulled message as a lease, or ``None`` if it went to the dead-letter queue."""
        sseq, token, times, stored_at = delivered(msg.reply)
        raw = msg.headers or {}
        count = int(raw.get(H_BASE, "0")) + times
        enqueued = float(raw[H_ENQUEUED]) if H_ENQUEUED in raw else stored_at
        headers = decode_headers(raw.get(H_HEADERS))
        key = (info.spec.name, sseq)
        leases = self.leases
        old = leases.by_key.pop(key, None)  # received again: that lease is over
        if old is not None:
            old.stop_keeper()
        first = float(raw[H_FIRST]) if H_FIRST in raw else (
            at if times == 1 else leases.firsts.get(key))
        if info.subscription is not None and info.router is not None and not \
                self.topics.admit(info.subscription, info.router, msg.data, times == 1):
            await self.client.ack(msg.reply, b"+ACK")  # kept out by the subscription's filter
            return None
        if 0 < info.spec.max_receives < count:
            await self._to_dlq(info, sseq, msg.reply, msg.data, headers, enqueued,
                               REASON_MAX_RECEIVES, None, count - 1)
            return None
        if first is not None:
            leases.remember_first(key, first)
        lease = leases.by_key[key] = Lease(info.spec.name, sseq, token, msg.reply, info.ack_wait_s,
                                           at + lease_s, at + info.ack_wait_s, count, msg.data,
                                           headers, enqueued, first)
        leases.keep(lease)
        return Delivery(receipt=Receipt(info.spec.name, sseq, token), body=msg.data,
                        headers=dict(headers), receive_count=count, enqueued_at=enqueued,
                        first_received_at=first)

    # -- settle ----------------------------------------------------------------------------
    async def ack(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        held, stale = self.leases.split(receipts)
        await self._ack_all(held, b"+ACK")
        for lease in held:
            self.leases.forget(lease)
        return stale

    async def _ack_all(self, leases: Sequence[Lease], kind: bytes) -> None:
        """``kind`` for every lease, pipelined, and wait until the server applied them all.

        A consumer applies the acks of one connection in the order they came, and answers an ack
        that asks for it once it is applied; so only the last ack of each queue asks, and its
        answer confirms the ones before it (one round trip a batch, not one an ack)."""
        if not leases:
            return
        nc = await self.client.connection()
        last: dict[str, Lease] = {}
        for lease in leases:
            last[lease.queue] = lease
        confirm = set(map(id, last.values()))
        try:
            for lease in leases:
                if id(lease) not in confirm:
                    await nc.publish(lease.reply, kind)
        except Exception as exc:
            raise BrokerUnavailable(f"NATS at {self.client.url} took no ack: {exc!r}") from exc
        if len(last) == 1:  # the usual case: no task for it
            await self.client.ack(leases[-1].reply, kind)
        else:
            await each(list(last.values()), lambda lease: self.client.ack(lease.reply, kind))

    async def release(self, receipts: Sequence[Receipt], delay_s: float = 0.0, *,
                      count: bool = True) -> list[Receipt]:
        held, stale = self.leases.split(receipts)
        delay_s = max(delay_s, 0.0)

        async def nak(lease: Lease) -> None:
            payload = b"-NAK"
            if delay_s > 0:
                payload += b" " + json.dumps({"delay": nanos(delay_s)}).encode()
            now = self.client.clock.time()
            await self.client.ack(lease.reply, payload)
            lease.stop_keeper()
            lease.ready_at = now + delay_s

        async def again(lease: Lease) -> None:
            await self._republish(await self.queues.info(lease.queue), lease, delay_s)
            await self.client.ack(lease.reply, b"+ACK")
            self.leases.forget(lease)

        await each(held, nak if count else again)
        return stale

    async def _republish(self, info: QueueInfo, lease: Lease, delay_s: float) -> None:
        """A copy of a leased message, one receive fewer, visible after ``delay_s``. Its dedup id
        keeps a retried release from making two."""
        headers = {"Nats-Expected-Stream": info.stream, H_ENQUEUED: repr(lease.enqueued_at),
                   H_BASE: str(max(0, lease.count - 1)),
                   "Nats-Msg-Id": f"swell~again~{lease.sseq}~{lease.token}"}
        encoded = encode_headers(lease.headers)
        if encoded:
            headers[H_HEADERS] = encoded
        if lease.first_received_at is not None:
            headers[H_FIRST] = repr(lease.first_received_at)
        subject = self.queues.target(info, headers, self.client.clock.time(), delay_s)
        await self.client.publish(subject, lease.body, headers)

    async def extend(self, receipts: Sequence[Receipt], seconds: float) -> list[Receipt]:
        held, stale = self.leases.split(receipts)

        async def extend(lease: Lease) -> None:
            now = self.client.clock.time()
            lease.deadline = now + seconds
            lease.stop_keeper()
            action = lease.next_action(now)
            if action is not None and action[1] <= now:
                await self.leases.act(lease, action[0])  # what is due now, so an error shows here
            self.leases.keep(lease)

        await each(held, extend)
        return stale

    # -- dead letters ----------------------------------------------------------------------
    async def dead_letter(self, receipt: Receipt, reason: str, error: str | None = None) -> bool:
        lease = self.leases.held(receipt)
        if lease is None:
            return False
        info = await self.queues.info(receipt.queue)
        if info.spec.dead_letter_queue is None:
            return False
        await self._to_dlq(info, lease.sseq, lease.reply, lease.body, lease.headers,
                           lease.enqueued_at, reason, error, lease.count)
        self.leases.forget(lease)
        return True

    async def _to_dlq(self, info: QueueInfo, sseq: int, reply: str, body: bytes,
                      headers: dict[str, str], enqueued_at: float, reason: str,
                      error: str | None, attempts: int) -> None:
        """Publish to the dead-letter queue, then ack the original. A crash between the two
        leaves the message where it was; the dedup id keeps the DLQ from a second copy."""
        name = info.spec.dead_letter_queue
        if name is not None:
            dlq = await self.queues.info(name)
            h = dead_letter_headers(headers, source=info.spec.name, reason=reason, error=error,
                                    attempts=attempts, at=self.client.clock.time())
            await self.client.publish(dlq.subject, body, {
                "Nats-Expected-Stream": dlq.stream, H_HEADERS: encode_headers(h) or "{}",
                H_ENQUEUED: repr(enqueued_at), "Nats-Msg-Id": f"swell~dead~{info.stream}~{sseq}"})
        await self.client.ack(reply, b"+ACK")
        self.leases.firsts.pop((info.spec.name, sseq), None)

    async def redrive(self, queue: str, max_messages: int | None = None) -> int:
        info = await self.queues.info(queue)
        name = info.spec.dead_letter_queue
        if name is None:
            return 0
        dlq = await self.queues.info(name)
        moved = 0
        while max_messages is None or moved < max_messages:
            want = PULL_BATCH if max_messages is None else min(PULL_BATCH, max_messages - moved)
            got = await self.puller.pull(dlq.stream, want, 0.0)
            for _, msg in got:
                await self._redrive_one(info, dlq, msg)
                moved += 1
            if len(got) < want:
                break
        return moved

    async def _redrive_one(self, info: QueueInfo, dlq: QueueInfo, msg: Msg) -> None:
        raw, meta = msg.headers or {}, msg.metadata
        headers = {"Nats-Expected-Stream": info.stream,
                   "Nats-Msg-Id": f"swell~redrive~{dlq.stream}~{meta.sequence.stream}",
                   H_ENQUEUED: raw.get(H_ENQUEUED) or repr(meta.timestamp.timestamp())}
        encoded = encode_headers(redrive_headers(decode_headers(raw.get(H_HEADERS))))
        if encoded:
            headers[H_HEADERS] = encoded
        await self.client.publish(info.subject, msg.data, headers)
        await self.client.ack(msg.reply, b"+ACK")
