"""Fixtures shared by every test folder: servers the tests start themselves (see support/servers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from support.mosquitto import mosquitto  # noqa: F401  (session fixtures)
from support.postgres import postgres  # noqa: F401
from support.servers import NatsCluster, NatsProcess, missing_server, nats_server_binary
from support.swellprocs import Swell
from swell.brokers.memory import MemoryBroker


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


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A 3-node JetStream cluster of the test's own (fsync on every write), started and healthy;
    stopped after the test. Its ``url`` names all three nodes."""
    cluster = NatsCluster(_nats_binary(), tmp_path / "cluster").start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    """A memory broker (test files with a ``broker`` fixture of their own use theirs)."""
    b = MemoryBroker()
    yield b
    await b.close()


@pytest.fixture
def swell(tmp_path: Path) -> Iterator[Swell]:
    """``swell run`` processes on a SQLite file in ``tmp_path`` (see support/swellprocs.py); whatever is
    still running is killed afterwards, and every process's log printed."""
    s = Swell(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The drain time of each cell of the delivery matrix (tests/runtime/test_matrix.py)."""
    import sys

    matrix = sys.modules.get("test_matrix") or sys.modules.get("runtime.test_matrix")
    lines: list[str] = getattr(matrix, "RESULTS", [])
    if matrix is not None and lines:
        terminalreporter.section("delivery matrix: drain time per cell")
        for line in [matrix.HEADER, *lines]:
            terminalreporter.write_line(line)
