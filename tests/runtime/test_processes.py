"""``swell run`` as real processes on one SQLite file.

A SIGKILL mid-stream loses nothing (at-least-once); two processes share a queue without handling
any event twice; a graceful stop hands unfinished events to the next process at once rather than
leaving them to their leases. The app is ``apps/sink_app.py``: it records every handled event in a
sink file that outlives any process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from swell import Broker, Producer, QueueStats, open_broker

pytestmark = pytest.mark.slow

T = TypeVar("T")

APP_FILE = Path(__file__).parent / "apps" / "sink_app.py"
QUEUE = "jobs"
DLQ = "jobs.dlq"
STEP_S = 0.05
READY_S = 20.0   # a cold interpreter importing pydantic and rich on a busy CI box
EXIT_S = 5.0


@dataclass(frozen=True)
class AppConfig:
    """How ``sink_app.py`` is set up for one test."""

    visibility_s: float
    max_receives: int
    sleep_s: float
    concurrency: int

    def env(self, sink: Path) -> dict[str, str]:
        return {"SWELL_TEST_SINK": str(sink), "SWELL_TEST_VISIBILITY_S": str(self.visibility_s),
                "SWELL_TEST_MAX_RECEIVES": str(self.max_receives),
                "SWELL_TEST_SLEEP_S": str(self.sleep_s),
                "SWELL_TEST_CONCURRENCY": str(self.concurrency)}


@dataclass(frozen=True)
class Record:
    """One line of the sink: an event handled to the end."""

    id: int
    pid: int
    start: float
    end: float


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``check`` every 50 ms until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {got!r})")
        time.sleep(STEP_S)


class Swell:
    """``swell run`` processes on one SQLite file, the sink they write, and the test's own broker.

    The broker is the test's view of the queue (send, stats); it runs on a private event loop so
    the polling loops stay plain synchronous code.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.db = tmp_path / "swell.db"
        self.sink = tmp_path / "sink.jsonl"
        self.url = f"sqlite:///{self.db}"  # an absolute path: sqlite:////tmp/...
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._runner = asyncio.Runner()
        self._broker: Broker | None = None

    # -- processes -------------------------------------------------------------------------------
    def start(self, config: AppConfig, *, grace: str = "30s") -> subprocess.Popen[bytes]:
        log = self.dir / f"swell-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "swell", "run", str(APP_FILE), "--broker", self.url,
                 "--grace", grace],
                cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **config.env(self.sink)})
        self.procs.append((proc, log))
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        path = next(log for p, log in self.procs if p is proc)
        return path.read_text(errors="replace")

    def wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        """Until the runtime has declared the queue and started its function."""
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"swell run exited early ({proc.returncode}):\n{self.log(proc)}")
            return "running 1 function(s)" in self.log(proc)

        wait_for(ready, READY_S, f"pid {proc.pid} to start")

    def terminate(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGTERM, and the exit code within a few seconds."""
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(EXIT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"pid {proc.pid} still running {EXIT_S:g} s after SIGTERM") from None

    def cleanup(self) -> None:
        """Kill what is still running; show every log (pytest prints it if the test failed)."""
        for proc, log in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            print(f"----- {log.name}: pid {proc.pid}, exit {proc.returncode} -----")
            print(log.read_text(errors="replace"))
        if self._broker is not None:
            self._runner.run(self._broker.close())
        self._runner.close()

    # -- the queue, seen from the test -------------------------------------------------------------
    def _run(self, use: Callable[[Broker], Coroutine[Any, Any, T]]) -> T:
        if self._broker is None:
            self._broker = open_broker(self.url)
        return self._runner.run(use(self._broker))

    def send(self, n: int) -> None:
        """Events with data ``{"id": 0}`` .. ``{"id": n - 1}``, in one batch."""
        async def go(broker: Broker) -> None:
            producer = Producer(broker, source="/tests/processes")
            await producer.send_events(QUEUE, [producer.event(QUEUE, {"id": i}) for i in range(n)])

        self._run(go)

    def stats(self, queue: str = QUEUE) -> QueueStats:
        return self._run(lambda broker: broker.stats(queue))

    # -- the sink ----------------------------------------------------------------------------------
    def records(self) -> list[Record]:
        if not self.sink.exists():
            return []
        return [Record(**json.loads(line)) for line in self.sink.read_text().splitlines()]

    def done_ids(self) -> set[int]:
        return {r.id for r in self.records()}


@pytest.fixture
def swell(tmp_path: Path) -> Iterator[Swell]:
    s = Swell(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()


def tally(records: list[Record], n: int) -> tuple[set[int], int]:
    """The ids of ``0..n-1`` never handled, and how many handlings were repeats."""
    counts = Counter(r.id for r in records)
    assert set(counts) <= set(range(n)), "the sink holds ids that were never sent"
    return set(range(n)) - set(counts), sum(c - 1 for c in counts.values())


# Short leases so a dead process's events come back quickly; max_receives high enough that the
# redeliveries after the crash never dead-letter; slow enough that the kill lands mid-stream.
CRASH = AppConfig(visibility_s=1.0, max_receives=20, sleep_s=0.02, concurrency=8)


def test_sigkill_mid_stream_loses_nothing(swell: Swell) -> None:
    n = 1000
    first = swell.start(CRASH)
    swell.wait_ready(first)
    swell.send(n)

    def mid_stream() -> QueueStats | None:
        stats = swell.stats()
        return stats if len(swell.done_ids()) >= n // 10 and stats.in_flight > 0 else None

    before = wait_for(mid_stream, 20, "some events done and some in flight")
    first.send_signal(signal.SIGKILL)
    assert first.wait(EXIT_S) == -signal.SIGKILL
    done_at_kill = len(swell.done_ids())
    left = swell.stats()
    print(f"\nkilled with {done_at_kill} of {n} done, {before.in_flight} in flight; "
          f"left in the queue: {left}")
    assert done_at_kill < n and left.total > 0, "the kill came too late to prove anything"

    second = swell.start(CRASH)
    wait_for(lambda: swell.stats().total == 0, 30, "the queue to drain after the restart")
    assert swell.terminate(second) == 0

    lost, duplicated = tally(swell.records(), n)
    print(f"lost {len(lost)}, duplicated {duplicated} (at-least-once allows duplicates)")
    assert not lost, f"lost {len(lost)} event(s), e.g. {sorted(lost)[:20]}"
    assert swell.stats(DLQ).total == 0


# Leases far longer than any handler: no lease expires, so no event may be handled twice.
SHARED = AppConfig(visibility_s=30.0, max_receives=5, sleep_s=0.01, concurrency=32)


def test_two_processes_split_the_work_without_doubling_it(swell: Swell) -> None:
    n = 2000
    a, b = swell.start(SHARED), swell.start(SHARED)
    swell.wait_ready(a)
    swell.wait_ready(b)
    swell.send(n)
    wait_for(lambda: swell.stats().total == 0, 30, f"{n} events to be handled")
    assert swell.terminate(a) == 0
    assert swell.terminate(b) == 0

    records = swell.records()
    lost, duplicated = tally(records, n)
    by_pid = Counter(r.pid for r in records)
    spans = {pid: (min(r.start for r in records if r.pid == pid),
                   max(r.end for r in records if r.pid == pid)) for pid in by_pid}
    print(f"\nlost {len(lost)}, duplicated {duplicated}; per pid: {dict(by_pid)}; "
          f"busy from/to: {spans}")
    assert not lost, f"lost {len(lost)} event(s), e.g. {sorted(lost)[:20]}"
    assert duplicated == 0, "an event was handled twice although no lease expired"
    assert set(by_pid) == {a.pid, b.pid}
    assert min(by_pid.values()) >= n // 10, f"the work was not shared: {dict(by_pid)}"
    assert swell.stats(DLQ).total == 0


# Handlers far longer than the grace period, leases far longer than the test's patience: only a
# release at shutdown lets the next process have the events in time.
SLOW = AppConfig(visibility_s=60.0, max_receives=5, sleep_s=2.0, concurrency=32)


def test_graceful_stop_hands_unfinished_events_to_the_next_process(swell: Swell) -> None:
    n = 20
    first = swell.start(SLOW, grace="0.2s")
    swell.wait_ready(first)
    swell.send(n)
    wait_for(lambda: swell.stats().in_flight == n, 10, f"all {n} events to be in flight")
    assert swell.terminate(first) == 0

    done_by_first = swell.done_ids()
    released = swell.stats()
    print(f"\nthe first process finished {len(done_by_first)} of {n}; after it stopped: {released}")
    assert released.in_flight == 0, "unfinished events were left leased, not released"
    assert released.depth == n - len(done_by_first) > 0

    second = swell.start(SLOW)
    wait_for(lambda: len(swell.done_ids()) == n, 10,
             "the second process to handle the released events (their leases were 60 s)")
    wait_for(lambda: swell.stats().total == 0, 5, "the last acks")
    assert swell.terminate(second) == 0

    lost, duplicated = tally(swell.records(), n)
    print(f"lost {len(lost)}, duplicated {duplicated}")
    assert not lost
    assert swell.stats(DLQ).total == 0
