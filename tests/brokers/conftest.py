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
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from servers import missing_server
from swell.brokers.base import Broker, QueueSpec
from swell.core.clock import Clock, ManualClock, RealClock
from swell.core.errors import MissingDependency

BrokerFactory = Callable[[Clock, Path, Any], Awaitable[Broker]]
Declare = Callable[..., Awaitable[QueueSpec]]

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


# -- memory and sqlite --------------------------------------------------------------------------


async def _memory(clock: Clock, tmp_path: Path, server: Any) -> Broker:
    from swell.brokers.memory import MemoryBroker

    return MemoryBroker(clock=clock)


async def _sqlite(clock: Clock, tmp_path: Path, server: Any) -> Broker:
    from swell.brokers.sqlite import SqliteBroker

    return SqliteBroker(str(tmp_path / "swell.db"), clock=clock)


# -- nats ---------------------------------------------------------------------------------------


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
