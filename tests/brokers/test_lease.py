"""A lease has one holder at a time; it passes on when released, when it lapses, and at once when
its holder's process on this machine is gone (a node restarted after a SIGKILL takes its
partitions, its change stream, its MQTT session back without waiting out the TTL)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

from swell.brokers.base import Broker
from swell.brokers.lease import Lease, gone, machine_mark
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
    host, mark = socket.gethostname(), machine_mark()
    assert mark is not None  # (Linux: /proc tells the boot and the pid namespace)
    await broker.kv.put(KEY, f"{host}-{dead.pid}-{mark}ab12".encode(), ttl_s=15.0)
    assert await Lease(broker.kv, KEY, node_id(), ManualClock(), ttl_s=15.0).hold()

    other = "0" * 6 if mark != "0" * 6 else "1" * 6
    for holder in (f"{host}-{os.getppid()}-{mark}ab12",  # alive
                   f"other-host-{dead.pid}-{mark}ab12",   # elsewhere: only its TTL says
                   f"{host}-{dead.pid}-{other}ab12",      # another machine or container, same name
                   f"{host}-{dead.pid}-ab12",             # an id of an older swell: no mark
                   node_id(),                             # this process (another runtime)
                   "not-a-node-id"):
        await broker.kv.put(KEY, holder.encode(), ttl_s=15.0)
        assert not await Lease(broker.kv, KEY, node_id(), ManualClock(), ttl_s=15.0).hold(), holder
    assert gone(f"{host}-{dead.pid}-{mark}ab12".encode())
    assert not gone(f"{host}-99999999999999999999-{mark}ab12".encode())  # (no such pid)
