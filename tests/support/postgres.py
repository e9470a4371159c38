"""A PostgreSQL of the tests' own, for change data capture: ``initdb`` of the machine's
PostgreSQL (the newest under ``/usr/lib/postgresql/*/bin``, else on PATH) on a temporary
directory, started with ``wal_level=logical`` on a free loopback port, its socket in that
directory (never the machine's own server on 5432). As root, initdb and postgres run as the
``postgres`` OS user (initdb refuses root). ``postgres`` is the session fixture; ``start_postgres``
serves the benchmark too."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.servers import free_port, missing_server, stop_process

#: fast and throwaway: no fsync, small shared memory, enough slots for every test's own. (Not
#: ``synchronous_commit=off``: a commit would reach the slot only once the WAL writer flushed it.)
SETTINGS = ("wal_level=logical", "max_replication_slots=20", "max_wal_senders=10",
            "fsync=off", "full_page_writes=off",
            "shared_buffers=32MB", "max_connections=50", "listen_addresses=127.0.0.1")


def binaries() -> tuple[Path | None, str]:
    """The directory holding ``initdb`` and ``postgres``, or ``(None, why)``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None or not os.access(initdb, os.X_OK):
        return None, "no initdb under /usr/lib/postgresql/*/bin or on PATH (apt-get install postgresql)"
    return Path(initdb).parent, ""


@dataclass
class PgServer:
    """A running server of the tests' own; ``dsn`` reaches it as the superuser ``postgres``."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        """A "fast" shutdown (SIGINT: sessions are ended, not waited for), then the files go."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _as_postgres(root: Path) -> dict[str, Any]:
    """Popen's arguments that run a command as the ``postgres`` OS user when we are root (the
    server is then our child itself, so a signal reaches it, as it would not through runuser)."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam("postgres")
    os.chown(root, user.pw_uid, user.pw_gid)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": str(root)}}


def start_postgres(settings: tuple[str, ...] = SETTINGS, timeout_s: float = 20.0) -> PgServer:
    """initdb + postgres on a free port; raises ``RuntimeError`` with the log if it fails."""
    bindir, why = binaries()
    if bindir is None:
        raise FileNotFoundError(why)
    root = Path(tempfile.mkdtemp(prefix="swell-pg-"))
    root.chmod(0o700)
    as_postgres = _as_postgres(root)
    data = root / "data"
    out = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                          "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
                         capture_output=True, text=True, timeout=120, cwd=root, **as_postgres)
    if out.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed:\n{out.stdout}\n{out.stderr}")
    for _ in range(3):  # a free port can be taken before the server binds it: try another
        port = free_port()
        args = [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                "-k", str(root)]
        for setting in settings:
            args += ["-c", setting]
        log = root / "server.log"
        with log.open("ab") as f:
            proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=root,
                                    **as_postgres)
        if _ready(bindir, root, port, proc, timeout_s):
            return PgServer(root, port, proc)
        stop_process(proc)
    tail = (root / "server.log").read_text(errors="replace")[-3000:]
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"postgres did not start:\n{tail}")


def _ready(bindir: Path, root: Path, port: int, proc: subprocess.Popen[bytes],
           timeout_s: float) -> bool:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until and proc.poll() is None:
        ok = subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port),
                             "-U", "postgres"], capture_output=True, timeout=10)
        if ok.returncode == 0:
            return True
        time.sleep(0.05)
    return False


def server_or_skip(settings: tuple[str, ...] = SETTINGS) -> PgServer:
    """A server, or skip (fail under ``CI=true``) when PostgreSQL is not installed."""
    try:
        return start_postgres(settings)
    except FileNotFoundError as exc:
        missing_server("postgres", str(exc))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A PostgreSQL with ``wal_level=logical`` for the session (each test uses tables, slots and
    publications of its own names)."""
    server = server_or_skip()
    try:
        yield server
    finally:
        server.stop()
