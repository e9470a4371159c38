"""Several runtime nodes on one broker: the split of a function's concurrency, membership by
heartbeat, a dead node's share taken over, and (as real ``swell run`` processes on a NATS server
the tests start) two nodes sharing a queue and a named limiter's rate."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.swellprocs import AppConfig, Swell, tally, wait_for
from swell import App, Runtime
from swell.brokers.memory import MemoryBroker
from swell.core.clock import ManualClock
from swell.runtime.cluster import NODES_PREFIX, ClusterView, NodeInfo, leader, share
from swell.scaling.signals import Observation

# -- the split and the merge --------------------------------------------------------------------


@given(st.integers(0, 500), st.integers(1, 12), st.text(max_size=8))
def test_shares_sum_to_the_total_and_differ_by_at_most_one(total: int, nodes: int, salt: str) -> None:
    parts = [share(total, rank, nodes, salt) for rank in range(nodes)]
    assert sum(parts) == total
    assert max(parts) - min(parts) <= 1
    # the leader is among the nodes that get the most
    names = [f"n{i}" for i in range(nodes)]
    assert parts[names.index(leader(names, salt))] == max(parts)


def test_small_functions_spread_their_single_unit_over_the_nodes() -> None:
    firsts = Counter(next(r for r in range(4) if share(1, r, 4, f"fn{i}")) for i in range(40))
    assert len(firsts) == 4, f"every function's one unit landed on the same nodes: {firsts}"


def obs(t: float, finished: int, in_flight: int = 0, times: tuple[float, ...] = ()) -> Observation:
    return Observation(t=t, depth=10, in_flight=in_flight, finished=finished, attempts=finished,
                       current=in_flight, service_times_s=times)


def test_merged_counters_stay_monotonic_as_peers_come_and_go() -> None:
    view = ClusterView()
    seen = [view.merge(obs(1, 100, 2), {})]
    seen.append(view.merge(obs(2, 110, 2), {"b": obs(1.5, 5000, 3, (0.1,))}))  # b joins: baseline
    assert (seen[-1].finished, seen[-1].in_flight) == (110, 5)
    assert not seen[-1].service_times_s
    seen.append(view.merge(obs(3, 120, 1), {"b": obs(2.5, 5040, 4, (0.2, 0.3))}))
    assert (seen[-1].finished, seen[-1].in_flight, seen[-1].current) == (120 + 40, 5, 5)
    assert seen[-1].service_times_s == (0.2, 0.3)
    seen.append(view.merge(obs(4, 130, 1), {"b": obs(2.5, 5040, 4, (0.2, 0.3))}))  # b's same reading
    assert seen[-1].finished == 130 + 40 and not seen[-1].service_times_s
    seen.append(view.merge(obs(5, 140, 1), {}))  # b leaves: what it did stays counted
    assert seen[-1].finished == 140 + 40 and seen[-1].in_flight == 1
    assert all(a.finished <= b.finished for a, b in pairwise(seen))


# -- nodes in one process, on one broker --------------------------------------------------------


def shared_app(concurrency: int | None = 5) -> App:
    app = App("nodes")
    q = app.queue("work")

    @app.function(q, concurrency=concurrency)
    async def handle(data: dict[str, int]) -> None:
        pass

    return app


async def test_a_fixed_pool_is_split_across_nodes_not_multiplied() -> None:
    broker = MemoryBroker()
    a, b = Runtime(shared_app(5), broker), Runtime(shared_app(5), broker)
    try:
        await a.start()
        assert a.functions["handle"].dispatcher.limit == 5  # alone: the whole pool
        await b.start()  # b sees a at once, but a does not count b yet: b waits
        assert b.functions["handle"].dispatcher.limit == 0
        await a.tick()  # a counts b and takes its smaller share
        await b.tick()  # b is counted by every peer now
        limits = {rt.node: rt.functions["handle"].dispatcher.limit for rt in (a, b)}
        assert sorted(limits.values()) == [2, 3], limits
        leads = {rt.functions["handle"].leader for rt in (a, b)}
        assert len(leads) == 1, "the nodes disagree on the leader"
        await a.stop()  # a graceful stop removes its entries at once
        await b.tick()
        assert b.functions["handle"].dispatcher.limit == 5
    finally:
        await b.stop()


async def test_a_dead_nodes_share_is_taken_over_when_its_heartbeat_expires() -> None:
    clock = ManualClock()
    broker = MemoryBroker(clock=clock)
    a, b = (Runtime(shared_app(6), broker, clock=clock) for _ in range(2))
    await a.start()
    await b.start()
    try:
        await a.tick()
        await b.tick()
        assert a.functions["handle"].share == b.functions["handle"].share == 3
        nodes = [msgspec.json.decode(e.value, type=NodeInfo) for e in await broker.kv.scan(NODES_PREFIX)]
        assert sorted(n.node for n in nodes) == sorted([a.node, b.node])
        assert all(n.functions == {"handle": 3} for n in nodes)

        assert b._scaler is not None
        b._scaler.cancel()  # b stops ticking: to the others it is as good as dead
        clock.advance(3.0)
        await a.tick()
        assert a.functions["handle"].share == 3, "a took b's share while b's heartbeat was live"
        clock.advance(3.0)  # past the 5 s the entries outlive a node's last tick
        await a.tick()
        assert a.functions["handle"].share == 6
        live = [e.key for e in await broker.kv.scan(NODES_PREFIX)]
        assert live == [f"{NODES_PREFIX}nodes/{a.node}"]
    finally:
        await a.stop()
        await b.stop()


async def test_swell_nodes_lists_the_live_nodes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'swell.db'}"
    async with Runtime(shared_app(4), url) as a, Runtime(shared_app(4), url) as b:
        await a.tick()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "swell", "nodes", "--broker", url,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
        out = (await proc.communicate())[0].decode()
    assert proc.returncode == 0, out
    assert "nodes: 2" in out and a.node in out and b.node in out, out
    assert "handle 2" in out, out


# -- nodes as processes, on NATS ----------------------------------------------------------------


@pytest.fixture
def nats_swell(tmp_path: Path, nats_server: str) -> Iterator[Swell]:
    s = Swell(tmp_path, f"{nats_server}?namespace=n{uuid.uuid4().hex[:10]}")
    try:
        yield s
    finally:
        s.cleanup()


def start_nodes(swell: Swell, config: AppConfig, n: int = 2) -> list[subprocess.Popen[bytes]]:
    procs = [swell.start(config) for _ in range(n)]
    for p in procs:
        swell.wait_ready(p)
    wait_for(lambda: {s.nodes for s in swell.statuses()} == {n}, 10, f"{n} nodes to see each other")
    return procs


# Auto scales on the backlog; leases far longer than any handler, so nothing may run twice.
AUTO = AppConfig(visibility_s=30.0, max_receives=5, sleep_s=0.03, concurrency="auto")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_nodes_on_nats_share_a_queue_and_split_its_concurrency(nats_swell: Swell) -> None:
    n = 5000
    swell = nats_swell
    a, b = start_nodes(swell, AUTO)
    swell.send(n)
    # (desired, share a, share b) when both applied one decision over the same members
    agreed: list[tuple[int, int, int]] = []
    over: list[tuple[int, int, int]] = []  # any sample whose shares sum past the decision
    samples = 0
    deadline = time.monotonic() + 120
    while swell.stats().total > 0 and time.monotonic() < deadline:
        statuses = swell.statuses()
        samples += 1
        if len(statuses) == 2 and statuses[0].decided_at == statuses[1].decided_at:
            sample = (statuses[0].desired, statuses[0].share, statuses[1].share)
            if statuses[0].members == statuses[1].members:
                agreed.append(sample)
            if sample[1] + sample[2] > sample[0]:
                over.append(sample)
        time.sleep(0.1)
    assert swell.terminate(a) == 0
    assert swell.terminate(b) == 0

    records = swell.records()
    lost, duplicated = tally(records, n)
    by_pid = Counter(r.pid for r in records)
    print(f"\nlost {len(lost)}, handled twice {duplicated}; per node: {dict(by_pid)}; "
          f"{len(agreed)} of {samples} samples with both nodes on one decision; "
          f"(desired, shares): {sorted(set(agreed))}")
    assert not lost, f"lost {len(lost)} event(s), e.g. {sorted(lost)[:20]}"
    assert duplicated == 0, "an event was handled twice although no lease expired"
    assert min(by_pid.values()) >= n // 10, f"the work was not shared: {dict(by_pid)}"
    assert agreed, "the nodes never showed the same decision"
    assert max(d for d, _, _ in agreed) >= 2, "Auto never scaled past one unit"
    for desired, share_a, share_b in agreed:
        assert share_a + share_b == desired, (desired, share_a, share_b)
    # while a node joins, the one that does not count it yet may still run the whole decision for
    # a tick, but the newcomer takes nothing until it is counted: never more than the decision
    assert not over, f"the shares summed past the decision: {over}"


# A named limiter at 100/s; handlers quick and plenty of events, so the limiter is the bottleneck.
LIMITED = AppConfig(visibility_s=30.0, max_receives=5, sleep_s=0.001, concurrency=8,
                    limit="100/s")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_named_limiters_rate_holds_across_two_nodes(nats_swell: Swell) -> None:
    swell = nats_swell
    a, b = start_nodes(swell, LIMITED)
    swell.send(900)
    wait_for(lambda: swell.stats().total == 0, 60, "the limited queue to drain")
    assert swell.terminate(a) == 0
    assert swell.terminate(b) == 0

    records = swell.records()
    starts = sorted(r.start for r in records)
    # past the first second (the bucket's burst), the two nodes together run at the limit
    window = [t for t in starts if t >= starts[0] + 1.0]
    rate = (len(window) - 1) / (window[-1] - window[0])
    by_pid = Counter(r.pid for r in records)
    print(f"\n{len(records)} handled at {rate:.1f}/s together after the burst (limit 100/s); "
          f"per node: {dict(by_pid)}")
    assert len(by_pid) == 2 and min(by_pid.values()) >= 100, f"one node did the work: {dict(by_pid)}"
    assert 90.0 <= rate <= 110.0
