"""The README stays true: its Python compiles, and its first example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("n", range(len(BLOCKS)))
def test_every_python_block_compiles(n: int) -> None:
    compile(BLOCKS[n], f"README block {n}", "exec")


def _swell(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swell", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow
def test_the_shop_example_runs_as_written(tmp_path: Path) -> None:
    shop = next(b for b in BLOCKS if b.startswith("# shop.py"))
    (tmp_path / "shop.py").write_text(shop)
    env = {**os.environ, "SWELL_BROKER": f"sqlite:///{tmp_path}/s.db", "SWELL_METRICS": "off"}
    log = open(tmp_path / "run.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([sys.executable, "-m", "swell", "run", "shop.py"], cwd=tmp_path,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "running shop" not in (tmp_path / "run.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.05)
        sent = _swell("send", "orders", '{"id": "o-1", "amount": 12.5}', env=env, cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
        while True:  # charge published a receipt onward
            queues = _swell("queues", env=env, cwd=tmp_path).stdout
            row = next((line for line in queues.splitlines() if "receipts " in line), "")
            if re.search(r"receipts\s+│\s+1\s", row):
                break
            assert time.monotonic() < deadline, queues
            time.sleep(0.1)
        status = _swell("status", env=env, cwd=tmp_path)
        assert "shop.charge" in status.stdout, status.stdout
        (tmp_path / "order.json").write_text('{"id": "o-2", "amount": 3}')
        delayed = _swell("send", "orders", "@order.json", "--key", "customer-7", "--delay", "30s",
                         env=env, cwd=tmp_path)
        assert delayed.returncode == 0, delayed.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == 0, (tmp_path / "run.log").read_text()
