"""Limiters: token buckets that smooth bursts, and named limiters shared across functions and
processes (their state lives in the broker's kv store, so every process on a backend shares it).

A bucket hands out *reservations*: taking a token may leave the bucket in debt, and the taker waits
until its token would have arrived. Waiters are served in order and spaced evenly — a burst is
let through up to ``burst`` and then leaked at ``rate`` (leaky-bucket smoothing), never in waves.
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec

from swell.brokers.base import KV
from swell.core import keys
from swell.core.clock import Clock
from swell.core.config import Rate, per_second, whole

SLOT_LEASE_S = 60.0  # a slot held by a process that died frees itself after this long


@dataclass(frozen=True, slots=True, init=False)
class RateLimit:
    """At most ``rate`` calls of a function per second, ``burst`` at once: ``RateLimit("100/s", burst=20)``.

    ``burst`` defaults to a tenth of a second's worth (at least 1).
    """

    rate_per_s: float
    burst: int

    def __init__(self, rate: Rate, burst: int | None = None) -> None:
        r = per_second(rate)
        b = max(1, math.ceil(r / 10)) if burst is None else whole(burst, name="burst", low=1)
        object.__setattr__(self, "rate_per_s", r)
        object.__setattr__(self, "burst", b)


@dataclass(frozen=True, slots=True)
class Limiter:
    """A named limiter several functions share, across every process on the same backend:
    ``app.limiter("payments-api", rate="100/s", concurrency=20)``."""

    name: str
    rate: RateLimit | None = None
    concurrency: int | None = None


class TokenBucket:
    """A local bucket: one process, no I/O."""

    def __init__(self, limit: RateLimit, clock: Clock) -> None:
        self.rate = limit.rate_per_s
        self.burst = float(limit.burst)
        self.clock = clock
        self._tokens = self.burst
        self._t = clock.monotonic()

    def reserve(self) -> float:
        """Take a token; how long to wait until it is really ours (0: now)."""
        now = self.clock.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate) - 1.0
        self._t = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def try_take(self) -> float:
        """Take a token if there is one now (0.0); else take none and say how long until one
        comes (seconds): for a caller that refuses rather than waits (a webhook's 429)."""
        now = self.clock.monotonic()
        tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / self.rate

    async def acquire(self) -> float:
        """Wait for a token; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            await self.clock.sleep(wait)
        return wait


class _BucketState(msgspec.Struct, array_like=True):
    tokens: float
    t: float


class _Slots(msgspec.Struct, array_like=True):
    holders: dict[str, float]


class SharedLimiter:
    """A named limiter whose state lives in a kv store, so all processes share one quota.

    Every change is a compare-and-set, so it works on any backend's kv; wall-clock time
    (``clock.time()``) is used because the state is shared between machines.
    """

    def __init__(self, spec: Limiter, kv: KV, clock: Clock) -> None:
        self.spec = spec
        self.kv = kv
        self.clock = clock
        self._key = keys.limiter(spec.name)
        self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    async def reserve(self) -> float:
        """Take a token from the shared bucket; seconds to wait until it is really ours."""
        limit = self.spec.rate
        if limit is None:
            return 0.0
        key = f"{self._key}/bucket"
        while True:
            now = self.clock.time()
            entry = await self.kv.get(key)
            if entry is None:
                tokens = float(limit.burst) - 1.0
                state = msgspec.msgpack.encode(_BucketState(tokens, now))
                if await self.kv.put_if_absent(key, state) is not None:
                    break
                continue
            old = msgspec.msgpack.decode(entry.value, type=_BucketState)
            tokens = min(float(limit.burst), old.tokens + max(0.0, now - old.t) * limit.rate_per_s) - 1
            state = msgspec.msgpack.encode(_BucketState(tokens, max(now, old.t)))
            if await self.kv.compare_and_set(key, state, entry.revision) is not None:
                break
        return 0.0 if tokens >= 0 else -tokens / limit.rate_per_s

    async def _take_slot(self, limit: int) -> str | None:
        """One try at a slot; the holder id if taken, ``None`` if all are held or we raced."""
        key = f"{self._key}/slots"
        now = self.clock.time()
        entry = await self.kv.get(key)
        holders = {} if entry is None else {
            k: v for k, v in msgspec.msgpack.decode(entry.value, type=_Slots).holders.items() if v > now}
        if len(holders) >= limit:
            return None
        holder = f"{self._owner}-{uuid.uuid4().hex[:8]}"
        holders[holder] = now + SLOT_LEASE_S
        raw = msgspec.msgpack.encode(_Slots(holders))
        if entry is None:
            ok = await self.kv.put_if_absent(key, raw) is not None
        else:
            ok = await self.kv.compare_and_set(key, raw, entry.revision) is not None
        return holder if ok else None

    async def _give_slot(self, holder: str) -> None:
        key = f"{self._key}/slots"
        while True:
            entry = await self.kv.get(key)
            if entry is None:
                return
            holders = msgspec.msgpack.decode(entry.value, type=_Slots).holders
            if holder not in holders:
                return
            del holders[holder]
            raw = msgspec.msgpack.encode(_Slots(holders))
            if await self.kv.compare_and_set(key, raw, entry.revision) is not None:
                return

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[float]:
        """Wait for a token and a slot; yields the seconds waited."""
        started = self.clock.monotonic()
        wait = await self.reserve()
        if wait > 0:
            await self.clock.sleep(wait)
        holder = None
        if self.spec.concurrency is not None:
            backoff = 0.005
            while (holder := await self._take_slot(self.spec.concurrency)) is None:
                await self.clock.sleep(backoff)
                backoff = min(backoff * 2, 0.1)
        try:
            yield self.clock.monotonic() - started
        finally:
            if holder is not None:
                await asyncio.shield(self._give_slot(holder))
