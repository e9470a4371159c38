"""Idempotency keys: the record's life (in progress, completed, forgotten, expired, conflicting),
and in a running app: duplicates acked with the stored result, failures retried, a key in
progress elsewhere waited for, a failing store failing closed, the block form, and the bypass."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from support.eventually import until
from swell import App, Context, Event, Idempotency, IdempotencyConflict, Retry, Runtime
from swell.brokers.memory import MemoryBroker
from swell.core.clock import ManualClock
from swell.core.errors import BrokerUnavailable
from swell.patterns.idempotency import Busy, Done, IdempotencyStore, Started, fingerprint


def order_id(event: Event[Any]) -> Any:
    """The key these tests use: ``lambda e: e.data["order_id"]``, typed (``data`` may be None)."""
    assert event.data is not None
    return event.data["order_id"]


# -- the store ----------------------------------------------------------------------------------


async def test_a_record_goes_in_progress_then_completed_and_returns_its_result() -> None:
    clock = ManualClock()
    store = IdempotencyStore(MemoryBroker(clock=clock).kv, "f", clock.time)
    fp = fingerprint({"order": 1})
    first = await store.begin("k", fp, lease_s=30)
    assert isinstance(first, Started)
    assert isinstance(await store.begin("k", fp, lease_s=30), Busy)
    await store.complete("k", first, fp, {"charged": 10}, ttl_s=3600)
    assert await store.begin("k", fp, lease_s=30) == Done({"charged": 10})
    with pytest.raises(IdempotencyConflict):
        await store.begin("k", fingerprint({"order": 2}), lease_s=30)
    clock.advance(3601)  # the completed record's memory ends with its ttl
    assert isinstance(await store.begin("k", fp, lease_s=30), Started)


async def test_a_failed_attempt_is_forgotten_and_a_dead_owner_expires_with_its_lease() -> None:
    clock = ManualClock()
    store = IdempotencyStore(MemoryBroker(clock=clock).kv, "f", clock.time)
    fp = fingerprint("x")
    first = await store.begin("k", fp, lease_s=30)
    assert isinstance(first, Started)
    await store.abandon("k", first)
    second = await store.begin("k", fp, lease_s=30)
    assert isinstance(second, Started)
    clock.advance(31)  # its owner died: nothing completes it, the lease runs out
    assert isinstance(await store.begin("k", fp, lease_s=30), Started)
    await store.complete("k", second, fp, None, ttl_s=60)  # too late: another took it over
    assert isinstance(await store.begin("k", fp, lease_s=30), Busy)


async def test_keys_are_namespaced_per_function() -> None:
    kv = MemoryBroker().kv
    a, b = IdempotencyStore(kv, "a", time.time), IdempotencyStore(kv, "b", time.time)
    assert isinstance(await a.begin("k", "fp", 30), Started)
    assert isinstance(await b.begin("k", "fp", 30), Started)


# -- in an app ----------------------------------------------------------------------------------


def orders_app(effects: list[Any], **fn: Any) -> App:
    app = App("idem")
    q = app.queue("orders", visibility_timeout=5)

    @app.function(q, idempotency=Idempotency(key=order_id, ttl="1h"), **fn)
    async def charge(data: dict[str, Any]) -> dict[str, Any]:
        if data.get("sleep"):
            await asyncio.sleep(data["sleep"])
        if data.get("fail_first") and not any(e == ("fail", data["order_id"]) for e in effects):
            effects.append(("fail", data["order_id"]))
            raise RuntimeError("flaky")
        effects.append(data["order_id"])
        return {"charged": data["order_id"]}

    return app


async def test_a_duplicate_is_acked_without_running_again() -> None:
    effects: list[Any] = []
    async with Runtime(orders_app(effects), MemoryBroker()) as rt:
        for _ in range(2):
            await rt.send("orders", {"order_id": "o-1", "amount": 5})
        await until(lambda: rt.functions["charge"].dispatcher.metrics.finished == 2)
        m = rt.functions["charge"].dispatcher.metrics
        assert (m.succeeded, m.duplicates) == (2, 1)
        assert (await rt.broker.stats("orders")).total == 0
    assert effects == ["o-1"]


async def test_a_failure_clears_the_key_so_the_retry_runs() -> None:
    effects: list[Any] = []
    app = orders_app(effects, retry=Retry(attempts=3, backoff=0.01))
    async with Runtime(app, MemoryBroker()) as rt:
        await rt.send("orders", {"order_id": "o-1", "fail_first": True})
        await until(lambda: "o-1" in effects)
    assert effects == [("fail", "o-1"), "o-1"]


async def test_a_key_in_progress_elsewhere_is_not_run_meanwhile() -> None:
    effects: list[Any] = []
    async with Runtime(orders_app(effects, concurrency=4), MemoryBroker()) as rt:
        await rt.send("orders", {"order_id": "o-1", "sleep": 0.5})
        await rt.send("orders", {"order_id": "o-1", "sleep": 0.5})
        await until(lambda: rt.functions["charge"].dispatcher.metrics.finished == 2)
        m = rt.functions["charge"].dispatcher.metrics
    assert effects == ["o-1"]
    assert m.throttles >= 1 and m.duplicates == 1, "the second was run, not waited for"


async def test_a_key_reused_for_other_content_is_dead_lettered() -> None:
    effects: list[Any] = []
    async with Runtime(orders_app(effects), MemoryBroker()) as rt:
        await rt.send("orders", {"order_id": "o-1", "amount": 5})
        await until(lambda: effects == ["o-1"])
        await rt.send("orders", {"order_id": "o-1", "amount": 500})
        await until(lambda: rt.functions["charge"].dispatcher.metrics.dead_lettered == 1)
        (dead,) = await rt.broker.peek("orders.dlq")
    assert "used before for other content" in dead.headers["swell-dlq-error"]
    assert effects == ["o-1"]


async def test_when_the_store_fails_the_handler_does_not_run() -> None:
    effects: list[Any] = []
    broker = MemoryBroker()
    real_get, real_put = broker.kv.get, broker.kv.put_if_absent
    broken = True

    async def get(key: str) -> Any:
        if broken and key.startswith("swell/idem/"):
            raise BrokerUnavailable("kv down")
        return await real_get(key)

    async def put_if_absent(key: str, value: bytes, ttl_s: float | None = None) -> Any:
        if broken and key.startswith("swell/idem/"):
            raise BrokerUnavailable("kv down")
        return await real_put(key, value, ttl_s)

    broker.kv.get = get  # type: ignore[method-assign]
    broker.kv.put_if_absent = put_if_absent  # type: ignore[method-assign]
    async with Runtime(orders_app(effects), broker) as rt:
        await rt.send("orders", {"order_id": "o-1"})
        await until(lambda: rt.functions["charge"].dispatcher.metrics.throttles >= 1)
        assert effects == [], "the handler ran without its idempotency record"
        broken = False
        await until(lambda: effects == ["o-1"])


async def test_the_block_form_runs_its_part_once() -> None:
    app = App("block")
    q = app.queue("q")
    charged: list[str] = []
    seen: list[Any] = []

    @app.function(q)
    async def h(data: dict[str, str], ctx: Context) -> None:
        async with ctx.idempotent(f"charge-{data['order']}") as once:
            if not once.done:
                charged.append(data["order"])
                once.result = len(charged)
        seen.append(once.result)

    async with Runtime(app, MemoryBroker()) as rt:
        for order in ("a", "a", "b"):
            await rt.send("q", {"order": order})
        await until(lambda: len(seen) == 3)
    assert charged == ["a", "b"] and sorted(seen) == [1, 1, 2]


async def test_skip_idempotency_logs_its_reason_and_lets_a_duplicate_run(
        caplog: pytest.LogCaptureFixture) -> None:
    app = App("skip")
    q = app.queue("q")
    runs: list[int] = []

    @app.function(q, idempotency=Idempotency(key=lambda e: "same"))
    async def h(data: dict[str, int], ctx: Context) -> None:
        runs.append(data["n"])
        ctx.skip_idempotency("price feed changed; recompute")

    async with Runtime(app, MemoryBroker()) as rt:
        await rt.send("q", {"n": 1})
        await until(lambda: runs == [1])
        await rt.send("q", {"n": 1})
        await until(lambda: runs == [1, 1])
    assert "idempotency skipped: price feed changed; recompute" in caplog.text


async def test_two_thousand_events_each_sent_twice_have_one_effect_each(tmp_path: Path) -> None:
    n = 2000
    effect_file = tmp_path / "effects.txt"
    app = App("twice")
    q = app.queue("orders")

    @app.function(q, idempotency=Idempotency(key=order_id))
    def charge(data: dict[str, Any]) -> None:  # a plain effect: a line in a file
        with effect_file.open("a") as f:
            f.write(f"{data['order_id']}\n")

    async with Runtime(app, f"sqlite:///{tmp_path / 's.db'}") as rt:
        from swell import Producer

        producer = Producer(rt.broker, source="/t")
        orders = [f"o-{i}" for i in range(n)]
        for batch in (orders, orders[::-1]):  # each twice, as two different events
            await producer.send_events("orders", [
                producer.event("orders", {"order_id": o}) for o in batch])
        await until(lambda: rt.functions["charge"].dispatcher.metrics.finished >= 2 * n,
                    "every delivery", 120)
        duplicates = rt.functions["charge"].dispatcher.metrics.duplicates
    lines = Counter(effect_file.read_text().split())
    lost = n - len(lines)
    twice = sum(c - 1 for c in lines.values())
    print(f"\n{2 * n} deliveries of {n} orders: effects {sum(lines.values())}, lost {lost}, "
          f"duplicated {twice}; duplicates acked without running: {duplicates}")
    assert lost == 0 and twice == 0
    assert set(lines) == set(orders)


def test_event_gets_the_envelope_for_the_key() -> None:
    idem = Idempotency()
    e: Event[Any] = Event(type="t", source="/s", data={}, idempotencykey="abc")
    assert idem.key_of(e) == "abc"
    assert Idempotency().key_of(Event(type="t", source="/s", id="e-1")) == "e-1"


async def test_a_consumer_group_function_honours_its_idempotency_key() -> None:
    from swell.brokers.base import Message

    app = App("group-idem")
    s = app.stream("s", partitions=2)
    effects: list[str] = []

    @app.function(s.group("g"), idempotency=Idempotency(key=order_id))
    async def h(data: dict[str, str]) -> None:
        effects.append(data["order_id"])

    async with Runtime(app, MemoryBroker()) as rt:
        from swell import Producer

        producer = Producer(rt.broker, source="/t")
        await rt.broker.append("s", [  # each order twice, as two events
            Message(body=producer.event("s", {"order_id": f"o-{i % 5}"}, key=f"o-{i % 5}").to_json(),
                    key=f"o-{i % 5}") for i in range(10)])
        await until(lambda: rt.functions["h"].dispatcher.metrics.finished == 10, "every event")
        assert rt.functions["h"].dispatcher.metrics.duplicates == 5
    assert sorted(effects) == [f"o-{i}" for i in range(5)]
