"""The app ``tests/brokers/test_nats_cluster.py`` runs with ``swell run`` on a NATS cluster.

Its one function appends the event's number (and the time) to the sink file named by ``SWELL_TEST_SINK``: one
``write(2)`` per event on an ``O_APPEND`` file, so once the handler returns (and before swell acks)
the line is the kernel's, and a SIGKILL of the process loses none of them.
"""

from __future__ import annotations

import asyncio
import os
import time

from swell import App

SINK = os.open(os.environ["SWELL_TEST_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

app = App("fault")
# a lease short enough that a killed node's events come back soon, and longer than the broker's
# request timeout (5 s), so acks held up by a dead connection still find their leases; and
# max_receives=0, so the redeliveries the faults cause never dead-letter an event (that would count
# as lost)
events = app.queue("fault.events", visibility_timeout=10, max_receives=0)


@app.function(events, concurrency=16)
async def record(data: dict[str, int]) -> None:
    await asyncio.sleep(0.02)  # some work, so a kill finds events in flight
    os.write(SINK, b"%d %.3f\n" % (data["n"], time.time()))
