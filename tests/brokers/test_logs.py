"""The log part of the broker protocol, on every backend with logs: partitions by key, order and
offsets per partition, reading from an offset or a time, the head, checkpoints (in the kv store:
those tests need kv too), retention, and refusals.

Offsets grow within a partition but may have gaps (NATS uses its stream sequence), so the tests
only rely on "the next record is read from ``offset + 1``"."""

from __future__ import annotations

import asyncio

import pytest

from support.conformance import Timing
from swell.brokers.base import KV, LogBroker, Message, Record, StreamSpec, partition_of
from swell.brokers.logs import commit, committed
from swell.core.errors import ConfigError, MessageTooLarge, UnknownStream


def rec(key: str | None, n: int) -> Message:
    return Message(body=f"{key}:{n}".encode(), key=key, headers={"n": str(n)})


async def read_all(logs: LogBroker, stream: str, partition: int, offset: int = 0,
                   batch: int = 7) -> list[Record]:
    out: list[Record] = []
    while True:
        got = await logs.read(stream, partition, offset, batch)
        assert len(got) <= batch
        if not got:
            return out
        out += got
        offset = got[-1].offset + 1


async def test_records_of_a_key_keep_their_partition_and_order(logs: LogBroker) -> None:
    await logs.declare_stream(StreamSpec(name="clicks", partitions=4))
    keys = [f"user-{i}" for i in range(10)]
    sent = [rec(k, n) for n in range(20) for k in keys]
    placed = await logs.append("clicks", sent)
    assert [p for p, _ in placed] == [partition_of(m.key, 4, 0) for m in sent]

    seen: dict[str, list[int]] = {}
    total = 0
    for p in range(4):
        records = await read_all(logs, "clicks", p)
        offsets = [r.offset for r in records]
        assert offsets == sorted(set(offsets)), "offsets must grow within a partition"
        for r in records:
            assert r.partition == p and partition_of(r.key, 4, 0) == p
            seen.setdefault(r.key or "", []).append(int(r.headers["n"]))
            assert r.body == f"{r.key}:{r.headers['n']}".encode()
        total += len(records)
    assert total == len(sent)
    assert all(ns == list(range(20)) for ns in seen.values()), "order per key was lost"
    assert {(p, o) for p, o in placed} == {(r.partition, r.offset) for p in range(4)
                                          for r in await read_all(logs, "clicks", p)}


async def test_records_without_a_key_are_spread_over_the_partitions(logs: LogBroker) -> None:
    await logs.declare_stream(StreamSpec(name="s", partitions=4))
    placed = await logs.append("s", [rec(None, n) for n in range(8)])
    assert sorted(p for p, _ in placed) == [0, 0, 1, 1, 2, 2, 3, 3]


async def test_read_from_an_offset_resumes_where_a_reader_stopped(logs: LogBroker) -> None:
    await logs.declare_stream(StreamSpec(name="s", partitions=1))
    await logs.append("s", [rec("k", n) for n in range(10)])
    first = await logs.read("s", 0, 0, 4)
    assert [r.headers["n"] for r in first] == ["0", "1", "2", "3"]
    rest = await logs.read("s", 0, first[-1].offset + 1, 100)
    assert [r.headers["n"] for r in rest] == [str(n) for n in range(4, 10)]
    assert await logs.read("s", 0, rest[-1].offset + 1, 100) == []


async def test_end_offsets_are_where_a_reader_that_read_everything_stands(logs: LogBroker) -> None:
    await logs.declare_stream(StreamSpec(name="s", partitions=3))
    assert len(await logs.end_offsets("s")) == 3
    await logs.append("s", [rec(f"k{i}", i) for i in range(30)])
    ends = await logs.end_offsets("s")
    for p, end in enumerate(ends):
        records = await read_all(logs, "s", p)
        assert not records or end > records[-1].offset
        assert await logs.read("s", p, end, 10) == []
    await logs.append("s", [rec("k1", 99)])
    p = partition_of("k1", 3, 0)
    (new,) = await logs.read("s", p, ends[p], 10)
    assert new.headers["n"] == "99"
    lags = await logs.lag("s", ends)
    assert lags == [1 if q == p else 0 for q in range(3)]
    everything = await logs.lag("s", [0, 0, 0])
    assert sum(everything) == 31
    assert everything == [len(await read_all(logs, "s", q)) for q in range(3)]


async def test_read_from_a_time(logs: LogBroker, timing: Timing) -> None:
    await logs.declare_stream(StreamSpec(name="s", partitions=2))
    await logs.append("s", [rec("a", n) for n in range(3)])
    await timing.advance(2)
    middle = timing.now() - timing.s(1)
    await logs.append("s", [rec("a", n) for n in range(3, 6)])
    p = partition_of("a", 2, 0)
    later = await logs.read("s", p, 0, 100, since=middle)
    assert [r.headers["n"] for r in later] == ["3", "4", "5"]
    assert all(r.timestamp >= middle for r in later)
    assert await logs.read("s", p, 0, 100, since=timing.now() + timing.s(5)) == []


async def test_a_group_commits_its_offsets_and_resumes_from_them(logs: LogBroker, kv: KV) -> None:
    await logs.declare_stream(StreamSpec(name="s", partitions=2))
    await logs.append("s", [rec(f"k{i}", i) for i in range(20)])
    assert await committed(kv, "s", "g") == {}
    p0 = await logs.read("s", 0, 0, 3)
    await commit(kv, "s", "g", {0: p0[-1].offset + 1})
    assert await committed(kv, "s", "g") == {0: p0[-1].offset + 1}
    assert await committed(kv, "s", "other") == {}
    resumed = await logs.read("s", 0, (await committed(kv, "s", "g"))[0], 100)
    everything = await read_all(logs, "s", 0)
    assert resumed == everything[3:]


async def test_records_older_than_the_retention_are_dropped(logs: LogBroker, timing: Timing) -> None:
    await logs.declare_stream(StreamSpec(name="s", partitions=1, retention_s=timing.s(2)))
    await logs.append("s", [rec("k", n) for n in range(3)])
    await timing.advance(3)
    await logs.append("s", [rec("k", 3)])
    for _ in range(20):  # a server may drop expired records a moment late
        got = await logs.read("s", 0, 0, 100)
        if len(got) == 1:
            break
        await asyncio.sleep(0.1)
    assert [r.headers["n"] for r in got] == ["3"]


async def test_what_a_stream_refuses(logs: LogBroker) -> None:
    with pytest.raises(UnknownStream):
        await logs.append("nope", [rec("k", 1)])
    with pytest.raises(UnknownStream):
        await logs.read("nope", 0)
    await logs.declare_stream(StreamSpec(name="s", partitions=2, max_message_bytes=100))
    with pytest.raises(MessageTooLarge):
        await logs.append("s", [rec("k", 1), Message(body=b"x" * 200, key="k")])
    assert [len(await logs.read("s", p, 0, 10)) for p in range(2)] == [0, 0]
    with pytest.raises(ConfigError, match="partitions"):
        await logs.declare_stream(StreamSpec(name="s", partitions=4))
    with pytest.raises(ConfigError, match="partitions"):
        await logs.read("s", 2)
    await logs.declare_stream(StreamSpec(name="s", partitions=2, retention_s=60))  # fine
    assert (await logs.stream_spec("s")).retention_s == 60
    assert [s.name for s in await logs.streams()] == ["s"]
