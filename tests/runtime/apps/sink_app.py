"""The app that the tests of ``swell run`` processes run, configured by environment.

Its one function (a fixed pool, or Auto; optionally behind a named limiter) sleeps, then appends one
JSON line per event to the sink file: the event's id, the pid that handled it, and when the handler
started and ended. Each line is one ``write(2)`` on an ``O_APPEND`` file, so once the handler
returns the line is the kernel's: a SIGKILL loses none, and two processes appending at once never
tear each other's lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from swell import App

SINK = os.open(os.environ["SWELL_TEST_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
SLEEP_S = float(os.environ["SWELL_TEST_SLEEP_S"])

app = App("processes")
jobs = app.queue("jobs", visibility_timeout=float(os.environ["SWELL_TEST_VISIBILITY_S"]),
                 max_receives=int(os.environ["SWELL_TEST_MAX_RECEIVES"]))


CONCURRENCY = os.environ["SWELL_TEST_CONCURRENCY"]
LIMIT = os.environ.get("SWELL_TEST_LIMIT")  # a rate for a named limiter, "100/s"
if LIMIT:
    app.limiter("api", rate=LIMIT)


@app.function(jobs, concurrency=None if CONCURRENCY == "auto" else int(CONCURRENCY),
              limiters=["api"] if LIMIT else ())
async def record(data: dict[str, int]) -> None:
    started = time.time()
    await asyncio.sleep(SLEEP_S)
    line = {"id": data["id"], "pid": os.getpid(), "start": started, "end": time.time()}
    # one short append to a local file: not worth a thread hop, and it cannot be cancelled halfway
    os.write(SINK, json.dumps(line).encode() + b"\n")
