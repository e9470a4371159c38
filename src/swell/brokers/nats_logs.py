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
import json
import random
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from swell.brokers.base import Message, Record, StreamSpec, partition_of
from swell.brokers.logs import check_partition, partition_change
from swell.brokers.nats import (
    _QUEUE,
    H_HEADERS,
    HEADER_ROOM,
    REQUEST_TIMEOUT_S,
    SPEC_REFRESH_S,
    _dec_headers,
    _dec_segment,
    _enc_headers,
    _enc_segment,
    _ns,
    _parse_ts,
    _refusal,
    _status,
    _stream_part,
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

    from swell.brokers.nats import NatsBroker

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

    def __init__(self, broker: NatsBroker) -> None:
        self.b = broker
        self._specs: dict[str, tuple[StreamSpec, float]] = {}
        self._appended: dict[str, int] = {}  # round-robin counts, for records without a key

    # -- names -----------------------------------------------------------------------------
    def names(self, name: str) -> tuple[str, str]:
        """(JetStream stream, subject prefix of its partitions)."""
        ns, part = self.b.namespace, _stream_part(name)
        return f"swell-{ns}-S-{part}", f"swell.{ns}.s.{part}"

    # -- declarations ----------------------------------------------------------------------
    async def declare(self, spec: StreamSpec) -> None:
        if not _QUEUE.fullmatch(spec.name) or len(spec.name) > 200:
            raise ConfigError(f"stream name {spec.name!r} is not valid on NATS: use dot-separated "
                              "tokens of letters, digits, '_' and '-' (at most 200 characters)")
        if spec.partitions < 1:
            raise ConfigError(f"stream {spec.name!r} needs at least one partition")
        nc = await self.b._client()
        if spec.max_message_bytes + HEADER_ROOM > nc.max_payload:
            raise ConfigError(f"stream {spec.name!r}: max_message_bytes {spec.max_message_bytes:,} "
                              f"is over what the NATS server takes ({nc.max_payload:,} bytes)")
        stream, prefix = self.names(spec.name)
        have = _spec_of(await self.b._stream_info(stream))
        if have is not None and have.partitions != spec.partitions:
            raise ConfigError(partition_change(have, spec))
        meta = {STREAM_KEY: msgspec.json.encode(spec).decode()}
        wanted: dict[str, Any] = {
            "name": stream, "retention": "limits",
            "subjects": [f"{prefix}.{p}" for p in range(spec.partitions)],
            "storage": self.b.storage, "num_replicas": self.b.replicas, "discard": "old",
            "max_age": _ns(spec.retention_s), "max_msg_size": -1,
            "duplicate_window": _ns(min(spec.retention_s, DEDUP_WINDOW_S)),
            "allow_direct": True, "allow_atomic": True, "allow_msg_schedules": False,
            "metadata": meta,
        }
        config = await self.b._stream(stream, wanted, f"stream {spec.name!r}", STREAM_KEY)
        if config["metadata"][STREAM_KEY] != meta[STREAM_KEY] or not config.get("allow_atomic"):
            config.update(max_age=wanted["max_age"], duplicate_window=wanted["duplicate_window"],
                          allow_atomic=True, metadata={**config["metadata"], **meta})
            await self.b._api(f"STREAM.UPDATE.{stream}", config)
        self._specs[spec.name] = (spec, time.monotonic())

    async def stream_spec(self, name: str) -> StreamSpec:
        """The stream's settings, read from the server; ``UnknownStream`` if never declared."""
        if not _QUEUE.fullmatch(name):
            raise UnknownStream(name)
        spec = _spec_of(await self.b._stream_info(self.names(name)[0]))
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
        infos = await self.b._list_streams(f"swell.{self.b.namespace}.s.>")
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
            headers: dict[str, str] = {}
            encoded = _enc_headers(m.headers)
            if encoded:
                headers[H_HEADERS] = encoded
            if m.key is not None:
                headers[H_KEY] = _enc_segment(m.key)
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
        b = self.b
        nc = await b._client()
        with b._box() as (reply, box):
            try:  # only the commit is answered: with the ack, or why nothing was stored
                for subject, body, headers in items[:-1]:
                    await nc.publish(subject, body, headers=headers)
                subject, body, headers = items[-1]
                await nc.publish(subject, body, reply=reply, headers=headers)
            except Exception as exc:  # closed, or the buffer of a reconnecting client is full
                raise BrokerUnavailable(f"NATS at {b.url} took no records: {exc!r}") from exc
            msg = await b._next(box, REQUEST_TIMEOUT_S + 0.005 * len(items))
        if msg is None:
            raise BrokerUnavailable(f"NATS at {b.url} did not confirm an append to {stream} in "
                                    "time (it may have been stored)")
        if _status(msg) is not None:  # 503: nothing stored; the stream has no leader
            raise BrokerUnavailable(f"no stream at {b.url} takes the records of {stream} now "
                                    "(electing its leader, or deleted)")
        ack: dict[str, Any] = json.loads(msg.data)
        if "error" in ack:
            raise _refusal(f"an append to {stream}", ack["error"])
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
            start = {"start_time": _rfc3339(since - SINCE_SLACK_S)}
        out: list[Record] = []
        while True:
            want = max_records - len(out)
            got = await self.b._direct(stream, {**start, "next_by_subj": subject, "batch": want})
            for msg in got:
                r = _record(partition, msg)
                # from the first record at or after both offset and since, everything after it
                if out or (r.offset >= offset and (since is None or r.timestamp >= since)):
                    out.append(r)
            if len(out) >= max_records or len(got) < want:
                return out
            start = {"seq": max(_seq(got[-1]) + 1, offset)}

    async def end_offsets(self, name: str) -> list[int]:
        stream, prefix = self.names(name)
        info = await self.b._stream_info(stream) if _QUEUE.fullmatch(name) else None
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
        for msg in await self.b._direct(stream, request):
            p = int((msg.headers or {}).get("Nats-Subject", "").rsplit(".", 1)[-1])
            ends[p] = _seq(msg) + 1
        return ends

    async def lag(self, name: str, offsets: Sequence[int]) -> list[int]:
        spec = await self._spec(name)
        if len(offsets) != spec.partitions:
            raise ConfigError(f"stream {name!r} has {spec.partitions} partitions, not "
                              f"{len(offsets)}")
        stream, prefix = self.names(name)

        async def pending(p: int, offset: int) -> int:
            # the first record at or after offset, and how many of the partition follow it
            got = await self.b._direct(stream, {"seq": max(offset, 1),
                                                "next_by_subj": f"{prefix}.{p}", "batch": 1})
            return 1 + int((got[0].headers or {}).get("Nats-Num-Pending", "0")) if got else 0

        return list(await asyncio.gather(*(pending(p, o) for p, o in enumerate(offsets))))


def _spec_of(info: dict[str, Any] | None) -> StreamSpec | None:
    raw = None if info is None else (info["config"].get("metadata") or {}).get(STREAM_KEY)
    return None if raw is None else msgspec.json.decode(raw, type=StreamSpec)


def _seq(msg: Msg) -> int:
    return int((msg.headers or {}).get("Nats-Sequence", "0"))


def _record(partition: int, msg: Msg) -> Record:
    raw = msg.headers or {}
    key = raw.get(H_KEY)
    return Record(partition=partition, offset=_seq(msg), timestamp=_parse_ts(raw["Nats-Time-Stamp"]),
                  key=None if key is None else _dec_segment(key), body=bytes(msg.data),
                  headers=_dec_headers(raw.get(H_HEADERS)))


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(max(0.0, epoch), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

