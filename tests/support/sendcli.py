"""``python -m swell send ...`` as the tests of the send command run it: in a folder with an app
file, against one broker URL (SQLite, or a NATS server the tests start), and its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest


class SendCli:
    """``swell send`` in ``cwd`` (where ``app`` is written as ``app.py``) against ``url``."""

    def __init__(self, cwd: Path, url: str, app: str) -> None:
        (cwd / "app.py").write_text(app)
        self.cwd, self.url = cwd, url
        self.env = {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "SWELL_BROKER"}}
        self.env["SWELL_BROKER"] = url

    def send(self, *args: str | bytes, stdin: str | bytes | None = None,
             app: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "swell", "send", *(["--app", "app.py"] if app else []), *args]
        data = stdin.encode() if isinstance(stdin, str) else stdin
        result = subprocess.run(argv, cwd=self.cwd, env=self.env, input=data, capture_output=True,
                                timeout=120)
        return subprocess.CompletedProcess(result.args, result.returncode,
                                           result.stdout.decode(errors="replace"),
                                           result.stderr.decode(errors="replace"))


def broker_url(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> str:
    """A SQLite file in ``tmp_path``, or the tests' NATS server with a namespace of this test's."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 's.db'}"
    server: str = request.getfixturevalue("nats_server")
    return f"{server}?namespace=t{uuid.uuid4().hex[:12]}"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line a failed command printed (and no traceback)."""
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:")
    return line
