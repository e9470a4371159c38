"""A Mosquitto of the tests' own on a free loopback port (never the machine's own on 1883), with a
config written to a temporary directory: anonymous, no persistence, no limit on the messages it
queues for a session, and many in flight, so a burst is not dropped by the broker.

    from support.mosquitto import mosquitto  # noqa: F401   (the session fixture: its URL)
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.servers import free_port, missing_server, stop_process, wait_for_port

BINARY = "/usr/sbin/mosquitto"


@dataclass
class Mosquitto:
    """A running ``mosquitto -c <dir>/mosquitto.conf``."""

    dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        """Start it (again on the same port, if it ran before)."""
        if not os.access(BINARY, os.X_OK):
            missing_server("mqtt", f"no {BINARY} (apt-get install mosquitto)")
        for _ in range(3):  # a free port can be taken before the broker binds it: try another
            port = self.port or free_port()
            config = self.dir / "mosquitto.conf"
            config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                              "persistence false\nmax_queued_messages 0\n"
                              "max_inflight_messages 65535\nlog_dest stdout\n"
                              "log_type error\nlog_type warning\n")
            with open(self.dir / "mosquitto.log", "ab") as log:
                proc = subprocess.Popen([BINARY, "-c", str(config)], stdout=log,
                                        stderr=subprocess.STDOUT)
            if wait_for_port(port, proc):
                self.port, self.proc = port, proc
                return self
            proc.kill()
            proc.wait()
        tail = (self.dir / "mosquitto.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"mosquitto did not start:\n{tail}", pytrace=False)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a Mosquitto for the session (tests keep apart by topic and client id)."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        yield broker.url
    finally:
        broker.stop()
