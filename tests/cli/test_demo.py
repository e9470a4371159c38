"""``swell demo`` interrupted: Ctrl-C stops it cleanly, with no warnings about pending tasks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_ctrl_c_while_draining_stops_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "SWELL_BROKER": f"sqlite:///{tmp_path}/s.db", "COLUMNS": "80"}
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "swell", "demo", "--events", "50000"],
                                cwd=tmp_path, env=env, stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + 30
            while "starting the function" not in out.read_text():
                assert proc.poll() is None, err.read_text()
                assert time.monotonic() < deadline, out.read_text()
                time.sleep(0.05)
            time.sleep(1.0)  # draining now (the live view shows only at its end in a pipe)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert proc.returncode == 130, err.read_text()
    assert "drained" not in out.read_text()  # it was stopped before the end
    assert "Task was destroyed" not in err.read_text()
    assert "Traceback" not in err.read_text()
    assert err.read_text().strip() == ""
    assert "…" not in out.read_text()  # its live counts read whole at 80 columns


def test_the_live_counts_fit_80_columns() -> None:
    from rich.console import Console

    from swell.demo import _table
    from swell.render import fit

    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(fit(_table(12_345, 640, 17, 98_765, 1_234, 200, 12.5, 0.0213), console.width))
    out = console.export_text()
    console.file.close()

    assert "…" not in out
    assert all(len(line) <= 80 for line in out.splitlines())
    for header in ("ready", "in flight", "retry wait", "done", "retried", "dead-lettered", "rate",
                   "p99 handler"):
        assert header in out
