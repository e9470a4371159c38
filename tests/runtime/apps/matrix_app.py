"""The app of the delivery matrix (``tests/runtime/test_matrix.py``): like ``sink_app.py``, but each
event says how long its handler sleeps (``{"id": 7, "sleep": 0.005}``), so one set of nodes runs
every handler duration of a row. One JSON line per handled event goes to the sink (one ``write(2)``
on an ``O_APPEND`` file: a line is whole or absent, whatever the other processes do)."""

from __future__ import annotations

import asyncio
import json
import os
import time

from swell import App

SINK = os.open(os.environ["SWELL_TEST_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
CONCURRENCY = os.environ["SWELL_TEST_CONCURRENCY"]

app = App("matrix")
jobs = app.queue("jobs", visibility_timeout=float(os.environ["SWELL_TEST_VISIBILITY_S"]),
                 max_receives=int(os.environ["SWELL_TEST_MAX_RECEIVES"]))


@app.function(jobs, concurrency=None if CONCURRENCY == "auto" else int(CONCURRENCY))
async def record(data: dict[str, float]) -> None:
    started = time.time()
    if data["sleep"]:
        await asyncio.sleep(data["sleep"])
    line = {"id": int(data["id"]), "pid": os.getpid(), "start": started, "end": time.time()}
    os.write(SINK, json.dumps(line).encode() + b"\n")
