"""``swell run`` as real processes for tests: start, kill, stop them; send to their queue and read
its stats; read the sink their app (``runtime/apps/sink_app.py``) writes. Any broker URL works."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec

from support.servers import http_json
from swell import Broker, Message, Producer, QueueStats, open_broker
from swell.brokers.base import Delivery
from swell.brokers.logs import committed
from swell.core.event import Event
from swell.runtime.cluster import STATUS_PREFIX
from swell.runtime.runtime import FunctionStatus
from swell.runtime.sources import read_sources
from swell.triggers.base import SourceStatus

T = TypeVar("T")

APP_FILE = Path(__file__).parent.parent / "runtime" / "apps" / "sink_app.py"
QUEUE = "jobs"
DLQ = "jobs.dlq"
STEP_S = 0.05
READY_S = 20.0   # a cold interpreter importing pydantic and rich on a busy CI box
EXIT_S = 5.0


class AppEnv(Protocol):
    """What sets up the app ``start`` runs: its environment (``AppConfig`` for ``sink_app.py``)."""

    def env(self, sink: Path) -> dict[str, str]: ...


@dataclass(frozen=True)
class NoEnv:
    """An app that needs no environment of its own (it is written by the test)."""

    def env(self, sink: Path) -> dict[str, str]:
        return {}


NO_ENV = NoEnv()


@dataclass(frozen=True)
class AppConfig:
    """How ``sink_app.py`` is set up for one test."""

    visibility_s: float
    max_receives: int
    sleep_s: float
    concurrency: int | str  # a fixed pool, or "auto"
    limit: str | None = None  # the rate of a named limiter the function is behind

    def env(self, sink: Path) -> dict[str, str]:
        return {"SWELL_TEST_SINK": str(sink), "SWELL_TEST_VISIBILITY_S": str(self.visibility_s),
                "SWELL_TEST_MAX_RECEIVES": str(self.max_receives),
                "SWELL_TEST_SLEEP_S": str(self.sleep_s),
                "SWELL_TEST_CONCURRENCY": str(self.concurrency),
                "SWELL_TEST_LIMIT": self.limit or ""}


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
    """``swell run`` processes on one broker, the sink they write, and the test's own broker.

    The broker (a SQLite file unless ``url`` is given) is the test's view of the queue (send,
    stats, kv); it runs on a private event loop so the polling loops stay plain synchronous code.
    """

    def __init__(self, tmp_path: Path, url: str | None = None) -> None:
        self.dir = tmp_path
        self.sink = tmp_path / "sink.jsonl"
        # by default a SQLite file, by an absolute path: sqlite:////tmp/...
        self.url = url or f"sqlite:///{tmp_path / 'swell.db'}"
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._runner = asyncio.Runner()
        self._broker: Broker | None = None

    # -- processes -------------------------------------------------------------------------------
    def start(self, config: AppEnv, *, grace: str = "30s", app: Path = APP_FILE,
              http: str = "off") -> subprocess.Popen[bytes]:
        log = self.dir / f"swell-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "swell", "run", str(app), "--broker", self.url,
                 "--grace", grace, "--http", http],
                cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **config.env(self.sink)})
        self.procs.append((proc, log))
        return proc

    def refused(self, app: Path, config: AppEnv = NO_ENV) -> str:
        """Start ``swell run app``, which must stop at once with one ``error:`` line and no
        traceback (a source that cannot start, a server out of reach); what it printed."""
        proc = self.start(config, app=app)
        assert proc.wait(30) == 1, self.log(proc)
        out = self.log(proc)
        assert "Traceback" not in out and out.strip().startswith("error:"), out
        return out

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        path = next(log for p, log in self.procs if p is proc)
        return path.read_text(errors="replace")

    def wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        """Until the runtime has declared the queue and started its function."""
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"swell run exited early ({proc.returncode}):\n{self.log(proc)}")
            return re.search(r"running \d+ function\(s\)", self.log(proc)) is not None

        wait_for(ready, READY_S, f"pid {proc.pid} to start")

    def wait_http(self, proc: subprocess.Popen[bytes], base: str) -> None:
        """Until its HTTP server says ready (``/readyz``)."""
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"swell run exited early ({proc.returncode}):\n{self.log(proc)}")
            return (http_json(f"{base}/readyz") or {}).get("ready") is True

        wait_for(ready, READY_S, f"pid {proc.pid} to serve HTTP")

    def sources(self) -> list[SourceStatus]:
        """The trigger sources' status records, one per source and node."""
        return self._run(read_sources)

    def deliveries(self, queue: str) -> list[Delivery]:
        """What waits in ``queue`` (peeked: left there)."""
        return self._run(lambda broker: broker.peek(queue, 100_000))

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

    def append(self, stream: str, n: int, keys: int, start: int = 0) -> None:
        """Events ``{"i": start}`` .. to ``stream``, keyed ``k0`` .. ``k{keys-1}`` in turn."""
        async def go(broker: Broker) -> None:
            producer = Producer(broker, source="/tests/processes")
            messages = []
            for i in range(start, start + n):
                key = f"k{i % keys}"
                e = producer.event(stream, {"i": i}, key=key)
                messages.append(Message(body=e.to_json(), key=key))
            for k in range(0, len(messages), 500):
                await broker.append(stream, messages[k:k + 500])

        self._run(go)

    def append_events(self, stream: str, events: list[tuple[str, float, dict[str, Any]]]) -> None:
        """Events ``(key, event time, data)`` to ``stream``, in that order."""
        async def go(broker: Broker) -> None:
            producer = Producer(broker, source="/tests/processes")
            messages = []
            for key, t, data in events:
                e = msgspec.structs.replace(producer.event(stream, data, key=key),
                                            time=datetime.fromtimestamp(t, UTC))
                messages.append(Message(body=e.to_json(), key=key))
            for k in range(0, len(messages), 500):
                await broker.append(stream, messages[k:k + 500])

        self._run(go)

    def stream_events(self, stream: str) -> list[Event[Any]]:
        """Every event kept in ``stream``, partition by partition, each in offset order."""
        async def go(broker: Broker) -> list[Event[Any]]:
            out: list[Event[Any]] = []
            for p in range(len(await broker.end_offsets(stream))):
                offset = 0
                while batch := await broker.read(stream, p, offset, 1000):
                    out += [Event.from_json(r.body) for r in batch]
                    offset = batch[-1].offset + 1
            return out

        return self._run(go)

    def lag(self, stream: str, group: str) -> int:
        """Events of ``stream`` that ``group`` has not committed yet."""
        async def go(broker: Broker) -> int:
            done = await committed(broker.kv, stream, group)
            spec = await broker.stream_spec(stream)
            return sum(await broker.lag(stream, [done.get(p, 0) for p in range(spec.partitions)]))

        return self._run(go)

    def stats(self, queue: str = QUEUE) -> QueueStats:
        return self._run(lambda broker: broker.stats(queue))

    def statuses(self) -> list[FunctionStatus]:
        """What every live node last published of its function (``swell status``'s data)."""
        async def go(broker: Broker) -> list[FunctionStatus]:
            return [msgspec.json.decode(e.value, type=FunctionStatus)
                    for e in await broker.kv.scan(STATUS_PREFIX)]

        return self._run(go)

    # -- the sink ----------------------------------------------------------------------------------
    def finished_lines(self) -> list[str]:
        return complete_lines(self.sink)

    def records(self) -> list[Record]:
        return [Record(**json.loads(line)) for line in self.finished_lines()]

    def done_ids(self) -> set[int]:
        return {r.id for r in self.records()}


def complete_lines(path: Path) -> list[str]:
    """The complete lines of a file other processes append to: one being written as we read (no
    newline yet) is left for the next look."""
    if not path.exists():
        return []
    return path.read_text().split("\n")[:-1]


def tally(records: list[Record], n: int) -> tuple[set[int], int]:
    """The ids of ``0..n-1`` never handled, and how many handlings were repeats."""
    counts = Counter(r.id for r in records)
    assert set(counts) <= set(range(n)), "the sink holds ids that were never sent"
    return set(range(n)) - set(counts), sum(c - 1 for c in counts.values())
