"""A lease has one holder at a time; it passes on when released, when it lapses, and at once when
its holder's process on this machine is gone."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import msgspec

from swell.brokers.memory import MemoryBroker
from swell.core.clock import ManualClock
from swell.triggers.lease import Holder, Lease

KEY = "swell/leases/test"


async def test_one_holder_until_released_or_lapsed(broker: MemoryBroker) -> None:
    clock = ManualClock()
    a, b = (Lease(broker.kv, KEY, n, clock, ttl_s=15.0) for n in ("a", "b"))
    assert await a.hold() and not await b.hold()
    await a.release()
    assert await b.hold() and not await a.hold()
    clock.advance(6.0)
    assert await b.hold()  # renewed
    assert b.held and not a.held


async def test_a_holder_whose_process_is_gone_is_taken_over_at_once(broker: MemoryBroker) -> None:
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()
    record = Holder(node="old", host=socket.gethostname(), pid=dead.pid)
    await broker.kv.put(KEY, msgspec.json.encode(record), ttl_s=15.0)
    assert await Lease(broker.kv, KEY, "new", ManualClock()).hold()

    alive = Holder(node="other", host=socket.gethostname(), pid=os.getppid())
    await broker.kv.put(KEY, msgspec.json.encode(alive), ttl_s=15.0)
    assert not await Lease(broker.kv, KEY, "new", ManualClock()).hold()
    elsewhere = Holder(node="far", host="another-host", pid=dead.pid)
    await broker.kv.put(KEY, msgspec.json.encode(elsewhere), ttl_s=15.0)
    assert not await Lease(broker.kv, KEY, "new", ManualClock()).hold()
