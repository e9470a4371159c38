"""Streams (partitioned logs) on NATS JetStream.

A swell stream is one JetStream stream, ``swell-<ns>-S-<stream>``, with limits retention
(``max_age`` is the stream's ``retention_s``) and one subject per partition,
``swell.<ns>.s.<stream>.<partition>``. The declared ``StreamSpec`` is kept in its metadata.

- **Offsets** are JetStream stream sequences: they grow within a partition, with gaps (the other
  partitions' records take the sequences between). A reader goes on from ``offset + 1``.
- **Append** is one *atomic batch* (server 2.12+, ``allow_atomic``): every record but the last is
  published without a reply, the last commits the batch, and the one ack (the sequence of the last
  record, and the count) gives every offset, since a batch is stored in consecutive sequences. The
  server stores all of a batch or none of it, so a lost connection mid-batch stores nothing. A
  batch of more than ``ATOMIC_MAX`` records (the server's limit) is appended in several atomic
  batches, in order. If the commit's ack is lost the batch may have been stored:
  ``BrokerUnavailable`` then, and appending again may store it twice. ``dedup_id`` is not used
  (a 2.12 server refuses ``Nats-Msg-Id`` inside an atomic batch).
- **Read** is a batched direct get of the partition's subject from ``offset``; with ``since``, from
  the server's timestamp index (``start_time``). A record's ``timestamp`` is the server's, the
  clock its retention runs on too.
- **end_offsets**: per partition, the sequence of its last stored record + 1, from one direct get
  of the last message of every partition subject (``multi_last``, as of the stream's last
  sequence); a partition with nothing stored gets the stream's first sequence, which never goes
  down and is past everything the partition ever held.
- **lag**: per partition, one direct get of the first record at or after the offset, whose
  ``Nats-Num-Pending`` header counts the partition's records after it (exact, not a sequence
  difference, which the gaps would inflate).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from swell.brokers.base import Message, Record, StreamSpec, partition_of
from swell.brokers.logs import check_partition, partition_change
from swell.brokers.nats.wire import (
    H_HEADERS,
    HEADER_ROOM,
    NAME,
    REQUEST_TIMEOUT_S,
    SPEC_REFRESH_S,
    check_name,
    decode_headers,
    decode_segment,
    encode_segment,
    message_headers,
    nanos,
    parse_ts,
    rfc3339,
    sequence,
    stream_part,
)
from swell.core.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    MessageTooLarge,
    UnknownStream,
)

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from swell.brokers.nats.client import NatsClient

STREAM_KEY = "swell.stream"
H_KEY = "Swell-Key"
#: records per atomic batch: the server's default limit
ATOMIC_MAX = 1000
#: the server wants a duplicate window no longer than ``max_age`` (no message ids are sent)
DEDUP_WINDOW_S = 120.0
#: a ``since`` read starts this much earlier in the server's time index, so that a timestamp read
#: back from a record (a float, not the server's nanoseconds) finds that record again
SINCE_SLACK_S = 0.001


class NatsLogs:
    """The log part of a ``NatsBroker``."""

    def __init__(self, client: NatsClient) -> None:
        self.client = client
        self._specs: dict[str, tuple[StreamSpec, float]] = {}
        self._appended: dict[str, int] = {}  # round-robin counts, for records without a key

    # -- names -----------------------------------------------------------------------------
    def names(self, name: str) -> tuple[str, str]:
        """(JetStream stream, subject prefix of its partitions)."""
        ns, part = self.client.namespace, stream_part(name)
        return f"swell-{ns}-S-{part}", f"swell.{ns}.s.{part}"

    # -- declarations ----------------------------------------------------------------------
    async def declare(self, spec: StreamSpec) -> None:
        check_name(spec.name, "stream")
        if spec.partitions < 1:
            raise ConfigError(f"stream {spec.name!r} needs at least one partition")
        await self.client.check_payload(f"stream {spec.name!r}", spec.max_message_bytes,
                                        HEADER_ROOM)
        stream, prefix = self.names(spec.name)
        have = _spec_of(await self.client.stream_info(stream))
        if have is not None and have.partitions != spec.partitions:
            raise ConfigError(partition_change(have, spec))
        meta = {STREAM_KEY: msgspec.json.encode(spec).decode()}
        wanted: dict[str, Any] = {
            "name": stream, "retention": "limits",
            "subjects": [f"{prefix}.{p}" for p in range(spec.partitions)],
            "storage": self.client.storage, "num_replicas": self.client.replicas, "discard": "old",
            "max_age": nanos(spec.retention_s), "max_msg_size": -1,
            "duplicate_window": nanos(min(spec.retention_s, DEDUP_WINDOW_S)),
            "allow_direct": True, "allow_atomic": True, "allow_msg_schedules": False,
            "metadata": meta,
        }
        config = await self.client.ensure_stream(stream, wanted, f"stream {spec.name!r}", STREAM_KEY)
        if config["metadata"][STREAM_KEY] != meta[STREAM_KEY] or not config.get("allow_atomic"):
            config.update(max_age=wanted["max_age"], duplicate_window=wanted["duplicate_window"],
                          allow_atomic=True, metadata={**config["metadata"], **meta})
            await self.client.api(f"STREAM.UPDATE.{stream}", config)
        self._specs[spec.name] = (spec, time.monotonic())

    async def stream_spec(self, name: str) -> StreamSpec:
        """The stream's settings, read from the server; ``UnknownStream`` if never declared."""
        if not NAME.fullmatch(name):
            raise UnknownStream(name)
        spec = _spec_of(await self.client.stream_info(self.names(name)[0]))
        if spec is None:
            self._specs.pop(name, None)
            raise UnknownStream(name)
        self._specs[name] = (spec, time.monotonic())
        return spec

    async def _spec(self, name: str) -> StreamSpec:
        """The stream's settings, read again from the server every ``SPEC_REFRESH_S``."""
        cached = self._specs.get(name)
        if cached is not None and time.monotonic() - cached[1] < SPEC_REFRESH_S:
            return cached[0]
        return await self.stream_spec(name)

    async def streams(self) -> list[StreamSpec]:
        infos = await self.client.list_streams(f"swell.{self.client.namespace}.s.>")
        return sorted((s for s in map(_spec_of, infos) if s is not None), key=lambda s: s.name)

    # -- append ----------------------------------------------------------------------------
    async def append(self, name: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
        spec = await self._spec(name)
        for m in messages:  # all of the batch is checked before any of it is sent
            if len(m.body) > spec.max_message_bytes:
                raise MessageTooLarge(name, len(m.body), spec.max_message_bytes)
        stream, prefix = self.names(name)
        count = self._appended.get(name)
        if count is None:  # start anywhere: processes that append a record each spread too
            count = random.randrange(spec.partitions)
        self._appended[name] = count + len(messages)
        placed: list[int] = []
        items: list[tuple[str, bytes, dict[str, str]]] = []
        for i, m in enumerate(messages):
            p = partition_of(m.key, spec.partitions, count + i)
            headers = message_headers(m.headers, None, {})
            if m.key is not None:
                headers[H_KEY] = encode_segment(m.key)
            placed.append(p)
            items.append((f"{prefix}.{p}", m.body, headers))
        offsets: list[int] = []
        for start in range(0, len(items), ATOMIC_MAX):
            chunk = items[start:start + ATOMIC_MAX]
            first = await self._store(stream, chunk)
            offsets.extend(range(first, first + len(chunk)))
        return list(zip(placed, offsets, strict=True))

    async def _store(self, stream: str, items: list[tuple[str, bytes, dict[str, str]]]) -> int:
        """Store ``items`` in ``stream`` as one atomic batch; the sequence of the first."""
        if len(items) > 1:
            batch = secrets.token_hex(16)
            for i, (_, _, headers) in enumerate(items, 1):
                headers["Nats-Batch-Id"] = batch
                headers["Nats-Batch-Sequence"] = str(i)
            items[-1][2]["Nats-Batch-Commit"] = "1"
        client = self.client
        nc = await client.connection()
        with client.reply_box() as (reply, box):
            try:  # only the commit is answered: with the ack, or why nothing was stored
                for subject, body, headers in items[:-1]:
                    await nc.publish(subject, body, headers=headers)
                subject, body, headers = items[-1]
                await nc.publish(subject, body, reply=reply, headers=headers)
            except Exception as exc:  # closed, or the buffer of a reconnecting client is full
                raise BrokerUnavailable(f"NATS at {client.url} took no records: {exc!r}") from exc
            msg = await client.next_reply(box, REQUEST_TIMEOUT_S + 0.005 * len(items))
        if msg is None:
            raise BrokerUnavailable(f"NATS at {client.url} did not confirm an append to {stream} "
                                    "in time (it may have been stored)")
        ack = client.stored(msg, stream, append=True)
        if ack.get("stream") != stream or int(ack.get("count", 1)) != len(items):
            raise BrokerError(f"an append to {stream} was stored as {ack}, not as one batch of "
                              f"{len(items)} in {stream}")
        return int(ack["seq"]) - len(items) + 1

    # -- reading ---------------------------------------------------------------------------
    async def read(self, name: str, partition: int, offset: int = 0, max_records: int = 100, *,
                   since: float | None = None) -> list[Record]:
        spec = await self._spec(name)
        check_partition(spec, partition)
        if max_records <= 0:
            return []
        stream, prefix = self.names(name)
        subject = f"{prefix}.{partition}"
        start: dict[str, Any] = {"seq": max(offset, 1)}
        if since is not None:
            start = {"start_time": rfc3339(max(0.0, since - SINCE_SLACK_S))}
        out: list[Record] = []
        while True:
            want = max_records - len(out)
            got = await self.client.direct(stream, {**start, "next_by_subj": subject, "batch": want})
            for msg in got:
                r = _record(partition, msg)
                # from the first record at or after both offset and since, everything after it
                if out or (r.offset >= offset and (since is None or r.timestamp >= since)):
                    out.append(r)
            if len(out) >= max_records or len(got) < want:
                return out
            start = {"seq": max(sequence(got[-1]) + 1, offset)}

    async def end_offsets(self, name: str) -> list[int]:
        stream, prefix = self.names(name)
        info = await self.client.stream_info(stream) if NAME.fullmatch(name) else None
        spec = _spec_of(info)
        if spec is None or info is None:
            raise UnknownStream(name)
        state = info["state"]
        last, first = int(state.get("last_seq", 0)), int(state.get("first_seq", 0))
        ends = [first] * spec.partitions
        if int(state.get("messages", 0)) == 0:
            return ends
        request = {"multi_last": [f"{prefix}.{p}" for p in range(spec.partitions)],
                   "batch": spec.partitions, "up_to_seq": last}
        for msg in await self.client.direct(stream, request):
            p = int((msg.headers or {}).get("Nats-Subject", "").rsplit(".", 1)[-1])
            ends[p] = sequence(msg) + 1
        return ends

    async def lag(self, name: str, offsets: Sequence[int]) -> list[int]:
        spec = await self._spec(name)
        if len(offsets) != spec.partitions:
            raise ConfigError(f"stream {name!r} has {spec.partitions} partitions, not "
                              f"{len(offsets)}")
        stream, prefix = self.names(name)

        async def pending(p: int, offset: int) -> int:
            # the first record at or after offset, and how many of the partition follow it
            got = await self.client.direct(stream, {"seq": max(offset, 1),
                                                "next_by_subj": f"{prefix}.{p}", "batch": 1})
            return 1 + int((got[0].headers or {}).get("Nats-Num-Pending", "0")) if got else 0

        return list(await asyncio.gather(*(pending(p, o) for p, o in enumerate(offsets))))


def _spec_of(info: dict[str, Any] | None) -> StreamSpec | None:
    raw = None if info is None else (info["config"].get("metadata") or {}).get(STREAM_KEY)
    return None if raw is None else msgspec.json.decode(raw, type=StreamSpec)


def _record(partition: int, msg: Msg) -> Record:
    raw = msg.headers or {}
    key = raw.get(H_KEY)
    return Record(partition=partition, offset=sequence(msg), timestamp=parse_ts(raw["Nats-Time-Stamp"]),
                  key=None if key is None else decode_segment(key), body=bytes(msg.data),
                  headers=decode_headers(raw.get(H_HEADERS)))

