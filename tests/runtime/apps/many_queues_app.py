"""An app of ``SWELL_TEST_QUEUES`` queues ``q0``, ``q1``, ..., one function each (default
settings: ``Auto``, at zero until an event comes). Each handler appends ``queue sent started``
to the sink: its queue's number, the ``sent`` time in the event's data, and when it started."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable

from swell import App

SINK = os.open(os.environ["SWELL_TEST_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

app = App("many")


def handler(i: int) -> Callable[[dict[str, float]], Awaitable[None]]:
    async def handle(data: dict[str, float]) -> None:
        os.write(SINK, f"{i} {data['sent']!r} {time.time()!r}\n".encode())

    return handle


for i in range(int(os.environ["SWELL_TEST_QUEUES"])):
    app.function(app.queue(f"q{i}"), name=f"h{i}")(handler(i))
