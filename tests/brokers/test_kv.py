"""The kv part of the broker protocol, on every backend with kv (time as in ``test_conformance``)."""

from __future__ import annotations

import asyncio

from support.conformance import Timing
from swell.brokers.base import KV


async def test_put_get_and_revisions_grow(kv: KV) -> None:
    assert await kv.get("a") is None
    r1 = await kv.put("a", b"1")
    r2 = await kv.put("a", b"2")
    assert r2 > r1
    e = await kv.get("a")
    assert e is not None and e.value == b"2" and e.revision == r2 and e.expires_at is None


async def test_put_if_absent_creates_once(kv: KV) -> None:
    r = await kv.put_if_absent("lock", b"me")
    assert r is not None
    assert await kv.put_if_absent("lock", b"you") is None
    e = await kv.get("lock")
    assert e is not None and e.value == b"me"


async def test_ttl_expires_and_frees_the_key(kv: KV, timing: Timing) -> None:
    assert await kv.put_if_absent("lease", b"a", ttl_s=timing.s(10)) is not None
    await timing.advance(9)
    assert await kv.get("lease") is not None
    assert await kv.put_if_absent("lease", b"b", ttl_s=timing.s(10)) is None
    await timing.advance(2)
    assert await kv.get("lease") is None
    assert await kv.put_if_absent("lease", b"b", ttl_s=timing.s(10)) is not None
    e = await kv.get("lease")
    assert e is not None and e.value == b"b"


async def test_compare_and_set(kv: KV) -> None:
    assert await kv.compare_and_set("c", b"x", 1) is None  # absent
    r1 = await kv.put("c", b"1")
    r2 = await kv.compare_and_set("c", b"2", r1)
    assert r2 is not None and r2 > r1
    assert await kv.compare_and_set("c", b"3", r1) is None  # stale revision
    e = await kv.get("c")
    assert e is not None and e.value == b"2"


async def test_revision_never_reused_after_delete(kv: KV) -> None:
    r1 = await kv.put("k", b"1")
    assert await kv.delete("k")
    r2 = await kv.put("k", b"1")
    assert r2 != r1
    assert await kv.compare_and_set("k", b"2", r1) is None


async def test_delete_with_revision(kv: KV) -> None:
    r1 = await kv.put("d", b"1")
    await kv.put("d", b"2")
    assert not await kv.delete("d", revision=r1)
    assert await kv.get("d") is not None
    assert await kv.delete("d")
    assert not await kv.delete("d")


async def test_scan_by_prefix_skips_expired(kv: KV, timing: Timing) -> None:
    await kv.put("nodes/b", b"2")
    await kv.put("nodes/a", b"1")
    await kv.put("nodes/c", b"3", ttl_s=timing.s(1))
    await kv.put("nodesX", b"no")
    await kv.put("other", b"no")
    await timing.advance(2)
    assert [e.key for e in await kv.scan("nodes/")] == ["nodes/a", "nodes/b"]
    await kv.put("50%_off", b"1")
    await kv.put("50xoff", b"1")
    assert [e.key for e in await kv.scan("50%_")] == ["50%_off"]
    # prefixes that end inside a segment, and keys with empty segments
    await kv.put("a//b/", b"1")
    await kv.put("a/", b"1")
    await kv.put("a", b"1")
    await kv.put("ab/c", b"1")
    assert [e.key for e in await kv.scan("a/")] == ["a/", "a//b/"]
    assert [e.key for e in await kv.scan("a")] == ["a", "a/", "a//b/", "ab/c"]
    assert [e.key for e in await kv.scan("nodes/a")] == ["nodes/a"]


async def test_a_scan_sees_every_live_key_while_they_are_written_again(kv: KV) -> None:
    # the heartbeats of several nodes, each rewritten while another node scans them: a scan that
    # missed a key being rewritten made a node think it was alone and take every share (NATS)
    keys = [f"beats/{i}" for i in range(4)]
    for k in keys:
        await kv.put(k, b"x" * 200, ttl_s=600)
    stop = asyncio.Event()

    async def rewrite(key: str) -> None:
        while not stop.is_set():
            await kv.put(key, b"x" * 200, ttl_s=600)
            await asyncio.sleep(0)

    writers = [asyncio.create_task(rewrite(k)) for k in keys]
    try:
        seen = [[e.key for e in await kv.scan("beats/")] for _ in range(300)]
    finally:
        stop.set()
        await asyncio.gather(*writers)
    missed = [s for s in seen if s != keys]
    assert not missed, f"{len(missed)} of {len(seen)} scans missed a key, e.g. {missed[0]}"


async def test_a_scan_reads_more_keys_than_one_batch(kv: KV) -> None:
    n = 2500  # NATS answers at most 1,024 messages to one batched read
    await asyncio.gather(*(kv.put(f"many/{i:05}", str(i).encode()) for i in range(n)))
    await kv.put("manyX", b"no")
    entries = await kv.scan("many/")
    assert [e.key for e in entries] == [f"many/{i:05}" for i in range(n)]
    assert entries[1234].value == b"1234"
