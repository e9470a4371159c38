"""The kv store on NATS JetStream.

The store is a JetStream key-value bucket ``swell_<namespace>``: the revision is the stream
sequence (never reused), create-if-absent and compare-and-set are writes with an expected last
subject sequence, a TTL is an expiry time in a header (checked on read, exact) and a per-message
TTL a little longer (``Nats-TTL``) so the server drops expired entries. A key is one subject token
per ``/``-separated segment (other characters escaped), so ``scan`` by a prefix reads only the
keys under its whole segments.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from swell.brokers.base import KvEntry
from swell.brokers.nats.wire import (
    ERR_WRONG_LAST_SEQUENCE,
    H_EXPIRES,
    SCAN_BATCH,
    ApiError,
    TooMany,
    decode_key,
    description,
    encode_key,
    key_filter,
    nanos,
    sequence,
    status,
)
from swell.core.errors import BrokerError, ConfigError

if TYPE_CHECKING:
    from swell.brokers.nats.client import NatsClient


class NatsKV:
    """The kv store: a JetStream key-value bucket per namespace (see the module docstring)."""

    #: seconds the server keeps a delete marker, and keeps an entry past its TTL
    MARKER_TTL_S = 300
    GC_SLACK_S = 1

    def __init__(self, client: NatsClient) -> None:
        self._c = client
        self.bucket = f"swell_{client.namespace}"
        self._stream = f"KV_{self.bucket}"
        self._prefix = f"$KV.{self.bucket}."
        self._ready = False
        self._lock = asyncio.Lock()

    async def _ensure(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                await self._create()
                self._ready = True

    async def _create(self) -> None:
        config = {"name": self._stream, "subjects": [f"{self._prefix}>"], "retention": "limits",
                  "storage": self._c.storage, "num_replicas": self._c.replicas,
                  "max_msgs_per_subject": 1, "discard": "new", "max_msgs": -1, "max_bytes": -1,
                  "max_age": 0, "max_msg_size": -1, "duplicate_window": nanos(120),
                  "allow_rollup_hdrs": True, "deny_delete": True, "allow_direct": True,
                  "allow_msg_ttl": True, "metadata": {"swell.kv": self._c.namespace}}
        have = await self._c.stream_info(self._stream)
        if have is None:
            try:
                await self._c.api(f"STREAM.CREATE.{self._stream}", config)
                return
            except ApiError:
                have = await self._c.stream_info(self._stream)  # made meanwhile?
                if have is None:
                    raise
        if not have["config"].get("allow_msg_ttl") or have["config"].get(
                "max_msgs_per_subject") != 1:
            raise ConfigError(f"the kv bucket {self.bucket!r} exists with other settings (no "
                              "per-message TTL, or history > 1); swell does not change it: "
                              "delete it or use another namespace")

    async def _last(self, key: str) -> tuple[KvEntry | None, int]:
        """The live entry of ``key`` (or None) and the revision of the key's last message."""
        await self._ensure()
        msg = await self._c.request(f"$JS.API.DIRECT.GET.{self._stream}.{self._prefix}"
                                    f"{encode_key(key)}")
        code = status(msg)
        if code == "404":
            return None, 0
        if code is not None:
            raise BrokerError(f"kv read of {key!r} failed: {code} {description(msg)}")
        raw = msg.headers or {}
        seq = sequence(msg)
        return self._entry(key, raw, msg.data, seq), seq

    def _entry(self, key: str, raw: dict[str, str], value: bytes, seq: int) -> KvEntry | None:
        if raw.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in raw:
            return None
        expires = float(raw[H_EXPIRES]) if H_EXPIRES in raw else None
        if expires is not None and expires <= self._c.clock.time():
            return None
        return KvEntry(key=key, value=bytes(value), revision=seq, expires_at=expires)

    async def _write(self, key: str, value: bytes, ttl_s: float | None,
                     expect: int | None, op: str | None = None) -> int | None:
        """Write (``expect``: only if the key's last revision is that, 0 for none); the new
        revision, or ``None`` if the key moved on."""
        await self._ensure()
        headers: dict[str, str] = {}
        if op is not None:
            headers["KV-Operation"] = op
            headers["Nats-TTL"] = f"{self.MARKER_TTL_S}s"
        if ttl_s is not None:
            headers[H_EXPIRES] = repr(self._c.clock.time() + ttl_s)
            headers["Nats-TTL"] = f"{max(1, math.ceil(ttl_s)) + self.GC_SLACK_S}s"
        if expect is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expect)
        try:
            ack = await self._c.publish(f"{self._prefix}{encode_key(key)}", bytes(value), headers)
        except ApiError as exc:
            if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                return None
            raise
        return int(ack["seq"])

    async def get(self, key: str) -> KvEntry | None:
        return (await self._last(key))[0]

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> int:
        rev = await self._write(key, value, ttl_s, None)
        assert rev is not None  # an unconditional write always lands
        return rev

    async def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> int | None:
        for _ in range(8):  # again only if an expired entry or a marker vanished meanwhile
            entry, last = await self._last(key)
            if entry is not None:
                return None
            rev = await self._write(key, value, ttl_s, last)
            if rev is not None:
                return rev
        return None

    async def compare_and_set(self, key: str, value: bytes, revision: int,
                              ttl_s: float | None = None) -> int | None:
        entry, _ = await self._last(key)
        if entry is None or entry.revision != revision:
            return None
        return await self._write(key, value, ttl_s, revision)

    async def delete(self, key: str, revision: int | None = None) -> bool:
        for _ in range(8):  # again only if the key changed under a delete without a revision
            entry, _ = await self._last(key)
            if entry is None or (revision is not None and entry.revision != revision):
                return False
            if await self._write(key, b"", None, entry.revision, op="DEL") is not None:
                return True
            if revision is not None:
                return False
        return False

    async def scan(self, prefix: str) -> list[KvEntry]:
        """Every live entry whose key starts with ``prefix``: the last message of every matching
        key in one batched direct get (``multi_last``), each read as the request is served.

        (Not an ordered consumer from each key's last message: a key written again between the
        consumer's creation and its delivery loses its old message, and the new one may come
        after the consumer said nothing was pending, so a live key went unseen now and then.)"""
        await self._ensure()
        subject = f"{self._prefix}{key_filter(prefix)}"
        try:
            msgs = await self._c.direct(self._stream, {"multi_last": [subject],
                                                        "batch": SCAN_BATCH})
        except TooMany:  # more keys than one read takes: list them, then read them in parts
            subjects = await self._subjects(subject)
            msgs = []
            for i in range(0, len(subjects), SCAN_BATCH):
                part = subjects[i : i + SCAN_BATCH]
                msgs += await self._c.direct(self._stream, {"multi_last": part,
                                                             "batch": len(part)})
        entries: list[KvEntry] = []
        for msg in msgs:
            raw = msg.headers or {}
            key = decode_key(raw.get("Nats-Subject", "")[len(self._prefix):])
            entry = self._entry(key, raw, msg.data, sequence(msg))
            if entry is not None and key.startswith(prefix):
                entries.append(entry)
        return sorted(entries, key=lambda e: e.key)

    async def _subjects(self, subject_filter: str) -> list[str]:
        """The subjects in the bucket that match ``subject_filter`` (the stream's info, by pages)."""
        subjects: list[str] = []
        while True:
            info = await self._c.api(f"STREAM.INFO.{self._stream}", {
                "subjects_filter": subject_filter, "offset": len(subjects)})
            page = list(info.get("state", {}).get("subjects") or {})
            subjects += page
            if not page or len(subjects) >= int(info.get("total", 0)):
                return subjects
