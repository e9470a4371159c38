"""Consumer groups as real ``swell run`` processes on one SQLite file (``apps/stream_app.py``):
a SIGKILL mid-stream loses nothing and skips nothing, and a group that gains a third instance and
then loses one never has a partition worked by two at once, keeping order per key throughout."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.swellprocs import EXIT_S, AppConfig, Swell, wait_for

pytestmark = pytest.mark.slow

APP = Path(__file__).parent / "apps" / "stream_app.py"
SLOW = AppConfig(visibility_s=30.0, max_receives=5, sleep_s=0.004, concurrency=8)




@pytest.fixture(params=["sqlite", "nats"])
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Swell]:
    """``swell run`` processes on a SQLite file, or on a NATS server of the tests' own."""
    url = None
    if request.param == "nats":
        url = f"{request.getfixturevalue('nats_server')}?namespace=g{uuid.uuid4().hex[:10]}"
    s = Swell(tmp_path, url)
    try:
        yield s
    finally:
        s.cleanup()


def lines(swell: Swell) -> list[dict[str, Any]]:
    if not swell.sink.exists():
        return []
    return [json.loads(line) for line in swell.finished_lines()]


def first_order_per_key(records: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Per key, its events in the order they were first handled."""
    seen: set[int] = set()
    out: dict[str, list[int]] = {}
    for r in sorted(records, key=lambda r: r["start"]):
        if r["i"] not in seen:
            seen.add(r["i"])
            out.setdefault(r["key"], []).append(r["i"])
    return out


def overlaps(records: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """(partition, pid, pid) wherever two processes handled one partition's events at once."""
    out = []
    by_p: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_p.setdefault(r["p"], []).append(r)
    for p, rs in by_p.items():
        rs.sort(key=lambda r: r["start"])
        busy_until: dict[int, float] = {}
        for r in rs:
            for pid, until in busy_until.items():
                if pid != r["pid"] and until > r["start"]:
                    out.append((p, pid, r["pid"]))
            busy_until[r["pid"]] = max(busy_until.get(r["pid"], 0.0), r["end"])
    return out


def test_sigkill_mid_stream_then_restart_every_event_in_order_no_gap(procs: Swell) -> None:
    swell = procs
    n, keys = 2000, 50
    first = swell.start(SLOW, app=APP)
    swell.wait_ready(first)
    swell.append("clicks", n, keys)
    wait_for(lambda: len(lines(swell)) >= n // 4, 30, "a quarter of the events handled")
    first.send_signal(signal.SIGKILL)
    assert first.wait(EXIT_S) == -signal.SIGKILL
    done_at_kill = len({r["i"] for r in lines(swell)})
    assert done_at_kill < n, "the kill came too late to prove anything"

    second = swell.start(SLOW, app=APP)  # takes the partitions over once the dead leases end
    wait_for(lambda: len({r["i"] for r in lines(swell)}) == n, 60, "every event handled")
    assert swell.terminate(second) == 0

    records = lines(swell)
    handled = {r["i"] for r in records}
    repeats = len(records) - len(handled)
    print(f"\nkilled with {done_at_kill} of {n} handled; after the restart: missing "
          f"{n - len(handled)}, handled again {repeats} (back to the last checkpoint)")
    assert handled == set(range(n)), "a gap: events were skipped"
    for key, order in first_order_per_key(records).items():
        assert order == sorted(order), f"order of {key} was lost"
    # repeats are only events of the dead process, redone from a checkpoint
    redone = {r["i"] for r in records if r["pid"] == second.pid} & {
        r["i"] for r in records if r["pid"] == first.pid}
    assert len(redone) == repeats


def test_a_third_instance_joins_then_one_leaves_no_partition_worked_twice(swell: Swell) -> None:
    n, keys = 3000, 64
    a, b = swell.start(SLOW, app=APP), swell.start(SLOW, app=APP)
    swell.wait_ready(a)
    swell.wait_ready(b)
    swell.append("clicks", n, keys)
    wait_for(lambda: len(lines(swell)) >= n // 5, 30, "a fifth handled by two instances")
    c = swell.start(SLOW, app=APP)
    swell.wait_ready(c)
    wait_for(lambda: any(r["pid"] == c.pid for r in lines(swell)), 30, "the third to get work")
    swell.append("clicks", n, keys, start=n)
    assert swell.terminate(b) == 0  # leaves gracefully: hands its partitions over
    wait_for(lambda: len({r["i"] for r in lines(swell)}) == 2 * n, 60, "every event handled")
    assert swell.terminate(a) == 0
    assert swell.terminate(c) == 0

    records = lines(swell)
    handled = {r["i"] for r in records}
    per_pid = {p.pid: sum(1 for r in records if r["pid"] == p.pid) for p in (a, b, c)}
    clashes = overlaps(records)
    print(f"\nhandled {len(handled)} of {2 * n}, {len(records) - len(handled)} twice; per "
          f"instance {per_pid}; partitions worked by two at once: {len(clashes)}")
    assert handled == set(range(2 * n))
    assert len(records) == len(handled), "an event was handled twice in a gentle rebalance"
    assert not clashes, f"a partition was worked by two instances at once: {clashes[:5]}"
    assert all(per_pid.values()), f"an instance got no work: {per_pid}"
    for key, order in first_order_per_key(records).items():
        assert order == sorted(order), f"order of {key} was lost"
