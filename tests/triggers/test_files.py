"""The file-drop trigger against a real directory, a real watcher and the SQLite broker: each file
is one event, once it stopped growing, across restarts; touched files are not emitted again,
changed ones are; a broker that fails makes the source wait and try again, not crash."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from support.eventually import until
from swell.brokers.base import KV, KvEntry, QueueSpec
from swell.brokers.producer import Producer
from swell.brokers.sqlite import SqliteBroker
from swell.core import keys
from swell.core.clock import SYSTEM_CLOCK
from swell.core.errors import BrokerUnavailable, ConfigError
from swell.core.event import Event
from swell.triggers.base import Emitter, Source, SourceEnv
from swell.triggers.files import Checkpoint, WatchSource

APP = "shop"
QUEUE = "files"


class Inbox:
    """The events on the queue, drained as they come."""

    def __init__(self, broker: SqliteBroker) -> None:
        self.broker = broker
        self.events: list[Event[Any]] = []

    async def drain(self) -> list[Event[Any]]:
        while batch := await self.broker.receive(QUEUE, 100):
            self.events += [Event.from_json(d.body) for d in batch]
            await self.broker.ack([d.receipt for d in batch])
        return self.events

    async def count(self) -> int:
        return len(await self.drain())

    async def settled(self, n: int, quiet_s: float = 0.6) -> list[Event[Any]]:
        """Wait for ``n`` events, then ``quiet_s`` more to see that no more come."""
        await until(lambda: self._at_least(n), f"{n} events")
        await asyncio.sleep(quiet_s)
        return await self.drain()

    async def _at_least(self, n: int) -> bool:
        return await self.count() >= n


class FlakyKV:
    """A kv store whose next ``fail_puts`` writes fail as if the broker were down."""

    def __init__(self, kv: KV, fail_puts: int = 0) -> None:
        self.kv = kv
        self.fail_puts = fail_puts

    async def get(self, key: str) -> KvEntry | None:
        return await self.kv.get(key)

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> int:
        if self.fail_puts:
            self.fail_puts -= 1
            raise BrokerUnavailable("the kv store is down")
        return await self.kv.put(key, value, ttl_s)

    async def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> int | None:
        return await self.kv.put_if_absent(key, value, ttl_s)

    async def compare_and_set(self, key: str, value: bytes, revision: int,
                              ttl_s: float | None = None) -> int | None:
        return await self.kv.compare_and_set(key, value, revision, ttl_s)

    async def delete(self, key: str, revision: int | None = None) -> bool:
        return await self.kv.delete(key, revision)

    async def scan(self, prefix: str) -> list[KvEntry]:
        return await self.kv.scan(prefix)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[SqliteBroker]:
    b = SqliteBroker(str(tmp_path / "b.db"))
    await b.declare_queue(QueueSpec(name=QUEUE))
    yield b
    await b.close()


@pytest.fixture
def inbox(broker: SqliteBroker) -> Inbox:
    return Inbox(broker)


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    made = tmp_path.resolve() / "incoming"
    made.mkdir()
    return made


@contextlib.asynccontextmanager
async def running(source: WatchSource, broker: SqliteBroker,
                  kv: KV | None = None) -> AsyncIterator[WatchSource]:
    """``source`` running, as the runtime runs it; cancelled on the way out."""
    kv = kv if kv is not None else broker.kv
    emitter = Emitter(Producer(broker, source=f"swell/{APP}"), kv, source.target, source.stats,
                      source=f"swell/{APP}/{source.name}")
    env = SourceEnv(app=APP, node="node-1", emitter=emitter, kv=kv, clock=SYSTEM_CLOCK)
    task = asyncio.create_task(source.run(env))
    try:
        yield source
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


def drop(directory: Path, names: Sequence[str], content: bytes | None = None) -> None:
    for name in names:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if content is not None else f"id,{name}\n".encode())


def write_slowly(path: Path, part: bytes, parts: int, pause_s: float) -> None:
    with path.open("wb") as f:
        for _ in range(parts):
            f.write(part)
            f.flush()
            time.sleep(pause_s)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data(event: Event[Any]) -> dict[str, Any]:
    assert isinstance(event.data, dict)
    return event.data


def watch(incoming: Path, **options: Any) -> WatchSource:
    options.setdefault("settle", 0.2)
    return WatchSource("inbox", path=incoming, to=QUEUE, **options)


async def test_files_dropped_while_running_and_while_stopped_are_each_one_event(
        broker: SqliteBroker, inbox: Inbox, tmp_path: Path) -> None:
    incoming = tmp_path / "new" / "incoming"  # made when the source starts
    first = [f"a{i:03}.csv" for i in range(200)]
    later = [f"b{i:03}.csv" for i in range(50)]
    async with running(watch(incoming, pattern="*.csv"), broker) as source:
        await until(incoming.is_dir, "the directory, made at start")
        await asyncio.to_thread(drop, incoming, first)
        events = await inbox.settled(200)
        assert sorted(e.subject or "" for e in events) == first
        assert (source.stats.received, source.stats.emitted, source.stats.duplicates) == (200, 200, 0)
        assert source.stats.pending == 0
        assert source.detail() == {"path": str(incoming), "pattern": "*.csv", "pending": 0}

    await asyncio.to_thread(drop, incoming, later)  # while stopped

    async with running(watch(incoming, pattern="*.csv"), broker) as again:
        events = await inbox.settled(250)
        # each once, and the new source emitted only the 50 (no re-emit the channel dropped)
        assert sorted(e.subject or "" for e in events) == first + later
        assert len({e.id for e in events}) == 250
        assert (again.stats.received, again.stats.emitted, again.stats.duplicates) == (50, 50, 0)

    marks = await broker.kv.scan(keys.files(APP, "inbox"))
    assert len(marks) == 250
    mark = msgspec.json.decode(marks[0].value, type=Checkpoint)
    assert mark.event_id in {e.id for e in events}


async def test_an_event_carries_the_file_facts(broker: SqliteBroker, inbox: Inbox,
                                                incoming: Path) -> None:
    async with running(watch(incoming), broker):
        await asyncio.to_thread(drop, incoming, ["x.csv"], b"1,2,3\n")
        [event] = await inbox.settled(1, quiet_s=0)
    info = os.stat(incoming / "x.csv")
    assert event.data == {"path": str(incoming / "x.csv"), "name": "x.csv", "size": 6,
                          "mtime": event.time.isoformat() if event.time else None,
                          "sha256": sha(b"1,2,3\n")}
    assert event.time is not None and int(event.time.timestamp()) == int(info.st_mtime)
    assert event.subject == "x.csv" and event.id.startswith("file-")
    assert event.source == f"swell/{APP}/inbox"


async def test_a_file_written_slowly_is_one_event_once_complete(
        broker: SqliteBroker, inbox: Inbox, incoming: Path) -> None:
    part = b"x" * 1000
    async with running(watch(incoming, settle=0.5), broker) as source:
        # 8 parts over 2 s: each pause shorter than the settle time
        await asyncio.to_thread(write_slowly, incoming / "slow.csv", part, 8, 0.25)
        [event] = await inbox.settled(1, quiet_s=1.0)
        assert data(event)["size"] == 8000
        assert data(event)["sha256"] == sha(part * 8)
        assert source.stats.received == 1


async def test_a_touched_file_is_not_emitted_again_a_changed_one_is(
        broker: SqliteBroker, inbox: Inbox, incoming: Path) -> None:
    path = incoming / "t.csv"
    async with running(watch(incoming), broker) as source:
        await asyncio.to_thread(drop, incoming, ["t.csv"], b"one\n")
        await inbox.settled(1, quiet_s=0)

        before = os.stat(path).st_mtime_ns
        os.utime(path)  # now: later than it was written
        assert os.stat(path).st_mtime_ns > before
        await until(lambda: source.stats.duplicates == 1, "the touch to be seen")
        await asyncio.sleep(0.5)
        assert await inbox.count() == 1

        await asyncio.to_thread(drop, incoming, ["t.csv"], b"two\n")
        events = await inbox.settled(2)
        assert [data(e)["sha256"] for e in events] == [sha(b"one\n"), sha(b"two\n")]
        assert events[0].id != events[1].id

    # the touch is checkpointed too: a restart does not read the file again
    async with running(watch(incoming), broker) as again:
        await asyncio.sleep(0.5)
        assert again.stats.received == 0
    assert await inbox.count() == 2


async def test_a_file_deleted_and_made_again_is_a_new_file(
        broker: SqliteBroker, inbox: Inbox, incoming: Path) -> None:
    async with running(watch(incoming), broker):
        await asyncio.to_thread(drop, incoming, ["d.csv"], b"same\n")
        await inbox.settled(1, quiet_s=0)
        (incoming / "d.csv").unlink()
        await until(lambda: _no_checkpoints(broker), "the checkpoint to go")
        await asyncio.to_thread(drop, incoming, ["d.csv"], b"same\n")
        events = await inbox.settled(2)
    assert [e.subject for e in events] == ["d.csv", "d.csv"]


async def test_a_directory_removed_while_running_is_made_again_and_watched(
        broker: SqliteBroker, inbox: Inbox, incoming: Path, tmp_path: Path) -> None:
    async with running(watch(incoming, recursive=True), broker) as source:
        await asyncio.to_thread(drop, incoming, ["sub/a.csv", ".hidden"])
        await inbox.settled(2, quiet_s=0)
        await asyncio.to_thread(shutil.rmtree, incoming)
        await until(lambda: _no_checkpoints(broker), "the checkpoints to go")
        await until(incoming.is_dir, "the directory, made again")
        await asyncio.sleep(0.3)
        # a directory moved in is seen with its files
        await asyncio.to_thread(drop, tmp_path / "elsewhere", ["b.csv", "deeper/c.csv"])
        await asyncio.to_thread(os.rename, tmp_path / "elsewhere", incoming / "moved")
        events = await inbox.settled(4)
        assert source.stats.errors >= 1
    assert sorted(e.subject or "" for e in events) == [".hidden", "moved/b.csv",
                                                       "moved/deeper/c.csv", "sub/a.csv"]


async def _no_checkpoints(broker: SqliteBroker) -> bool:
    return not await broker.kv.scan(keys.files(APP, "inbox"))


@pytest.mark.parametrize("recursive", [False, True])
async def test_the_pattern_picks_file_names(broker: SqliteBroker, inbox: Inbox, incoming: Path,
                                            recursive: bool) -> None:
    names = ["a.csv", "b.txt", "sub/c.csv", "sub/d.txt", "sub/deeper/e.csv"]
    await asyncio.to_thread(drop, incoming, names[:2])  # before start: found by the scan
    async with running(watch(incoming, pattern="*.csv", recursive=recursive), broker):
        await asyncio.sleep(0.1)
        await asyncio.to_thread(drop, incoming, names[2:])  # while running: from the watcher
        expected = ["a.csv", "sub/c.csv", "sub/deeper/e.csv"] if recursive else ["a.csv"]
        events = await inbox.settled(len(expected))
    assert sorted(e.subject or "" for e in events) == expected


async def test_a_broker_that_fails_makes_the_source_wait_not_crash(
        broker: SqliteBroker, inbox: Inbox, incoming: Path) -> None:
    # the channel missing: storing fails until it exists
    async with running(WatchSource("inbox", path=incoming, to="later", settle=0.1),
                       broker) as source:
        await asyncio.to_thread(drop, incoming, ["a.csv"])
        await until(lambda: source.stats.errors >= 1, "a failure to store")
        assert source.stats.pending == 1 and (source.stats.lag_s or 0) > 0
        assert "later" in (source.stats.last_error or "")
        await broker.declare_queue(QueueSpec(name="later"))
        await until(lambda: source.stats.emitted == 1, "the event, once the channel exists")
        assert source.stats.pending == 0

    # the checkpoint write fails after the event is stored: it is stored again (dropped by the
    # channel as a duplicate) and then checkpointed
    kv = FlakyKV(broker.kv, fail_puts=1)
    async with running(watch(incoming, settle=0.1), broker, kv=kv) as source:
        await asyncio.to_thread(drop, incoming, ["b.csv"])
        await until(lambda: source.stats.duplicates == 1, "the second store")
        assert (source.stats.errors, source.stats.emitted) == (1, 1)
        await until(lambda: source.stats.pending == 0, "the checkpoint")
    assert await inbox.count() == 1


def test_declaration_is_checked(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    source = WatchSource("inbox", path=incoming, to=QUEUE, pattern="*.csv", settle="250ms")
    assert isinstance(source, Source)
    assert (source.kind, source.target, source.settle_s) == ("files", QUEUE, 0.25)
    assert not incoming.exists()  # made when it runs
    bads: list[dict[str, Any]] = [{"pattern": ""}, {"pattern": "sub/*.csv"}, {"settle": 0},
                                  {"settle": "soon"}]
    for bad in bads:
        with pytest.raises(ConfigError):
            WatchSource("inbox", path=incoming, to=QUEUE, **bad)


async def test_a_path_that_is_a_file_is_refused_at_start(broker: SqliteBroker,
                                                          tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    source = watch(tmp_path / "file")
    emitter = Emitter(Producer(broker, source="t"), broker.kv, QUEUE, source.stats, source="t")
    env = SourceEnv(app=APP, node="n", emitter=emitter, kv=broker.kv, clock=SYSTEM_CLOCK)
    with pytest.raises(ConfigError, match="not a directory"):
        await source.run(env)
