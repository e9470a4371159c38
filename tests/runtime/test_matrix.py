"""The delivery matrix: 1, 2 and 3 ``swell run`` processes on SQLite and on NATS (a server the tests
start), handlers of 0, 1, 5 and 50 ms, ``Auto``, ``concurrency=1`` and ``concurrency=3``.

In every cell: every event is handled, none twice (no lease can expire: the visibility timeout is
far longer than any handler), and nothing is left in flight within 2 x the visibility timeout of
the last one handled (the stranding this guards against left events "in flight" for as long as
the nodes ran). Each cell starts its own nodes on a fresh queue (``Auto`` learns its handler's
calm service time: a cell must not inherit another's). The drain time of each cell (from the
first send to the last event handled) is printed at the end of the run.

By default a cell sends 3,000 events, fewer where a fixed pool would take long to drain them
(about ``CELL_S`` of handler time per unit, at least 100), so the matrix fits in CI;
``SWELL_MATRIX=full`` sends 3,000 in every cell (about half an hour on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.swellprocs import QUEUE, AppConfig, Swell, wait_for
from swell import Broker, Producer

APP = Path(__file__).parent / "apps" / "matrix_app.py"
VISIBILITY_S = 10.0
EVENTS = 3000
CELL_S = 2.0
FULL = os.environ.get("SWELL_MATRIX") == "full"
HANDLER_MS = (0, 1, 5, 50)

HEADER = "broker nodes conc.    ms events  drain s    ev/s twice worked clear s"
RESULTS: list[str] = []
"""One line per cell under ``HEADER``, printed in the terminal summary (see conftest.py): the drain
time from the first send to the last event handled, how many ran twice, how many nodes worked,
and how long after the last event the queue showed nothing in flight."""


def events_for(ms: int, concurrency: int | str) -> int:
    if FULL or ms == 0 or concurrency == "auto":
        return EVENTS
    assert isinstance(concurrency, int)
    return min(EVENTS, max(100, int(CELL_S * concurrency / (ms / 1000))))


@pytest.fixture(params=["sqlite", "nats"])
def row_swell(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Swell]:
    url = None
    if request.param == "nats":
        server: str = request.getfixturevalue("nats_server")
        url = f"{server}?namespace=m{uuid.uuid4().hex[:10]}"
    s = Swell(tmp_path, url)
    try:
        yield s
    finally:
        s.cleanup()


def send(swell: Swell, first: int, n: int, sleep_s: float) -> None:
    async def go(broker: Broker) -> None:
        producer = Producer(broker, source="/tests/matrix")
        for k in range(first, first + n, 500):
            await producer.send_events(QUEUE, [producer.event(QUEUE, {"id": i, "sleep": sleep_s})
                                               for i in range(k, min(first + n, k + 500))])

    swell._run(go)


def start(swell: Swell, nodes: int, concurrency: int | str) -> list[subprocess.Popen[bytes]]:
    config = AppConfig(visibility_s=VISIBILITY_S, max_receives=5, sleep_s=0.0,
                       concurrency=concurrency)
    procs = [swell.start(config, app=APP) for _ in range(nodes)]
    for p in procs:
        swell.wait_ready(p)
    wait_for(lambda: {s.nodes for s in swell.statuses()} == {nodes}, 20,
             f"{nodes} node(s) to see each other")
    return procs


@pytest.mark.slow
@pytest.mark.timeout(1800 if FULL else 300)
@pytest.mark.parametrize("ms", HANDLER_MS)
@pytest.mark.parametrize("concurrency", ["auto", 1, 3])
@pytest.mark.parametrize("nodes", [1, 2, 3])
def test_every_event_handled_once_and_nothing_left_in_flight(
        row_swell: Swell, nodes: int, concurrency: int | str, ms: int) -> None:
    swell = row_swell
    backend = "nats" if swell.url.startswith("nats") else "sqlite"
    procs = start(swell, nodes, concurrency)
    n = events_for(ms, concurrency)
    sent_at = time.time()
    send(swell, 0, n, ms / 1000)
    units = 1 if concurrency == "auto" else int(concurrency)
    wait_for(lambda: len({r.id for r in swell.records()}) >= n, 60 + 3 * n * ms / 1000 / units,
             f"{n} events of {ms} ms handled")
    records = swell.records()
    last = max(r.end for r in records)
    drain_s = last - sent_at
    wait_for(lambda: swell.stats().total == 0, 2 * VISIBILITY_S,
             "nothing left in flight or waiting after the last event was handled")
    clear_s = time.time() - last
    counts = Counter(r.id for r in records)
    lost, repeats = set(range(n)) - set(counts), sum(c - 1 for c in counts.values())
    worked = len({r.pid for r in records})
    RESULTS.append(f"{backend:6} {nodes:5d} {concurrency!s:>5} {ms:5d} {n:6d} {drain_s:8.2f} "
                   f"{n / drain_s:7.0f} {repeats:5d} {worked:6d} {clear_s:7.2f}")
    assert not lost, f"{len(lost)} event(s) never handled"
    assert repeats == 0, f"{repeats} event(s) handled twice although no lease expired"
    for p in procs:
        assert swell.terminate(p) == 0
