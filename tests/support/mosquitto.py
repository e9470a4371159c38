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

from support.servers import missing_server, start_listening, stop_process

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
        def command(port: int) -> list[str]:
            config = self.dir / "mosquitto.conf"
            config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                              "persistence false\nmax_queued_messages 0\n"
                              "max_inflight_messages 65535\nlog_dest stdout\n"
                              "log_type error\nlog_type warning\n")
            return [BINARY, "-c", str(config)]

        self.port, self.proc = start_listening("mosquitto", command, self.dir / "mosquitto.log",
                                               self.port)
        return self

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
