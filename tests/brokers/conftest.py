"""Fixtures for the broker conformance suite: a broker per backend, asked for by capability, and
its ``timing``.

A test asks for the capability it tests: ``queues`` (a ``QueueBroker``), ``topics`` (a
``TopicBroker``, which has queues too), ``logs`` (a ``LogBroker``), ``kv`` (the backend's ``KV``
store), or ``broker`` (a ``Broker``: every capability). It runs against each backend in
``BACKENDS`` that declares all it asks for, and is not collected for the others; so a new backend
can land capability by capability, declaring only the ones it has (its fixture checks that it
implements each one's protocol).

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

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.conformance import Declare, Timing
from support.servers import missing_server
from swell.brokers.base import (
    KV,
    Broker,
    Closable,
    KvBroker,
    LogBroker,
    QueueBroker,
    QueueSpec,
    TopicBroker,
)
from swell.core.clock import Clock, ManualClock, RealClock
from swell.core.errors import MissingDependency

BrokerFactory = Callable[[Clock, Path, Any], Awaitable[Closable]]

#: the capabilities a backend can have
QUEUES, TOPICS, LOGS, KV_STORE = "queues", "topics", "logs", "kv"
EVERY = frozenset({QUEUES, TOPICS, LOGS, KV_STORE})

#: what a test asking for each of these fixtures needs of a backend
NEEDS: dict[str, frozenset[str]] = {
    "queues": frozenset({QUEUES}),
    "topics": frozenset({QUEUES, TOPICS}),  # topics fan out into queues
    "logs": frozenset({LOGS}),
    "kv": frozenset({KV_STORE}),
    "broker": EVERY,
}


@dataclass(frozen=True)
class Backend:
    """One backend under test: its pytest id, how to open a fresh broker, the capabilities it
    has, the session fixture that starts its server (if any), and the length of a time unit if
    its timers run on real time (``None``: a manual clock)."""

    id: str
    make: BrokerFactory
    capabilities: frozenset[str] = EVERY
    server: str | None = None
    unit_s: float | None = None


# -- memory and sqlite --------------------------------------------------------------------------


async def _memory(clock: Clock, tmp_path: Path, server: Any) -> Closable:
    from swell.brokers.memory import MemoryBroker

    return MemoryBroker(clock=clock)


async def _sqlite(clock: Clock, tmp_path: Path, server: Any) -> Closable:
    from swell.brokers.sqlite import SqliteBroker

    return SqliteBroker(str(tmp_path / "swell.db"), clock=clock)


# -- nats ---------------------------------------------------------------------------------------


async def _nats(clock: Clock, tmp_path: Path, url: Any) -> Closable:
    from swell.brokers.nats import NatsBroker

    # a namespace per test: its streams and bucket meet no other test's
    return NatsBroker(str(url), clock=clock, namespace=f"t{uuid.uuid4().hex[:12]}")


#: NATS timers run on the server's clock: one test time unit is this many real seconds
NATS_UNIT_S = float(os.environ.get("SWELL_TEST_NATS_UNIT_S", "0.1"))

#: a backend that has only some capabilities says which: ``capabilities=frozenset({QUEUES, KV_STORE})``
BACKENDS: tuple[Backend, ...] = (
    Backend("memory", _memory, EVERY),
    Backend("sqlite", _sqlite, EVERY),
    Backend("nats", _nats, EVERY, server="nats_server", unit_s=NATS_UNIT_S),
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test that opens a broker against each backend with every capability it asks for."""
    if "backend" not in metafunc.fixturenames:
        return
    needs = frozenset().union(*(NEEDS[name] for name in metafunc.fixturenames if name in NEEDS))
    metafunc.parametrize("backend", [pytest.param(b, id=b.id) for b in BACKENDS
                                     if needs <= b.capabilities], indirect=True)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    """The backend under test (parametrised by ``pytest_generate_tests``)."""
    b: Backend = request.param
    return b


@pytest.fixture
def timing(backend: Backend, clock: ManualClock) -> Timing:
    if backend.unit_s is None:
        return Timing(clock=clock, unit_s=1.0, eps_s=1e-3, grace_s=0.0)
    # real time: timestamps are a few milliseconds apart, and a server may fire a little late
    return Timing(clock=RealClock(), unit_s=backend.unit_s, eps_s=0.05, grace_s=2.0)


@pytest.fixture
async def opened(
    request: pytest.FixtureRequest, backend: Backend, timing: Timing, tmp_path: Path
) -> AsyncIterator[Closable]:
    """A fresh broker of the backend under test, closed after the test: asked for through the
    capability fixtures below."""
    server = None if backend.server is None else request.getfixturevalue(backend.server)
    try:
        fresh = await backend.make(timing.clock, tmp_path, server)
    except MissingDependency as exc:
        missing_server(backend.id, str(exc))
    try:
        yield fresh
    finally:
        await fresh.close()


def lacks(opened: Closable, protocol: type) -> str:
    return f"{type(opened).__name__} does not implement {protocol.__name__}, yet its backend says so"


@pytest.fixture
def queues(opened: Closable) -> QueueBroker:
    assert isinstance(opened, QueueBroker), lacks(opened, QueueBroker)
    return opened


@pytest.fixture
def topics(opened: Closable) -> TopicBroker:
    assert isinstance(opened, TopicBroker), lacks(opened, TopicBroker)
    return opened


@pytest.fixture
def logs(opened: Closable) -> LogBroker:
    assert isinstance(opened, LogBroker), lacks(opened, LogBroker)
    return opened


@pytest.fixture
def kv(opened: Closable) -> KV:
    assert isinstance(opened, KvBroker), lacks(opened, KvBroker)
    return opened.kv


@pytest.fixture
def broker(opened: Closable) -> Broker:
    assert isinstance(opened, Broker), lacks(opened, Broker)
    return opened


@pytest.fixture
def declare(queues: QueueBroker) -> Declare:
    """``await declare("jobs", visibility_timeout_s=10)`` declares a queue and returns its spec."""

    async def _declare(name: str = "jobs", **settings: Any) -> QueueSpec:
        spec = QueueSpec(name=name, **settings)
        await queues.declare_queue(spec)
        return spec

    return _declare
