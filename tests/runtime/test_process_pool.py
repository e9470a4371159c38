"""Process instances: ``ProcessPool`` runs a function's handler in processes forked from a warm parent.

The app is ``apps/pool_app.py``, loaded the way ``swell run`` loads a file. Its handlers report what
they saw by publishing, which reaches the test through the pool's ``on_publish``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest

from swell import Event, Producer, QueueSpec, UnknownQueue
from swell.brokers.base import Delivery, Receipt
from swell.brokers.memory import MemoryBroker
from swell.patterns.idempotency import IdempotencyStore
from swell.runtime.context import Invocation, no_extend
from swell.runtime.executor import Outcome
from swell.runtime.loader import load_app
from swell.runtime.process import PoolBackend, ProcessExecutor, ProcessPool, locate, locate_app

pytestmark = pytest.mark.slow

APP_FILE = Path(__file__).parent / "apps" / "pool_app.py"
APP = load_app(str(APP_FILE))
MODULE = locate_app(APP)  # "pool_app:app": the loader names a file by its stem
WAIT_S = 15.0  # a bound on waits, not a performance claim: a busy CI box forks slowly


class Published:
    """What workers published through the parent, and the ids they got back."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        self.fail = fail

    async def __call__(self, queue: str, data: Any, attrs: dict[str, Any]) -> str:
        if self.fail is not None:
            raise self.fail
        self.calls.append((queue, data, attrs))
        return f"id-{len(self.calls)}"


class MakePool(Protocol):
    def __call__(self, function: str = ..., *, timeout_s: float | None = ..., min_instances: int = ...,
                 on_publish: Published | None = ...) -> ProcessPool: ...


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    """Pools that are stopped at the end of the test, leaving no process behind."""
    pools: list[ProcessPool] = []
    pids: set[int] = set()

    def make(function: str = "work", *, timeout_s: float | None = 10.0, min_instances: int = 0,
             on_publish: Published | None = None) -> ProcessPool:
        pool = ProcessPool(MODULE, function, timeout_s=timeout_s, min_instances=min_instances,
                           max_instances=8, on_publish=on_publish or Published())
        pools.append(pool)
        return pool

    try:
        yield make
    finally:
        for pool in pools:
            pids.update(i.pid for i in pool.instances() if i.pid is not None)
            await pool.stop(grace_s=0.0)
            assert not pool.instances()
        assert not [pid for pid in pids if alive(pid)]


def body(**data: Any) -> bytes:
    return Event(type="test", source="tests", data=data).to_json()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(check: Callable[[], object], what: str) -> None:
    """Wait (bounded) until ``check()`` is true."""
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                if check():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def pids(pool: ProcessPool) -> set[int]:
    return {i.pid for i in pool.instances() if i.pid is not None}


# -- running events ----------------------------------------------------------------------------------
async def test_runs_in_another_process_and_publishes_through_the_parent(make_pool: MakePool) -> None:
    published = Published()
    pool = make_pool(on_publish=published)
    await pool.start()
    event = Event(type="test", source="tests", data={"n": 7})

    outcome = await pool.run(event.to_json(), 3)

    assert outcome.kind == "ok" and outcome.error is None and outcome.service_s > 0
    (q1, data1, attrs1), (q2, data2, attrs2) = published.calls
    assert q1 == q2 == "seen"
    assert data1["n"] == 7 and data1["pid"] != os.getpid() and data1["pid"] in pids(pool)
    assert attrs1 == {"key": "k", "correlationid": event.id, "traceparent": None, "delay_s": 0.0}
    assert data2 == {"got": "id-1", "attempt": 3}  # the worker got the id back; ctx.attempt is ours
    assert attrs2["delay_s"] == 1.5


async def test_cold_starts_are_measured(make_pool: MakePool) -> None:
    pool = make_pool()
    await pool.start()
    for n in range(3):
        assert (await pool.run(body(n=n), 1)).kind == "ok"
        await pool.scale_to(0)
        await until(lambda: not pool.instances(), "the pool to empty")

    assert pool.cold_starts == 3
    assert len(pool.cold_start_times_s) == len(pool.first_invocation_times_s) == 3
    assert all(t > 0 for t in [*pool.cold_start_times_s, *pool.first_invocation_times_s])
    assert all(r <= f for r, f in zip(pool.cold_start_times_s, pool.first_invocation_times_s,
                                       strict=True))
    print(f"\ncold starts: ready {[f'{t * 1000:.1f} ms' for t in pool.cold_start_times_s]}, "
          f"first invocation {[f'{t * 1000:.1f} ms' for t in pool.first_invocation_times_s]}, "
          f"warm parent {pool.warm_parent_s * 1000:.0f} ms")


@pytest.mark.parametrize(("raw", "kind", "error"), [
    (body(n="seven"), "invalid", "n: Input should be a valid integer"),
    (b"{not json", "malformed", "malformed JSON"),
    (body(do="fail", n=42), "failed", "ValueError: boom 42"),
])
async def test_bad_events_and_exceptions(make_pool: MakePool, raw: bytes, kind: str,
                                         error: str) -> None:
    pool = make_pool()
    outcome = await pool.run(raw, 1)
    assert outcome.kind == kind
    assert outcome.error is not None and error in outcome.error
    assert (await pool.run(body(), 1)).kind == "ok"  # the instance is still good
    assert pool.cold_starts == 1 and pool.crashes == 0


async def test_throttled(make_pool: MakePool) -> None:
    outcome = await make_pool().run(body(do="throttle"), 1)
    assert (outcome.kind, outcome.retry_after_s) == ("throttled", 2.0)
    assert outcome.service_s >= 0


async def test_a_failed_publish_raises_in_the_handler(make_pool: MakePool) -> None:
    pool = make_pool(on_publish=Published(fail=UnknownQueue("seen")))
    outcome = await pool.run(body(), 1)
    assert outcome.kind == "failed"
    assert outcome.error == "swell.core.errors.BrokerError: unknown queue 'seen' " \
                            "(declare it with app.queue('seen'))"


async def test_async_handler_extends_through_the_run(make_pool: MakePool) -> None:
    published = Published()
    pool = make_pool("awork", on_publish=published)
    asked: list[float] = []

    async def extend(seconds: float) -> bool:
        asked.append(seconds)
        return True

    assert (await pool.run(body(n=1), 1, backend=PoolBackend(published, extend))).kind == "ok"
    assert (await pool.run(body(n=2), 1)).kind == "ok"  # no extend given: the lease cannot be held
    assert asked == [7.0]
    assert [data["extended"] for _, data, _ in published.calls] == [True, False]


# -- timeouts and crashes ----------------------------------------------------------------------------
async def test_a_sync_handler_past_its_timeout_is_killed_and_replaced(make_pool: MakePool) -> None:
    pool = make_pool(timeout_s=0.3)
    await pool.scale_to(1)
    await until(lambda: pool.ready == 1, "an instance")
    (first,) = pids(pool)

    outcome = await pool.run(body(do="sleep", sleep_s=30), 1)

    assert outcome.kind == "timeout" and outcome.error == "timed out after 0.3s"
    assert (await pool.run(body(), 1)).kind == "ok"
    await until(lambda: not alive(first), "the timed-out instance to be gone")
    assert first not in pids(pool) and pool.crashes == 0


async def test_an_async_handler_past_its_timeout_keeps_its_instance(make_pool: MakePool) -> None:
    pool = make_pool("awork", timeout_s=0.3)
    outcome = await pool.run(body(do="sleep", sleep_s=30), 1)
    (first,) = pids(pool)
    assert outcome.kind == "timeout"
    assert (await pool.run(body(), 1)).kind == "ok"
    assert pids(pool) == {first} and pool.cold_starts == 1


async def test_sigkill_of_a_busy_instance_returns_crashed_and_replaces_it(make_pool: MakePool) -> None:
    pool = make_pool()
    await pool.scale_to(2)
    await until(lambda: pool.ready == 2, "two instances")
    running = asyncio.create_task(pool.run(body(do="sleep", sleep_s=30), 1))
    await until(lambda: pool.busy == 1, "a busy instance")
    (victim,) = [i.pid for i in pool.instances() if i.state == "busy" and i.pid is not None]

    os.kill(victim, signal.SIGKILL)
    async with asyncio.timeout(WAIT_S):
        outcome = await running

    assert outcome.kind == "crashed"
    assert outcome.error == f"instance {victim} was killed by SIGKILL"
    assert pool.crashes == 1
    await until(lambda: pool.ready == 2, "a replacement")
    assert victim not in pids(pool)
    assert (await pool.run(body(), 1)).kind == "ok"


async def test_a_handler_that_exits_is_a_crash(make_pool: MakePool) -> None:
    pool = make_pool()
    outcome = await pool.run(body(do="exit"), 1)
    assert outcome.kind == "crashed"
    assert outcome.error is not None and outcome.error.endswith("exited with code 3")
    assert pool.crashes == 1
    assert (await pool.run(body(), 1)).kind == "ok"


async def test_an_instance_that_cannot_load_fails_its_waiting_event(make_pool: MakePool) -> None:
    pool = make_pool("nope")
    outcome = await pool.run(body(), 1)
    assert outcome.kind == "crashed"
    assert outcome.error is not None and "have a function 'nope'" in outcome.error
    assert pool.start_failures == 1 and pool.crashes == 0


# -- scaling -----------------------------------------------------------------------------------------
async def test_scale_to_zero_leaves_no_process(make_pool: MakePool) -> None:
    pool = make_pool()
    await pool.scale_to(3)
    await until(lambda: pool.ready == 3, "three instances")
    started = pids(pool)
    assert len(started) == 3 and pool.cold_starts == 3

    await pool.scale_to(0)

    await until(lambda: not pool.instances(), "the pool to empty")
    assert not [pid for pid in started if alive(pid)]
    assert pool.crashes == 0


async def test_min_instances_stay_warm(make_pool: MakePool) -> None:
    pool = make_pool(min_instances=2)
    await pool.start()
    await until(lambda: pool.ready == 2, "the warm instances")
    warm = pids(pool)

    await pool.scale_to(0)

    assert pool.desired == 2 and pids(pool) == warm
    assert (await pool.run(body(), 1)).kind == "ok"
    assert pool.cold_starts == 2


async def test_a_busy_instance_is_retired_only_when_done(make_pool: MakePool) -> None:
    pool = make_pool()
    running = asyncio.create_task(pool.run(body(do="sleep", sleep_s=0.5), 1))
    await until(lambda: pool.busy == 1, "a busy instance")

    await pool.scale_to(0)

    assert pool.busy == 1
    assert (await running).kind == "ok"
    await until(lambda: not pool.instances(), "the pool to empty")
    assert pool.crashes == 0


async def test_a_run_with_no_instance_starts_one(make_pool: MakePool) -> None:
    pool = make_pool()
    await pool.start()
    assert not pool.instances()
    outcomes = await asyncio.gather(*(pool.run(body(n=n), 1) for n in range(3)))
    assert [o.kind for o in outcomes] == ["ok"] * 3
    assert 1 <= pool.cold_starts <= 3


async def test_stop_kills_what_outlives_the_grace(make_pool: MakePool) -> None:
    pool = make_pool()
    await pool.scale_to(2)
    running = asyncio.create_task(pool.run(body(do="sleep", sleep_s=30), 1))
    await until(lambda: pool.busy == 1 and pool.ready == 2, "a busy and an idle instance")
    started = pids(pool)

    await pool.stop(grace_s=0.2)

    outcome = await running
    assert outcome.kind == "crashed"
    assert not pool.instances() and not [pid for pid in started if alive(pid)]
    assert (await pool.run(body(), 1)) == Outcome("crashed", "the pool is stopped")


async def test_an_app_file_outside_sys_path(make_pool: MakePool, tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "pool_tmp_app.py").write_text(
        "import os\nfrom swell import App, Context\n\napp = App('tmp')\n\n\n"
        "@app.function(app.queue('q'))\ndef pid(data: dict, ctx: Context) -> None:\n"
        "    ctx.publish('out', os.getpid())\n")
    module = locate_app(load_app(str(folder / "pool_tmp_app.py")))
    published = Published()
    pool = ProcessPool(module, "pid", timeout_s=None, on_publish=published)
    try:
        assert module == "pool_tmp_app:app"
        assert (await pool.run(body(), 1)).kind == "ok"
        assert published.calls[0][1] != os.getpid()
    finally:
        await pool.stop(grace_s=0.0)


async def test_the_executor_publishes_to_the_broker_and_reports_changes() -> None:
    assert MODULE == locate(APP.functions["work"]) == "pool_app:app"
    broker = MemoryBroker()
    await broker.declare_queue(QueueSpec(name="seen"))
    producer = Producer(broker, source="tests")
    executor = ProcessExecutor(APP.functions["work"], producer, max_units=2, min_instances=0)
    inv = Invocation(None, producer, no_extend, IdempotencyStore(broker.kv, "work", time.time))
    changes: list[tuple[int, int, int]] = []
    executor.on_change = lambda: changes.append((executor.starting, executor.ready(),
                                                 executor.cold_starts))
    delivery = Delivery(receipt=Receipt("jobs", 1, 1), body=body(n=5), headers={}, receive_count=1,
                        enqueued_at=0.0, first_received_at=None)
    try:
        await executor.scale_to(1)
        assert changes[0] == (1, 0, 1)
        outcome = await executor.execute(delivery, inv)
        assert outcome.kind == "ok"
        (seen,) = await broker.receive("seen", 10)  # the other one is delayed by 1.5 s
        data = Event.from_json(seen.body).data
        assert data is not None and data["n"] == 5 and data["pid"] != os.getpid()
        assert (0, 1, 1) in changes
    finally:
        await executor.stop()
        await broker.close()
    assert changes[-1] == (0, 0, 1) and not executor.pool.instances()
