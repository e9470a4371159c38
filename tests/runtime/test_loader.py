"""Loading an app: an app that fails to import says where, in one line, and logs its traceback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swell.core.errors import AppError
from swell.runtime.loader import load_app

DEEP = 'import cfg\nfrom swell import App\n\napp = App("deep")\n'
CFG = ('SETTINGS: dict[str, str] = {}\n\n\ndef load() -> str:\n    return SETTINGS["missing"]\n\n\n'
       'VALUE = load()\n')


@pytest.fixture
def deep(tmp_path: Path) -> Path:
    (tmp_path / "deep.py").write_text(DEEP)
    (tmp_path / "cfg.py").write_text(CFG)
    return tmp_path / "deep.py"


def test_an_import_failure_is_one_line_naming_where_and_logs_the_traceback(
        deep: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(deep.parent))
    monkeypatch.delitem(sys.modules, "cfg", raising=False)
    caplog.set_level(logging.DEBUG, logger="swell.loader")

    with pytest.raises(AppError) as err:
        load_app(str(deep))

    assert "deep.py failed to import: KeyError: 'missing'" in str(err.value)
    assert "cfg.py:5 in load" in str(err.value)
    (record,) = [r for r in caplog.records if r.name == "swell.loader"]
    assert record.exc_info is not None
    assert "failed to import" in record.getMessage()
    sys.modules.pop("cfg", None)


@pytest.mark.slow
def test_run_with_log_level_debug_shows_the_traceback_and_the_one_line(deep: Path) -> None:
    env = {**os.environ, "SWELL_BROKER": f"sqlite:///{deep.parent}/s.db", "SWELL_METRICS": "off"}
    run = [sys.executable, "-m", "swell", "run", "deep.py"]

    debug = subprocess.run([*run, "--log-level", "debug"], cwd=deep.parent, env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    quiet = subprocess.run(run, cwd=deep.parent, env=env, capture_output=True, text=True,
                           timeout=60, check=False)

    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert 'cfg.py", line 5, in load' in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith(
        "error: deep.py failed to import: KeyError: 'missing'")
    assert quiet.returncode == 1
    assert quiet.stderr.strip().splitlines() == [debug.stderr.strip().splitlines()[-1]]
