"""The app the consumer-group process tests run: a stream of 8 partitions and one group whose
handler sleeps, then appends one JSON line per event to the sink file (one ``write(2)`` on an
``O_APPEND`` file each, so a SIGKILL loses no finished line and processes never tear lines)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from swell import App, Event
from swell.brokers.base import partition_of

SINK = os.open(os.environ["SWELL_TEST_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
SLEEP_S = float(os.environ.get("SWELL_TEST_SLEEP_S", "0.002"))
PARTITIONS = 8

app = App("streams")
clicks = app.stream("clicks", partitions=PARTITIONS)


@app.function(clicks.group("g", checkpoint_every=20, checkpoint_interval=0.5), concurrency=PARTITIONS)
async def record(event: Event[dict[str, Any]]) -> None:
    started = time.time()
    await asyncio.sleep(SLEEP_S)
    assert event.data is not None and event.key is not None
    line = {"i": event.data["i"], "key": event.key, "p": partition_of(event.key, PARTITIONS, 0),
            "pid": os.getpid(), "start": started, "end": time.time()}
    os.write(SINK, json.dumps(line).encode() + b"\n")
