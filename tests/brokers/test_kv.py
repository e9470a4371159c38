"""The kv part of the broker protocol, on every backend (time as in ``test_conformance``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from swell.brokers.base import Broker

if TYPE_CHECKING:
    from conftest import Timing  # the fixture's type; pytest imports conftest itself


async def test_put_get_and_revisions_grow(broker: Broker) -> None:
    kv = broker.kv
    assert await kv.get("a") is None
    r1 = await kv.put("a", b"1")
    r2 = await kv.put("a", b"2")
    assert r2 > r1
    e = await kv.get("a")
    assert e is not None and e.value == b"2" and e.revision == r2 and e.expires_at is None


async def test_put_if_absent_creates_once(broker: Broker) -> None:
    kv = broker.kv
    r = await kv.put_if_absent("lock", b"me")
    assert r is not None
    assert await kv.put_if_absent("lock", b"you") is None
    e = await kv.get("lock")
    assert e is not None and e.value == b"me"


async def test_ttl_expires_and_frees_the_key(broker: Broker, timing: Timing) -> None:
    kv = broker.kv
    assert await kv.put_if_absent("lease", b"a", ttl_s=timing.s(10)) is not None
    await timing.advance(9)
    assert await kv.get("lease") is not None
    assert await kv.put_if_absent("lease", b"b", ttl_s=timing.s(10)) is None
    await timing.advance(2)
    assert await kv.get("lease") is None
    assert await kv.put_if_absent("lease", b"b", ttl_s=timing.s(10)) is not None
    e = await kv.get("lease")
    assert e is not None and e.value == b"b"


async def test_compare_and_set(broker: Broker) -> None:
    kv = broker.kv
    assert await kv.compare_and_set("c", b"x", 1) is None  # absent
    r1 = await kv.put("c", b"1")
    r2 = await kv.compare_and_set("c", b"2", r1)
    assert r2 is not None and r2 > r1
    assert await kv.compare_and_set("c", b"3", r1) is None  # stale revision
    e = await kv.get("c")
    assert e is not None and e.value == b"2"


async def test_revision_never_reused_after_delete(broker: Broker) -> None:
    kv = broker.kv
    r1 = await kv.put("k", b"1")
    assert await kv.delete("k")
    r2 = await kv.put("k", b"1")
    assert r2 != r1
    assert await kv.compare_and_set("k", b"2", r1) is None


async def test_delete_with_revision(broker: Broker) -> None:
    kv = broker.kv
    r1 = await kv.put("d", b"1")
    await kv.put("d", b"2")
    assert not await kv.delete("d", revision=r1)
    assert await kv.get("d") is not None
    assert await kv.delete("d")
    assert not await kv.delete("d")


async def test_scan_by_prefix_skips_expired(broker: Broker, timing: Timing) -> None:
    kv = broker.kv
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


async def test_release_without_counting_keeps_the_message_from_its_dlq(
        broker: Broker, timing: Timing) -> None:
    # (queue semantics, here beside kv because it came with the same protocol change)
    from swell.brokers.base import Message, QueueSpec

    await broker.declare_queue(QueueSpec(name="t", max_receives=2,
                                         visibility_timeout_s=timing.s(5)))
    await broker.send("t", [Message(body=b"x")])
    for _ in range(5):  # throttled five times: never dead-lettered, count stays at 1
        (d,) = await broker.receive("t", 1, wait_s=timing.grace_s)
        assert d.receive_count == 1
        assert await broker.release([d.receipt], timing.s(1.0), count=False) == []
        await timing.advance(1.5)
    (d,) = await broker.receive("t", 1, wait_s=timing.grace_s)
    assert d.receive_count == 1
    assert (await broker.stats("t.dlq")).total == 0
