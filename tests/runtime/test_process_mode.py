"""mode="process" in a Runtime: work runs in instances, a killed instance loses nothing, and an idle
function goes back to zero instances within its idle period."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from support.swellprocs import complete_lines
from swell.runtime.process import ProcessExecutor
from swell.runtime.runtime import Runtime

pytestmark = pytest.mark.slow
APPS = Path(__file__).parent / "apps"


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(APPS))
    return tmp_path / "sink.txt"


def _lines(sink: Path) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (line.split() for line in complete_lines(sink))]


async def _drained(rt: Runtime, bound_s: float) -> None:
    deadline = time.monotonic() + bound_s
    while (await rt.broker.stats("jobs")).total:
        assert time.monotonic() < deadline, await rt.broker.stats("jobs")
        await asyncio.sleep(0.05)


def _pool(rt: Runtime) -> ProcessExecutor:
    ex = rt.functions["work"].dispatcher.executor
    assert isinstance(ex, ProcessExecutor)
    return ex


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


async def test_work_runs_in_instances_and_an_idle_function_returns_to_zero(
        sink: Path, tmp_path: Path) -> None:
    from process_app import app  # type: ignore[import-not-found]

    async with Runtime(app, f"sqlite:///{tmp_path}/p.db") as rt:
        for i in range(100):
            await rt.send("jobs", {"i": i, "sink": str(sink), "sleep": 0.01})
        await _drained(rt, 30)
        done_at = time.monotonic()
        seen = _lines(sink)
        assert sorted(i for i, _ in seen) == list(range(100))
        pids = {pid for _, pid in seen}
        assert os.getpid() not in pids
        ex = _pool(rt)
        assert ex.cold_starts >= 1
        print(f"cold starts {ex.cold_starts}, first invocation ms "
              f"{[round(t * 1000, 1) for t in ex.pool.first_invocation_times_s]}")
        # idle period 2 s: back to zero instances by then (the slack: the scaler's tick of 0.5 s,
        # the drain check's own polling, and the retiring process's exit)
        while ex.pool.instances():
            assert time.monotonic() - done_at < 2 + 1.0, ex.pool.instances()
            await asyncio.sleep(0.05)
        print(f"zero instances {time.monotonic() - done_at:.2f} s after the last event")
        assert not [pid for pid in pids if _alive(pid)]


async def test_an_instance_killed_with_sigkill_loses_no_event(sink: Path, tmp_path: Path) -> None:
    from process_app import app

    async with Runtime(app, f"sqlite:///{tmp_path}/p.db") as rt:
        for i in range(30):
            await rt.send("jobs", {"i": i, "sink": str(sink), "sleep": 0.3})
        ex = _pool(rt)
        deadline = time.monotonic() + 20
        while not (busy := [i.pid for i in ex.pool.instances() if i.state == "busy" and i.pid]):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        os.kill(busy[0], signal.SIGKILL)
        await _drained(rt, 40)
        assert sorted({i for i, _ in _lines(sink)}) == list(range(30))
        assert (await rt.broker.stats("jobs.dlq")).total == 0
        assert ex.pool.crashes >= 1
