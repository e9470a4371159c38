"""The issue's must-hold: cost figures from a run of the demo match instance-seconds measured
independently within 5 %.

An app like the demo (``support.costapp``: orders charged inline, reports made in process
instances) runs on the SQLite broker through two bursts, its process instances reaped between them.

The independent measurement is the process instances' lifetimes, from the kernel, never from
anything swell's accounting reads: each worker process (a child of the warm parent) from the start
time the kernel recorded for it (``/proc/<pid>/stat``) to the moment it exited (its pidfd turns
readable, waited on in a thread), so neither how often ``/proc`` is scanned for new workers nor a
loaded box's scheduling can move them by more than a few ms. swell's figure is the one ``swell
cost`` and ``/metrics`` show (``snapshot_of(...).cost``): each instance from the moment it is asked
for to the moment it is reaped, a little longer than the process lives (its fork, its reaping),
which the instances' seconds of life keep far under the tolerance.

An inline unit has no process of its own to measure from outside: its unit-seconds are checked in
``test_cost_accounting.py`` against units scripted on a ``ManualClock``. Here the invocations are
compared, exactly, with the handlers' own count of their calls."""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
from pathlib import Path

import pytest

from support.eventually import until
from swell.core.cost import Cost, Prices
from swell.runtime.runtime import Runtime
from swell.runtime.status import snapshot_of

pytestmark = pytest.mark.slow

TOLERANCE = 0.05
SCAN_S = 0.02
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, str, int]]:
    """Every live process: pid -> (parent pid, state, start time in clock ticks since boot)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # from the 3rd field, the state, on
        out[int(name)] = (int(fields[1]), fields[0], int(fields[19]))
    return out


def _warm_parents(procs: dict[int, tuple[int, str, int]]) -> set[int]:
    """This process's children that are multiprocessing's forkserver (the warm parent)."""
    out = set()
    for pid, (ppid, _, _) in procs.items():
        if ppid == os.getpid():
            try:
                if b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.add(pid)
            except OSError:
                continue
    return out


def _workers(procs: dict[int, tuple[int, str, int]], parents: set[int]) -> set[int]:
    return {pid for pid, (ppid, state, _) in procs.items() if ppid in parents and state not in "ZX"}


class Lifetimes(threading.Thread):
    """The worker processes' lifetimes, on the kernel's boot clock: started when the kernel says,
    ended when their pidfd says (``poll`` returns the moment one exits)."""

    def __init__(self, ignore: set[int]) -> None:
        super().__init__(daemon=True)
        self.ignore = ignore
        self.started: dict[int, float] = {}
        self.ended: dict[int, float] = {}
        self.missed = 0
        self.parents: set[int] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        poller, pids = select.poll(), {}
        try:
            while not self.halt.is_set():
                procs = _processes()
                self.parents = self.parents or _warm_parents(procs)
                for pid in _workers(procs, self.parents) - self.ignore - self.started.keys():
                    try:
                        fd = os.pidfd_open(pid)
                    except ProcessLookupError:  # exited since the scan: its end is unknown
                        self.missed += 1
                        continue
                    self.started[pid] = procs[pid][2] / TICKS_PER_S
                    poller.register(fd, select.POLLIN)
                    pids[fd] = pid
                for fd, _ in poller.poll(SCAN_S * 1000):
                    self.ended[pids.pop(fd)] = time.clock_gettime(time.CLOCK_BOOTTIME)
                    poller.unregister(fd)
                    os.close(fd)
        finally:
            for fd in pids:
                os.close(fd)

    @property
    def alive(self) -> int:
        return len(self.started.keys() - self.ended.keys())

    def cut(self) -> float:
        """Stop watching; the seconds the workers lived (those alive counted up to now)."""
        self.halt.set()
        self.join()
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
        return sum(self.ended.get(pid, now) - t for pid, t in self.started.items())


async def _burst(rt: Runtime, sink: Path, orders: int, reports: int) -> None:
    for i in range(0, orders, 100):
        await asyncio.gather(*(rt.send("costdemo.orders", {"id": f"o-{j}", "amount": 1.5})
                               for j in range(i, min(orders, i + 100))))
    for _ in range(reports):
        await rt.send("costdemo.reports", {"sink": str(sink), "sleep": 0.1})


async def _drained(rt: Runtime) -> None:
    async def empty() -> bool:
        return all([(await rt.broker.stats(q)).total == 0
                    for q in ("costdemo.orders", "costdemo.reports")])
    await until(empty, "both queues drained", timeout_s=15)


async def test_cost_matches_instance_seconds_measured_independently(tmp_path: Path) -> None:
    from support import costapp

    costapp.CALLS["charge"] = 0
    sink = tmp_path / "calls.txt"
    ignore = _workers(_processes(), _warm_parents(_processes()))  # another test's, going
    rt = Runtime(costapp.app, f"sqlite:///{tmp_path}/cost.db")
    await rt.start()
    watch = Lifetimes(ignore)
    try:
        watch.start()
        await _burst(rt, sink, orders=300, reports=24)
        await _drained(rt)
        pool = rt.functions["report"].dispatcher.executor
        # idle: its instances are reaped (the second burst cold-starts new ones)
        await until(lambda: pool.usage.units == 0 and watch.started and not watch.alive,
                    "the report instances reaped", timeout_s=10)
        ended_between = len(watch.started)
        await _burst(rt, sink, orders=200, reports=24)
        await _drained(rt)
        await until(lambda: pool.usage.units == 0 and not watch.alive,
                    "the report instances reaped again", timeout_s=10)
        measured = watch.cut()
        costs: dict[str, Cost | None] = {f.name: f.cost for f in snapshot_of(rt).functions}
    finally:
        watch.halt.set()
        await rt.stop(2.0)
    charge, report = costs["charge"], costs["report"]
    assert charge is not None and report is not None
    assert watch.missed == 0
    assert len(watch.started) == pool.cold_starts  # every instance measured, none of another's
    assert len(watch.started) > ended_between >= 1  # instances reaped, and new ones started
    assert measured > 2.0, f"too little measured to compare ({measured:.3f} s)"
    error = abs(report.unit_s - measured) / measured
    print(f"process instances of report: swell {report.unit_s:.3f} unit-s, measured "
          f"{measured:.3f} over {len(watch.started)} instance(s), off by {error:.2%}")
    assert error <= TOLERANCE, (report.unit_s, measured)
    assert charge.invocations == costapp.CALLS["charge"] >= 500
    assert report.invocations == len(sink.read_text().splitlines()) == 48
    assert (charge.workload, report.workload, charge.budget_per_h) == ("checkout", "checkout", 5.0)
    # priced as declared: 256 MiB at the GiB-second price, with its invocations and operations
    p = Prices()
    assert report.dollars == pytest.approx(report.unit_s * p.gb_second / 4
                                           + report.invocations * p.invocation
                                           + report.operations * p.broker_operation)
