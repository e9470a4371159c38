"""Jepsen's total-queue check, scaled to one machine: no acknowledged event is lost when a NATS
node and a swell node die mid-stream.

A 3-node JetStream cluster on loopback (``sync_interval: always``), the queue with 3 replicas, two
``swell run`` nodes consuming (``apps/fault_app.py``: each handled event's number is appended to
a sink file per process), and the test producing 5,000 numbered events in small batches. A batch
whose send raised is sent again with the same event ids (the stream's duplicate window drops a
second copy) until it is acknowledged or gives up. Mid-stream the stream's leader node is
SIGKILLed and started again on the same ports and store, and later one swell node is SIGKILLed
and replaced. After the cluster is whole again and the queue drained:

- lost = acknowledged events never processed, must be 0;
- unexpected = processed numbers never sent, must be 0;
- duplicated = processings beyond the first (at-least-once allows them): counted and printed.

``pytest -s`` shows the figures.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from support.servers import NatsCluster, NatsNode, http_json
from support.swellprocs import complete_lines
from swell import Producer
from swell.brokers.base import QueueSpec
from swell.core.errors import SwellError

if os.environ.get("CI", "").strip().lower() != "true":
    pytest.importorskip("nats", reason="nats-py is not installed: pip install 'swell[nats]'")

from swell.brokers.nats import NatsBroker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APP_FILE = Path(__file__).parent / "apps" / "fault_app.py"
NAMESPACE = "fault"
QUEUE = "fault.events"
#: the queue's stream as NatsBroker names it: swell-<namespace>-<queue with '.' as '-_'>
STREAM = "swell-fault-fault-_events"
SPEC = QueueSpec(name=QUEUE, visibility_timeout_s=10.0, max_receives=0)  # as fault_app declares it

EVENTS = 5000
BATCH = 25
PACE_S = 0.05  # between batches: about 10 s of sending, so both faults land mid-stream
SEND_GIVE_UP_S = 60.0  # a batch still refused after this long counts as not acknowledged
KILL_NATS_AT = EVENTS // 5  # acknowledged events when the stream leader is killed
NATS_DOWN_S = 3.0
KILL_SWELL_AT = EVENTS * 3 // 5  # ... and when a swell node is killed
READY_S = 30.0  # a cold interpreter on a busy 2-core box
DRAIN_S = 120.0


class SwellNodes:
    """``swell run fault_app.py`` processes on the cluster, each with a sink file and a log."""

    def __init__(self, directory: Path, url: str) -> None:
        self.dir = directory
        self.url = url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        with (self.dir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "swell", "run", str(APP_FILE), "--broker", self.url,
                 "--http", "off", "--grace", "5s"],
                cwd=self.dir, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "SWELL_TEST_SINK": str(self.dir / f"{name}.sink")})
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    async def wait_ready(self, name: str) -> None:
        """Until the node has declared its queue and started its function."""
        deadline = time.monotonic() + READY_S
        while "running 1 function(s)" not in self.log(name):
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"swell node {name} exited early ({proc.returncode}):\n"
                                     f"{self.log(name)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"swell node {name} not running after {READY_S:g} s:\n"
                                     f"{self.log(name)}")
            await asyncio.sleep(0.1)

    async def start_supervised(self, name: str, tries: int = 3) -> tuple[str, int]:
        """Start a node as a supervisor would: one that exits while starting (a runtime gives up
        if the broker does not answer its declarations, say while the cluster elects a leader)
        is started again, up to ``tries`` times. The name that came up, and how many failed."""
        for attempt in range(tries):
            this = name if attempt == 0 else f"{name}.{attempt}"
            self.start(this)
            try:
                await self.wait_ready(this)
            except AssertionError:
                if self.procs[this].poll() is None or attempt == tries - 1:
                    raise
                continue
            return this, attempt
        raise AssertionError("unreachable")

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def processed(self) -> Counter[int]:
        """How many times each event number was handled, over every node that ever ran."""
        counts: Counter[int] = Counter()
        for sink in self.dir.glob("*.sink"):
            counts.update(int(line.split()[0]) for line in complete_lines(sink))
        return counts

    def dump(self) -> None:
        for name, proc in self.procs.items():
            print(f"----- swell node {name}: pid {proc.pid}, exit {proc.returncode} -----")
            print(self.log(name)[-4000:])


class Sender:
    """Sends ``EVENTS`` numbered events in batches; knows which were acknowledged."""

    def __init__(self, broker: NatsBroker) -> None:
        self.producer = Producer(broker, source="/tests/nats-cluster")
        self.sent: set[int] = set()  # every number a publish was attempted for
        self.acked: set[int] = set()  # the numbers of sends that returned
        self.retries = 0
        self.gave_up = 0

    async def run(self) -> None:
        for start in range(0, EVENTS, BATCH):
            numbers = range(start, min(start + BATCH, EVENTS))
            events = [self.producer.event(QUEUE, {"n": n}, id=f"fault-{n}") for n in numbers]
            give_up = time.monotonic() + SEND_GIVE_UP_S
            while True:
                self.sent.update(numbers)
                try:
                    async with asyncio.timeout(15):
                        await self.producer.send_events(QUEUE, events, dedup=True)
                except (SwellError, TimeoutError) as exc:
                    if time.monotonic() > give_up:
                        self.gave_up += len(numbers)
                        print(f"gave up on events {start}..: {exc!r}")
                        break
                    self.retries += 1
                    await asyncio.sleep(0.2)
                    continue
                self.acked.update(numbers)
                break
            await asyncio.sleep(PACE_S)


async def until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def monitor(node: NatsNode, path: str) -> dict[str, Any]:
    return http_json(f"http://127.0.0.1:{node.http_port}/{path}") or {}


def stream_leader(cluster: NatsCluster) -> str | None:
    """The name of the node leading the queue's stream, as the first live node that knows says."""
    for node in cluster.nodes:
        for account in monitor(node, "jsz?streams=true").get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                if stream.get("name") == STREAM and (stream.get("cluster") or {}).get("leader"):
                    return str(stream["cluster"]["leader"])
    return None


def swell_clients(node: NatsNode) -> set[int]:
    """The ids of the swell connections (named ``swell:<namespace>``) a node serves."""
    return {int(c["cid"]) for c in monitor(node, "connz").get("connections") or []
            if c.get("name") == f"swell:{NAMESPACE}"}


def pick_victim(cluster: NatsCluster, own: tuple[str, int]) -> tuple[NatsNode, str]:
    """The node to kill: one that serves a swell node (so it must reconnect) and leads the
    queue's stream (so the stream elects a new leader), or as near to that as there is.
    ``own`` is the test's own connection (node name, client id), which does not count."""
    leader = stream_leader(cluster)

    def serves_a_node(node: NatsNode) -> bool:
        return bool(swell_clients(node) - ({own[1]} if node.name == own[0] else set()))

    scored = [(2 * serves_a_node(n) + (n.name == leader), n) for n in cluster.nodes]
    score, victim = max(scored, key=lambda sn: sn[0])
    roles = [r for r, on in (("stream leader", score & 1), ("serves a swell node", score & 2))
             if on]
    return victim, ", ".join(roles) or "no special role"


@pytest.fixture
async def cluster_broker(nats_cluster: NatsCluster) -> AsyncIterator[NatsBroker]:
    b = NatsBroker(f"{nats_cluster.url}?replicas=3&namespace={NAMESPACE}")
    try:
        yield b
    finally:
        await b.close()


async def test_no_acknowledged_event_is_lost_when_nodes_die(
        nats_cluster: NatsCluster, cluster_broker: NatsBroker, tmp_path: Path) -> None:
    broker = cluster_broker
    began = time.monotonic()
    # the queue and the kv bucket made (and their leaders elected) before the nodes start: a
    # runtime gives up if its first kv write fails
    async with asyncio.timeout(30):
        while True:
            try:
                await broker.declare_queue(SPEC)
                await broker.kv.put("fault/ready", b"1")
                break
            except SwellError as exc:
                print(f"declare: {exc}; again")
                await asyncio.sleep(0.5)
    # the test's own connection, so that picking a victim can tell it from the swell nodes'
    own = next(((n.name, cid) for n in nats_cluster.nodes for cid in swell_clients(n)), ("", -1))
    nodes = SwellNodes(tmp_path, f"{nats_cluster.url}?replicas=3&namespace={NAMESPACE}")
    sender = Sender(broker)
    events: list[str] = []
    replacement = ["a2"]

    def note(what: str) -> None:
        events.append(f"{time.monotonic() - began:5.1f} s  {what}")

    async def faults() -> None:
        await until(lambda: len(sender.acked) >= KILL_NATS_AT, 60, f"{KILL_NATS_AT} acks")
        victim, roles = await asyncio.to_thread(pick_victim, nats_cluster, own)
        victim.kill()
        note(f"SIGKILL NATS {victim.name} ({roles}) at {len(sender.acked)} acked, "
             f"{len(nodes.processed())} processed")
        await asyncio.sleep(NATS_DOWN_S)
        await asyncio.to_thread(victim.start)
        note(f"restarted NATS {victim.name}")
        await until(lambda: len(sender.acked) >= KILL_SWELL_AT, 60, f"{KILL_SWELL_AT} acks")
        nodes.kill("a")
        note(f"SIGKILL swell node a at {len(sender.acked)} acked, "
             f"{len(nodes.processed())} processed")
        await asyncio.sleep(1.0)
        replacement[0], failed = await nodes.start_supervised("a2")
        note(f"swell node {replacement[0]} (a's replacement) running"
             + (f" after {failed} failed start(s)" if failed else ""))

    try:
        for name in ("a", "b"):
            nodes.start(name)
        for name in ("a", "b"):
            await nodes.wait_ready(name)
        note(f"cluster {nats_cluster.url}; swell nodes a and b running")
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(sender.run())
            tasks.create_task(faults())
        note(f"sent: {len(sender.acked)} acknowledged, {sender.retries} batch retries")

        await asyncio.to_thread(nats_cluster.wait_healthy, 60.0)
        note("cluster healthy")
        deadline = time.monotonic() + DRAIN_S
        while True:  # drained: every acknowledged event processed, and the queue empty
            done = sender.acked <= set(nodes.processed())
            try:
                empty = (await broker.stats(QUEUE)).total == 0
            except SwellError:
                empty = False
            if done and empty:
                break
            if time.monotonic() > deadline:
                break  # the figures below say what is missing
            await asyncio.sleep(0.2)
        note("drained")
        survived = {name: nodes.alive(name) for name in ("b", replacement[0])}
        dlq = (await broker.stats(SPEC.dead_letter_queue or "")).total
    except BaseException:
        print("\n".join(events))
        nodes.stop_all()
        nodes.dump()
        raise
    nodes.stop_all()

    counts = nodes.processed()
    lost = sender.acked - set(counts)
    unexpected = set(counts) - sender.sent
    duplicated = sum(c - 1 for c in counts.values())
    print()
    print("\n".join(events))
    print(f"NATS cluster fault test: sent {len(sender.sent)}, acknowledged {len(sender.acked)} "
          f"({sender.retries} batch retries, {sender.gave_up} given up); processed "
          f"{len(counts)} distinct, {sum(counts.values())} in all; dead letters {dlq}")
    print(f"lost {len(lost)}  unexpected {len(unexpected)}  duplicated {duplicated}  "
          f"wall {time.monotonic() - began:.1f} s")
    if lost or unexpected or not all(survived.values()):
        nodes.dump()
    assert not lost, f"{len(lost)} acknowledged event(s) never processed: {sorted(lost)[:20]}"
    assert not unexpected, f"processed but never sent: {sorted(unexpected)[:20]}"
    assert all(survived.values()), f"a swell node died on its own: {survived}"
