"""A window function on a real ``swell run``: SIGKILLed mid-stream and restarted, it emits the
same panes (the same ids, the same values) as a run that was never interrupted."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from support.swellprocs import NO_ENV, Swell, wait_for
from swell.core.event import Event

pytestmark = pytest.mark.slow

APP = '''
from swell import App
from swell.windows import BoundedOutOfOrder, Count, Tumbling

app = App("clicks")
clicks = app.stream("clicks", partitions=4)
panes = app.queue("panes")
app.window(clicks.group("counts", checkpoint_every=40), key=lambda e: e.data["page"],
           window=Tumbling("10s"), aggregate=Count(), watermark=BoundedOutOfOrder("3s"),
           allowed_lateness="8s", late="retract", emit_to=panes, name="page-counts")


@app.function(app.queue("noop"))
async def noop(data: dict) -> None:
    pass
'''

T0 = 1_800_000_000.0
N = 20_000


def events() -> list[tuple[str, float, dict[str, Any]]]:
    """30 pages, 0.05 s apart in event time, most 0-3 s out of order, one in twenty 3-12 s late."""
    rng = random.Random(7)
    out = []
    for i in range(N):
        late = rng.uniform(3, 12) if rng.random() < 0.05 else rng.uniform(0, 3)
        page = f"p{rng.randrange(30)}"
        out.append((page, T0 + i * 0.05 - late, {"page": page, "i": i}))
    return out


def run(tmp_path: Path, *, kill_after_panes: int | None) -> set[tuple[str, Any, bool]]:
    tmp_path.mkdir()
    (tmp_path / "clicks.py").write_text(APP)
    swell = Swell(tmp_path)
    try:
        proc = swell.start(NO_ENV, app=tmp_path / "clicks.py", grace="5s")
        swell.wait_ready(proc)
        swell.append_events("clicks", events())
        if kill_after_panes is not None:  # mid-stream: work done and not yet checkpointed
            wait_for(lambda: len(swell.deliveries("panes")) >= kill_after_panes, 60, "panes")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert swell.lag("clicks", "counts") > 0, "killed after the end: nothing to resume"
            proc = swell.start(NO_ENV, app=tmp_path / "clicks.py", grace="5s")
            swell.wait_ready(proc)
        wait_for(lambda: swell.lag("clicks", "counts") == 0, 120, "the group to catch up")
        time.sleep(1.0)
        assert swell.terminate(proc) == 0
        found = [Event.from_json(d.body) for d in swell.deliveries("panes")]
        got = set()
        for e in found:
            assert isinstance(e.data, dict)
            got.add((e.id, e.data["value"], e.data["retraction"]))
        assert len(got) == len(found)  # each pane once (its id is its dedup id)
        return got
    finally:
        swell.cleanup()


def test_a_killed_and_resumed_window_emits_the_same_panes(tmp_path: Path) -> None:
    whole = run(tmp_path / "whole", kill_after_panes=None)
    resumed = run(tmp_path / "resumed", kill_after_panes=50)
    assert len(whole) > 3000 and any(r for _, _, r in whole)  # retractions happened
    assert resumed == whole, (sorted(whole - resumed)[:5], sorted(resumed - whole)[:5])
