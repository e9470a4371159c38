"""A schedule on three real ``swell run`` nodes fires each fire time once: counted on a queue with
no dedup window (SQLite; NATS keeps 100 ms at least), so a second firing of one time would be
stored as a second event, and in the nodes' own counts (a second firing that the window caught
would count as a duplicate there)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from support.servers import NatsProcess
from support.swellprocs import NO_ENV, Swell
from swell.core.event import Event

pytestmark = pytest.mark.slow

APP = '''
from swell import App

app = App("ticker")
ticks = app.queue("ticks", dedup_window=0)   # no dedup: a double firing would show
app.schedule("every-second", every="1s", to=ticks)


@app.function(app.queue("noop"))
async def noop(data: dict) -> None:
    pass
'''

RUN_S = 20


@pytest.mark.parametrize("backend", ["sqlite", "nats"])
def test_three_nodes_fire_each_second_once(tmp_path: Path, backend: str,
                                           nats_servers: Callable[..., NatsProcess]) -> None:
    url = nats_servers().url if backend == "nats" else None
    (tmp_path / "ticker.py").write_text(APP)
    swell = Swell(tmp_path, url)
    try:
        procs = [swell.start(NO_ENV, app=tmp_path / "ticker.py", grace="5s") for _ in range(3)]
        for proc in procs:
            swell.wait_ready(proc)
        all_up = time.time()
        time.sleep(RUN_S)
        sources = swell.sources()
        stopped = time.time()
        for proc in procs:
            assert swell.terminate(proc) == 0, swell.log(proc)
        times = Counter(Event.from_json(d.body).time for d in swell.deliveries("ticks"))
        seconds = Counter(int(t.timestamp()) for t in times.elements() if t is not None)
        assert all(n == 1 for n in times.values()), [t for t, n in times.items() if n > 1]
        # every second while all three ran: once (the edges may go to a node starting/stopping)
        window = range(int(all_up) + 1, int(stopped))
        assert len(window) >= RUN_S - 1
        assert [s for s in window if seconds[s] != 1] == []
        # no node stored one another had stored (their counts, as of their last tick)
        assert len(sources) == 3 and sum(s.duplicates for s in sources) == 0, sources
        # and the fire time is the event's time, on the second
        assert all(t is not None and t.timestamp() == int(t.timestamp()) for t in times)
    finally:
        swell.cleanup()
