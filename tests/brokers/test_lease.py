"""A lease has one holder at a time; it passes on when released, when it lapses, and at once when
its holder's process on this machine is gone (a node restarted after a SIGKILL takes its
partitions, its change stream, its MQTT session back without waiting out the TTL)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

from swell.brokers.base import Broker
from swell.brokers.lease import Lease, gone
from swell.core.clock import ManualClock
from swell.runtime.cluster import node_id

KEY = "swell/leases/test"


async def test_one_holder_until_released_or_lapsed(broker: Broker) -> None:
    clock = ManualClock()
    a, b = (Lease(broker.kv, KEY, n, clock, ttl_s=15.0) for n in (node_id(), node_id()))
    assert await a.hold() and not await b.hold()
    await a.release()
    assert await b.hold() and not await a.hold()
    clock.advance(6.0)
    assert await b.hold()  # renewed
    assert b.held and not a.held


async def test_a_holder_whose_process_is_gone_is_taken_over_at_once(broker: Broker) -> None:
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()
    host = socket.gethostname()
    await broker.kv.put(KEY, f"{host}-{dead.pid}-ab12".encode(), ttl_s=15.0)
    assert await Lease(broker.kv, KEY, node_id(), ManualClock(), ttl_s=15.0).hold()

    for holder in (f"{host}-{os.getppid()}-ab12",         # alive
                   f"other-host-{dead.pid}-ab12",          # elsewhere: only its TTL says
                   node_id(),                              # this process (another runtime)
                   "not-a-node-id"):
        await broker.kv.put(KEY, holder.encode(), ttl_s=15.0)
        assert not await Lease(broker.kv, KEY, node_id(), ManualClock(), ttl_s=15.0).hold(), holder
    assert gone(f"{host}-{dead.pid}-ab12".encode())
    assert not gone(f"{host}-99999999999999999999-ab12".encode())  # (no such pid: unknown)
