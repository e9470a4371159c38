"""Token buckets and shared limiters, on a manual clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from swell.brokers.memory import MemoryBroker
from swell.brokers.sqlite import SqliteBroker
from swell.core.clock import ManualClock
from swell.core.errors import ConfigError
from swell.scaling.limiters import Limiter, RateLimit, SharedLimiter, TokenBucket


def test_rate_limit_parses_rates_and_defaults_burst() -> None:
    assert RateLimit("100/s", burst=20).rate_per_s == 100
    assert RateLimit("6000/m").rate_per_s == 100
    assert RateLimit("100/s").burst == 10
    assert RateLimit(0.5).burst == 1
    with pytest.raises(ConfigError):
        RateLimit("fast")
    with pytest.raises(ConfigError):
        RateLimit("0/s")
    with pytest.raises(ConfigError):
        RateLimit(10, burst=0)


def test_bucket_lets_a_burst_through_then_spaces_evenly() -> None:
    clock = ManualClock()
    bucket = TokenBucket(RateLimit("10/s", burst=5), clock)
    waits = [bucket.reserve() for _ in range(8)]
    assert waits[:5] == [0.0] * 5
    assert waits[5:] == pytest.approx([0.1, 0.2, 0.3])
    clock.advance(10)  # refills, but never above the burst
    assert [bucket.reserve() for _ in range(6)][-1] == pytest.approx(0.1)


def test_bucket_rate_holds_over_a_long_run() -> None:
    clock = ManualClock()
    bucket = TokenBucket(RateLimit("100/s", burst=20), clock)
    taken = 0
    for _ in range(1000):  # 10 s in 10 ms steps, greedy taker
        while bucket.reserve() == 0:
            taken += 1
        bucket._tokens += 1  # give back the one that would have had to wait
        clock.advance(0.01)
    assert 100 * 10 <= taken <= 100 * 10 + 20 + 1


async def _drive(clock: ManualClock, until: asyncio.Future[Any], step: float = 0.01) -> None:
    # a real millisecond per step, so a backend's thread hops finish well inside a virtual step
    while not until.done():
        await asyncio.sleep(0.001)
        clock.advance(step)


@pytest.fixture(params=["memory", "sqlite"])
async def kvs(request: pytest.FixtureRequest, tmp_path: Path,
              clock: ManualClock) -> list[MemoryBroker | SqliteBroker]:
    if request.param == "memory":
        b = MemoryBroker(clock=clock)
        return [b, b]
    # two brokers on one file: two processes sharing the backend
    return [SqliteBroker(str(tmp_path / "l.db"), clock=clock) for _ in range(2)]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def test_shared_rate_holds_across_processes(kvs: list[MemoryBroker | SqliteBroker],
                                                  clock: ManualClock) -> None:
    spec = Limiter("api", rate=RateLimit("50/s", burst=5))
    limiters = [SharedLimiter(spec, b.kv, clock) for b in kvs]
    start = clock.time()
    stamps: list[float] = []

    async def worker(lim: SharedLimiter) -> None:
        for _ in range(50):
            async with lim.hold():
                stamps.append(clock.time())

    work = asyncio.gather(*(worker(lim) for lim in limiters))
    await _drive(clock, work)
    await work
    # 100 calls at 50/s with a burst of 5: the last can't start before (100 - 5) / 50 s
    assert len(stamps) == 100
    assert max(stamps) - start >= (100 - 5) / 50 - 0.02
    for t in stamps:  # never more than burst + rate x window in any window from the start
        assert sum(1 for s in stamps if s <= t) <= 5 + 50 * (t - start) + 1
    for b in kvs:
        await b.close()


async def test_shared_concurrency_caps_holders(kvs: list[MemoryBroker | SqliteBroker],
                                               clock: ManualClock) -> None:
    spec = Limiter("db", concurrency=3)
    limiters = [SharedLimiter(spec, b.kv, clock) for b in kvs]
    held = peak = 0

    async def worker(lim: SharedLimiter) -> None:
        nonlocal held, peak
        for _ in range(5):
            async with lim.hold():
                held += 1
                peak = max(peak, held)
                await clock.sleep(0.3)  # long enough that every other worker tries meanwhile
                held -= 1

    work = asyncio.gather(*(worker(lim) for lim in limiters for _ in range(3)))
    await _drive(clock, work)
    await work
    assert peak == 3
    assert await kvs[0].kv.get("swell/limiter/db/slots") is not None
    for b in kvs:
        await b.close()
