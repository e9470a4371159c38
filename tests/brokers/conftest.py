"""Fixtures for the broker conformance suite: one ``broker`` per backend, on a manual clock.

To add a backend, append one ``Backend`` to ``BACKENDS``. Its factory must return a fresh, empty
broker on the given clock; a backend that needs a server calls ``require_server`` first, so a
missing server skips the backend locally and fails it in CI (``CI=true``)::

    async def _nats(clock: ManualClock, tmp_path: Path) -> Broker:
        url = await require_server("nats", os.environ.get("SWELL_TEST_NATS", "nats://127.0.0.1:4222"))
        from swell.brokers.nats import NatsBroker

        return NatsBroker(url, clock=clock, namespace=tmp_path.name)

    BACKENDS = (..., Backend("nats", _nats))
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest

from swell.brokers.base import Broker, QueueSpec
from swell.core.clock import ManualClock
from swell.core.errors import MissingDependency

BrokerFactory = Callable[[ManualClock, Path], Awaitable[Broker]]
Declare = Callable[..., Awaitable[QueueSpec]]


@dataclass(frozen=True)
class Backend:
    """One backend under test: its pytest id and how to open a fresh broker."""

    id: str
    make: BrokerFactory


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


async def _memory(clock: ManualClock, tmp_path: Path) -> Broker:
    from swell.brokers.memory import MemoryBroker

    return MemoryBroker(clock=clock)


async def _sqlite(clock: ManualClock, tmp_path: Path) -> Broker:
    from swell.brokers.sqlite import SqliteBroker

    return SqliteBroker(str(tmp_path / "swell.db"), clock=clock)


BACKENDS: tuple[Backend, ...] = (
    Backend("memory", _memory),
    Backend("sqlite", _sqlite),
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=[pytest.param(b, id=b.id) for b in BACKENDS])
async def broker(
    request: pytest.FixtureRequest, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[Broker]:
    backend: Backend = request.param
    try:
        opened = await backend.make(clock, tmp_path)
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
