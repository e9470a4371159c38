"""``swell run --http HOST:PORT`` on a port another process holds is an error (a scraper or a
webhook sender there would reach that process), unless the user asked for best effort (and the
app has no webhooks, which need the server)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

APP = '''
from swell import App

app = App("metrics")
jobs = app.queue("jobs")


@app.function(jobs)
async def work(data: dict) -> None:
    pass
'''


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port some other process listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def run(cwd: Path, *args: str) -> subprocess.Popen[str]:
    (cwd / "app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWELL_")}
    env["SWELL_BROKER"] = f"sqlite:///{cwd / 's.db'}"
    return subprocess.Popen([sys.executable, "-m", "swell", "run", "app.py", *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("option", ["--http", "--metrics"])
def test_a_taken_port_is_an_error(tmp_path: Path, taken: int, option: str) -> None:
    proc = run(tmp_path, option, f"127.0.0.1:{taken}")
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        pytest.fail(f"swell run went on running:\n{out}")

    assert proc.returncode == 1 and "Traceback" not in out, out
    (line,) = out.strip().splitlines()
    assert line.startswith("error:") and f"127.0.0.1:{taken}" in line
    assert f"{option} off" in line and "running metrics" not in out


def test_best_effort_runs_without_the_server(tmp_path: Path, taken: int) -> None:
    proc = run(tmp_path, "--http", f"127.0.0.1:{taken}", "--http-best-effort")
    out = ""
    try:
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while "running metrics" not in out:
            assert proc.poll() is None and time.monotonic() < deadline, out
            out += proc.stdout.readline()
    finally:
        proc.terminate()
        out += proc.communicate(timeout=30)[0]
    assert "cannot serve HTTP" in out and "best effort" in out, out
    assert proc.returncode == 0, out


def test_webhooks_without_the_server_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "hooks.py").write_text(APP + '\napp.webhook("in", path="/in", to=jobs)\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWELL_")}
    env["SWELL_BROKER"] = f"sqlite:///{tmp_path / 's.db'}"
    out = subprocess.run([sys.executable, "-m", "swell", "run", "hooks.py", "--http", "off"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error:") and "webhooks (in)" in line and "--http" in line
