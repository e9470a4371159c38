"""The Runtime and its Dispatchers: payload validation, settling, retries, leases, concurrency, stop.

Most tests run on the memory broker; the ones about leases and wake-ups also run on SQLite.
"""

import asyncio
import dataclasses
import inspect
import itertools
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest
from typing_extensions import TypedDict

import swell
from support.eventually import until
from support.running import running
from swell import App, AppError, Broker, ConfigError, Context, Event, Message, Retry, Runtime
from swell.brokers.base import H_ATTEMPTS, H_ERROR, H_REASON, Delivery, Receipt
from swell.brokers.memory import MemoryBroker
from swell.brokers.sqlite import SqliteBroker
from swell.core.config import seconds
from swell.runtime.context import ContextBase, SyncContext


class Order(pydantic.BaseModel):
    id: str
    amount: float


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Item(TypedDict):
    sku: str
    qty: int


# -- helpers ---------------------------------------------------------------------------------------
@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    b = MemoryBroker()
    yield b
    await b.close()


@pytest.fixture(params=["memory", "sqlite"])
async def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    b: Broker = MemoryBroker() if request.param == "memory" else SqliteBroker(str(tmp_path / "s.db"))
    yield b
    await b.close()




async def dead_letters(broker: Broker, queue: str, n: int = 1) -> list[Delivery]:
    """Wait for ``n`` messages in ``queue``'s dead-letter queue and return them."""
    async def there() -> bool:
        return (await broker.stats(f"{queue}.dlq")).total >= n

    await until(there, f"{n} dead letter(s) of {queue}")
    return await broker.peek(f"{queue}.dlq")


async def empty(broker: Broker, queue: str) -> bool:
    return (await broker.stats(queue)).total == 0


# -- payload types ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("annotation", "sent", "expected"), [
    (Order, {"id": "o-1", "amount": "12.5"}, Order(id="o-1", amount=12.5)),
    (Point, {"x": 1, "y": "2"}, Point(1, 2)),
    (Item, {"sku": "a-1", "qty": "3"}, {"sku": "a-1", "qty": 3}),
    (dict, {"nested": [1, {"b": None}]}, {"nested": [1, {"b": None}]}),
], ids=["pydantic", "dataclass", "typeddict", "dict"])
async def test_payload_is_validated_against_the_annotation(
        broker: MemoryBroker, annotation: Any, sent: Any, expected: Any) -> None:
    app = App("t")
    app.queue("in")
    got: list[Any] = []

    async def handle(payload: Any) -> None:
        got.append(payload)

    handle.__annotations__["payload"] = annotation
    app.function("in")(handle)

    async with running(app, broker) as rt:
        await rt.send("in", sent)
        await until(lambda: bool(got), "the handler")

    assert got == [expected]
    assert type(got[0]) is type(expected)


async def test_bytes_payload_gets_the_json_encoded_data(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    got: list[bytes] = []

    @app.function("in")
    async def handle(body: bytes) -> None:
        got.append(body)

    async with running(app, broker) as rt:
        await rt.send("in", {"id": "o-1", "n": [1, 2]})
        await until(lambda: bool(got), "the handler")

    assert isinstance(got[0], bytes)
    assert json.loads(got[0]) == {"id": "o-1", "n": [1, 2]}


async def test_bytes_payload_of_binary_data_is_the_bytes_themselves(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    got: list[bytes] = []

    @app.function("in")
    async def handle(body: bytes) -> None:
        got.append(body)

    async with running(app, broker) as rt:
        await rt.send("in", b"\x00\xffraw", datacontenttype="application/octet-stream")
        await until(lambda: bool(got), "the handler")

    assert got == [b"\x00\xffraw"]


async def test_bytes_payload_of_text_data_is_the_text_not_a_json_string(broker: MemoryBroker) -> None:
    # README: ``bytes`` gets "the raw data"; for application/xml that is the document itself
    app = App("t")
    app.queue("in")
    got: list[bytes] = []

    @app.function("in")
    async def handle(body: bytes) -> None:
        got.append(body)

    async with running(app, broker) as rt:
        await rt.send("in", '<much wow="xml"/>', datacontenttype="application/xml")
        await until(lambda: bool(got), "the handler")

    assert got == [b'<much wow="xml"/>']


async def test_event_annotation_gets_the_envelope_with_data_validated(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    got: list[Event[Order]] = []

    @app.function("in")
    async def handle(event: Event[Order]) -> None:
        got.append(event)

    async with running(app, broker) as rt:
        sent_id = await rt.send("in", {"id": "o-1", "amount": "3"}, subject="orders/o-1",
                                key="customer-7")
        await until(lambda: bool(got), "the handler")

    event = got[0]
    assert isinstance(event, Event)
    assert event.data == Order(id="o-1", amount=3.0)
    assert (event.id, event.type, event.subject, event.key) == (sent_id, "swell.in", "orders/o-1",
                                                                 "customer-7")
    assert event.source == "/swell/t"


async def test_event_annotation_with_invalid_data_is_dead_lettered(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    calls: list[object] = []

    @app.function("in")
    async def handle(event: Event[Order]) -> None:
        calls.append(event)

    async with running(app, broker) as rt:
        await rt.send("in", {"id": "o-1"})
        (dead,) = await dead_letters(broker, "in")

    assert dead.headers[H_REASON] == "invalid payload"
    assert "amount" in dead.headers[H_ERROR]
    assert calls == []


# -- the Context -----------------------------------------------------------------------------------
async def test_context_gives_attempt_deadline_logger_publish_and_extend(
        broker: MemoryBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="swell.handler")
    app = App("t")
    app.queue("in")
    app.queue("out")
    seen: dict[str, Any] = {}

    @app.function("in", timeout=5)
    async def handle(order: Order, ctx: Context) -> None:
        seen.update(attempt=ctx.attempt, deadline=ctx.deadline, remaining=ctx.remaining_s,
                    now=asyncio.get_running_loop().time(), event_id=ctx.event.id,
                    function=ctx.function)
        ctx.logger.info("charging %s", order.id)
        seen["published"] = await ctx.publish("out", {"charged": order.id})
        seen["extended"] = await ctx.extend(10)

    async with running(app, broker) as rt:
        sent_id = await rt.send("in", {"id": "o-1", "amount": 1})
        await until(lambda: "extended" in seen, "the handler")
        (onward,) = [Event.from_json(d.body) for d in await broker.peek("out")]

    assert seen["attempt"] == 1
    assert seen["event_id"] == sent_id
    assert seen["function"] == "handle"
    assert 0 < seen["remaining"] <= 5
    assert seen["deadline"] == pytest.approx(seen["now"] + seen["remaining"], abs=0.5)
    assert seen["extended"] is True
    assert onward.data == {"charged": "o-1"}
    assert onward.id == seen["published"]
    assert onward.correlationid == sent_id
    assert onward.type == "swell.out"
    (record,) = [r for r in caplog.records if r.getMessage() == "charging o-1"]
    assert (record.function, record.event_id, record.attempt) == ("handle", sent_id, 1)  # type: ignore[attr-defined]


async def test_context_without_timeout_has_no_deadline(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    seen: list[tuple[float | None, float | None]] = []

    @app.function("in")
    async def handle(data: dict[str, Any], ctx: Context) -> None:
        seen.append((ctx.deadline, ctx.remaining_s))

    async with running(app, broker) as rt:
        await rt.send("in", {})
        await until(lambda: bool(seen), "the handler")

    assert seen == [(None, None)]


async def test_publish_keeps_an_existing_correlation_id_and_trace(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    app.queue("out")
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    @app.function("in")
    async def handle(data: dict[str, Any], ctx: Context) -> None:
        await ctx.publish("out", data)

    async with running(app, broker) as rt:
        await rt.send("in", {"n": 1}, correlationid="saga-9", traceparent=trace)
        await until(lambda: empty(broker, "in"), "the first event to be acked")
        (onward,) = [Event.from_json(d.body) for d in await broker.peek("out")]

    assert (onward.correlationid, onward.traceparent, onward.data) == ("saga-9", trace, {"n": 1})


# -- sync handlers ---------------------------------------------------------------------------------
async def test_sync_handler_runs_in_a_thread_and_publishes_without_await(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    app.queue("out")
    threads: list[threading.Thread] = []

    @app.function("in")
    def handle(order: Order, ctx: Context) -> None:
        threads.append(threading.current_thread())
        given: ContextBase = ctx  # annotated Context, a plain def is given a SyncContext
        assert isinstance(given, SyncContext)
        given.publish("out", {"charged": order.id})
        given.extend(10)

    async with running(app, broker) as rt:
        sent_id = await rt.send("in", {"id": "o-1", "amount": 1})
        await until(lambda: empty(broker, "in"), "the event to be acked")
        (onward,) = [Event.from_json(d.body) for d in await broker.peek("out")]

    assert len(threads) == 1
    assert threads[0] is not threading.main_thread()
    assert threads[0] is not threading.current_thread()
    assert onward.data == {"charged": "o-1"}
    assert onward.correlationid == sent_id


# -- settling --------------------------------------------------------------------------------------
async def test_success_acks(any_broker: Broker) -> None:
    app = App("t")
    app.queue("in")
    handled: list[int] = []

    @app.function("in", concurrency=4)
    async def handle(data: dict[str, int]) -> None:
        handled.append(data["n"])

    async with running(app, any_broker) as rt:
        for n in range(20):
            await rt.send("in", {"n": n})
        await until(lambda: empty(any_broker, "in"), "every event to be acked")

    assert sorted(handled) == list(range(20))
    assert (await any_broker.stats("in.dlq")).total == 0


async def test_an_exception_retries_with_backoff_then_dead_letters(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in", max_receives=10)
    attempts: list[tuple[int, float]] = []

    @app.function("in", retry=Retry(attempts=3, backoff=0.1, jitter=False))
    async def handle(data: dict[str, Any], ctx: Context) -> None:
        attempts.append((ctx.attempt, time.monotonic()))
        raise ValueError(f"card declined on try {ctx.attempt}")

    async with running(app, broker) as rt:
        await rt.send("in", {"id": "o-1"})
        (dead,) = await dead_letters(broker, "in")

    assert [a for a, _ in attempts] == [1, 2, 3]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.08 and gaps[1] >= 0.16  # 0.1 s then 0.2 s: the backoff doubles
    assert dead.headers[H_REASON].startswith("failed after")
    assert dead.headers[H_REASON] == "failed after 3 attempt(s)"
    assert dead.headers[H_ATTEMPTS] == "3"
    assert "ValueError: card declined on try 3" in dead.headers[H_ERROR]
    assert await empty(broker, "in")


async def test_attempts_default_to_the_queues_max_receives(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in", max_receives=2)
    attempts: list[int] = []

    @app.function("in", retry=Retry(backoff=0.01))
    async def handle(data: dict[str, Any], ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("down")

    async with running(app, broker) as rt:
        await rt.send("in", {})
        (dead,) = await dead_letters(broker, "in")

    assert attempts == [1, 2]
    assert dead.headers[H_REASON] == "failed after 2 attempt(s)"


async def test_a_retry_that_succeeds_is_acked(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    attempts: list[int] = []

    @app.function("in", retry=Retry(backoff=0.01))
    async def handle(data: dict[str, Any], ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("hiccup")

    async with running(app, broker) as rt:
        await rt.send("in", {})
        await until(lambda: empty(broker, "in"), "the event to be acked")

    assert attempts == [1, 2]
    assert (await broker.stats("in.dlq")).total == 0


async def test_an_invalid_payload_is_dead_lettered_at_once(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    calls: list[Order] = []

    @app.function("in")
    async def handle(order: Order) -> None:
        calls.append(order)

    async with running(app, broker) as rt:
        await rt.send("in", {"id": "o-1", "amount": "lots"})
        (dead,) = await dead_letters(broker, "in")

    assert dead.headers[H_REASON] == "invalid payload"
    assert dead.headers[H_ATTEMPTS] == "1"
    assert "amount" in dead.headers[H_ERROR]
    assert "https://errors.pydantic.dev" not in dead.headers[H_ERROR]
    assert calls == []
    assert await empty(broker, "in")


@pytest.mark.parametrize("body", [b"not json at all", b"[1, 2, 3]", b'{"specversion": "1.0"}',
                                  b'{"specversion": "0.3", "id": "1", "source": "/s", "type": "t"}'],
                         ids=["not-json", "array", "no-attributes", "old-spec"])
async def test_a_body_that_is_not_a_cloudevent_is_dead_lettered(broker: MemoryBroker,
                                                                 body: bytes) -> None:
    app = App("t")
    app.queue("in")
    calls: list[object] = []

    @app.function("in")
    async def handle(data: Any) -> None:
        calls.append(data)

    async with running(app, broker):
        await broker.send("in", [Message(body=body)])
        (dead,) = await dead_letters(broker, "in")

    assert dead.headers[H_REASON] == "malformed event"
    assert dead.headers[H_ATTEMPTS] == "1"
    assert dead.body == body
    assert calls == []


async def test_a_handler_past_its_timeout_fails(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    finished: list[bool] = []

    @app.function("in", timeout="100ms", retry=Retry(attempts=1))
    async def handle(data: dict[str, Any]) -> None:
        await asyncio.sleep(5)
        finished.append(True)

    async with running(app, broker) as rt:
        await rt.send("in", {})
        (dead,) = await dead_letters(broker, "in")

    assert dead.headers[H_REASON] == "failed after 1 attempt(s)"
    assert dead.headers[H_ERROR] == "timed out after 0.1s"
    assert finished == []


async def test_a_handler_that_raises_timeouterror_itself_is_not_reported_as_timed_out(
        broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")

    @app.function("in", timeout=30, retry=Retry(attempts=1))
    async def handle(data: dict[str, Any]) -> None:
        raise TimeoutError("upstream took too long")

    async with running(app, broker) as rt:
        await rt.send("in", {})
        (dead,) = await dead_letters(broker, "in")

    assert "upstream took too long" in dead.headers[H_ERROR]


async def test_a_timed_out_sync_handler_does_not_use_up_the_next_events_time(
        broker: MemoryBroker) -> None:
    # a thread cannot be stopped: the timed-out call runs on; the next event must still get a
    # thread and its whole timeout, not fail without ever running
    app = App("t")
    app.queue("in")
    ran: list[int] = []

    @app.function("in", concurrency=1, timeout="200ms", retry=Retry(attempts=1))
    def handle(data: dict[str, int]) -> None:
        if data["n"] == 0:
            time.sleep(0.6)
        ran.append(data["n"])

    async with running(app, broker) as rt:
        await rt.send("in", {"n": 0})
        (first,) = await dead_letters(broker, "in")
        await rt.send("in", {"n": 1})
        await until(lambda: empty(broker, "in"), "the second event to be settled")
        await until(lambda: 0 in ran, "the timed-out call to return")

    assert first.headers[H_ERROR] == "timed out after 0.2s"
    assert 1 in ran
    assert (await broker.stats("in.dlq")).total == 1


# -- leases, concurrency, wake-ups -----------------------------------------------------------------
async def test_a_long_handler_keeps_its_lease(any_broker: Broker) -> None:
    app = App("t")
    app.queue("in", visibility_timeout="300ms")
    calls: list[int] = []

    @app.function("in", concurrency=4)
    async def handle(data: dict[str, Any], ctx: Context) -> None:
        calls.append(ctx.attempt)
        await asyncio.sleep(0.9)  # three visibility timeouts

    async with running(app, any_broker) as rt:
        await rt.send("in", {})
        await until(lambda: bool(calls), "the handler to start")
        await until(lambda: empty(any_broker, "in"), "the event to be acked")

    assert calls == [1]


async def test_concurrency_limit_is_respected(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    now = peak = done = 0

    @app.function("in", concurrency=3)
    async def handle(data: dict[str, Any]) -> None:
        nonlocal now, peak, done
        now += 1
        peak = max(peak, now)
        await asyncio.sleep(0.05)
        now -= 1
        done += 1

    async with running(app, broker) as rt:
        for n in range(12):
            await rt.send("in", {"n": n})
        await until(lambda: done == 12, "every event to be handled")

    assert peak == 3


async def test_concurrency_limit_holds_for_sync_handlers(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    lock = threading.Lock()
    now = peak = done = 0

    @app.function("in", concurrency=2)
    def handle(data: dict[str, Any]) -> None:
        nonlocal now, peak, done
        with lock:
            now += 1
            peak = max(peak, now)
        time.sleep(0.05)
        with lock:
            now -= 1
            done += 1

    async with running(app, broker) as rt:
        for n in range(8):
            await rt.send("in", {"n": n})
        await until(lambda: done == 8, "every event to be handled")

    assert peak == 2


async def test_a_send_wakes_the_idle_consumer_at_once(any_broker: Broker) -> None:
    app = App("t")
    app.queue("in")
    started: list[float] = []

    @app.function("in")
    async def handle(data: dict[str, Any]) -> None:
        started.append(time.monotonic())

    async with running(app, any_broker) as rt:
        await asyncio.sleep(0.3)  # the consumer is now parked in a receive that waits 5 s
        sent_at = time.monotonic()
        await rt.send("in", {})
        await until(lambda: bool(started), "the handler", timeout_s=4)

    assert started[0] - sent_at < 0.5


# -- graceful stop ---------------------------------------------------------------------------------
async def test_stop_lets_running_handlers_finish_within_grace(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    started: list[int] = []
    finished: list[int] = []

    @app.function("in", concurrency=4)
    async def handle(data: dict[str, int]) -> None:
        started.append(data["n"])
        await asyncio.sleep(0.3)
        finished.append(data["n"])

    rt = Runtime(app, broker)
    await rt.start()
    for n in range(4):
        await rt.send("in", {"n": n})
    await until(lambda: len(started) == 4, "four handlers to start")
    t0 = time.monotonic()
    await rt.stop(grace_s=20)

    assert sorted(finished) == [0, 1, 2, 3]
    assert await empty(broker, "in")  # acked before stop returned
    assert time.monotonic() - t0 < 10  # it returns when the work is done, not after the grace


class SlowAckBroker(MemoryBroker):
    """A memory broker whose acks take a round trip, as they do on any networked broker."""

    async def ack(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        await asyncio.sleep(0.05)
        return await super().ack(receipts)


async def test_stop_does_not_drop_acks_still_being_stored() -> None:
    broker = SlowAckBroker()
    app = App("t")
    app.queue("in", visibility_timeout=60)
    started: list[int] = []
    finished: list[int] = []

    @app.function("in")
    async def handle(data: dict[str, int]) -> None:
        started.append(data["n"])
        await asyncio.sleep(0.1)
        finished.append(data["n"])

    rt = Runtime(app, broker)
    await rt.start()
    await rt.send("in", {"n": 1})
    await until(lambda: bool(started), "the handler to start")
    await rt.stop(grace_s=20)  # the handler finishes during the grace, its ack then goes out

    stats = await broker.stats("in")
    await broker.close()
    assert finished == [1]
    assert (stats.depth, stats.in_flight) == (0, 0)  # acked, not left leased for 60 s


async def test_stop_with_a_short_grace_releases_unfinished_work_at_once(any_broker: Broker) -> None:
    app = App("t")
    app.queue("in", visibility_timeout=60)
    counts: list[int] = []
    finished: list[int] = []

    @app.function("in", concurrency=3)
    async def handle(data: dict[str, int], ctx: Context) -> None:
        counts.append(ctx.attempt)
        await asyncio.sleep(30)
        finished.append(data["n"])

    rt = Runtime(app, any_broker)
    await rt.start()
    for n in range(3):
        await rt.send("in", {"n": n})
    await until(lambda: len(counts) == 3, "three handlers to start")
    assert (await any_broker.stats("in")).in_flight == 3
    await rt.stop(grace_s=0.1)

    stats = await any_broker.stats("in")
    again = await any_broker.receive("in", 10, wait_s=0)
    assert finished == []
    assert counts == [1, 1, 1]
    assert (stats.depth, stats.in_flight) == (3, 0)
    # handed back at a graceful stop: not an attempt, so the next receive is again the first
    assert sorted(d.receive_count for d in again) == [1, 1, 1]


async def test_runtime_opened_from_a_url_closes_its_broker(tmp_path: Path) -> None:
    app = App("t")
    app.queue("in")
    got: list[dict[str, Any]] = []

    @app.function("in")
    async def handle(data: dict[str, Any]) -> None:
        got.append(data)

    async with Runtime(app, f"sqlite:///{tmp_path / 's.db'}") as rt:
        await rt.send("in", {"via": "url"})
        await until(lambda: bool(got), "the handler")

    assert got == [{"via": "url"}]
    check = SqliteBroker(str(tmp_path / "s.db"))  # the runtime's own broker is closed by now
    try:
        assert await empty(check, "in")
    finally:
        await check.close()


# -- Retry -----------------------------------------------------------------------------------------
def test_retry_delay_doubles_up_to_the_cap() -> None:
    retry = Retry(backoff=1, max_backoff=10, jitter=False)

    assert [retry.delay_s(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_retry_jitter_stays_in_the_upper_half() -> None:
    retry = Retry(backoff="250ms", max_backoff="1s")

    third = [retry.delay_s(3) for _ in range(300)]  # nominal 1 s
    capped = [retry.delay_s(20) for _ in range(300)]  # capped at 1 s

    assert all(0.5 <= d <= 1.0 for d in third + capped)
    assert len(set(third)) > 1
    assert min(third) < 0.75 < max(third)  # spread over the half, not stuck at one end


@pytest.mark.parametrize(("attempts", "max_receives", "allowed"), [
    (None, 5, 5), (3, 5, 3), (10, 5, 5), (3, 0, 3), (None, 0, 2**31), (1, 1, 1)])
def test_retry_allowed_attempts(attempts: int | None, max_receives: int, allowed: int) -> None:
    assert Retry(attempts=attempts).allowed(max_receives) == allowed


def test_retry_refuses_fewer_than_one_attempt() -> None:
    with pytest.raises(ConfigError):
        Retry(attempts=0)


# -- declaring an app ------------------------------------------------------------------------------
def test_function_on_an_undeclared_queue_is_an_app_error() -> None:
    app = App("t")

    with pytest.raises(AppError, match="nope"):
        app.function("nope")


def test_duplicate_function_names_are_an_app_error() -> None:
    app = App("t")
    q = app.queue("in")

    @app.function(q)
    async def handle(data: dict[str, Any]) -> None: ...

    with pytest.raises(AppError, match="handle"):
        @app.function(q, name="handle")
        async def other(data: dict[str, Any]) -> None: ...


@pytest.mark.parametrize("concurrency", [0, -1])
def test_concurrency_below_one_is_an_app_error(concurrency: int) -> None:
    app = App("t")
    app.queue("in")

    with pytest.raises(AppError, match="concurrency"):
        app.function("in", concurrency=concurrency)


def test_a_handler_with_two_payload_parameters_is_an_app_error() -> None:
    app = App("t")
    app.queue("in")

    with pytest.raises(AppError, match="extra"):
        @app.function("in")
        async def handle(order: Order, extra: dict[str, Any], ctx: Context) -> None: ...


def test_a_queue_declared_twice_differently_is_an_app_error() -> None:
    app = App("t")
    app.queue("in", max_receives=3)
    app.queue("in", max_receives=3)

    with pytest.raises(AppError, match="in"):
        app.queue("in", max_receives=4)


def test_unresolvable_annotations_are_an_app_error() -> None:
    app = App("t")
    app.queue("in")

    with pytest.raises(AppError, match="annotations"):
        @app.function("in")
        async def handle(order: "NoSuchType") -> None: ...  # type: ignore[name-defined]  # noqa: F821


# -- public API and configuration ------------------------------------------------------------------
def test_every_name_in_all_exists_and_nothing_else_is_public() -> None:
    for name in swell.__all__:
        assert hasattr(swell, name), name
    public = {n for n, v in vars(swell).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public == set(swell.__all__)
    assert len(swell.__all__) == len(set(swell.__all__))


@pytest.mark.slow
def test_import_swell_needs_no_optional_dependency() -> None:
    code = ("import swell, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'nats','redis','psycopg','prometheus_client','uvloop'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         check=True)

    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("value", "expected"), [
    ("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), (" 1.5 s ", 1.5), ("2", 2.0),
    (2, 2.0), (0.5, 0.5), (timedelta(minutes=2), 120.0), ("0", 0.0)])
def test_seconds_parses_durations(value: Any, expected: float) -> None:
    assert seconds(value) == expected


@pytest.mark.parametrize("value", ["abc", "-5s", -1, timedelta(seconds=-1), "5 minutes", "", True])
def test_seconds_refuses_what_is_not_a_duration(value: Any) -> None:
    with pytest.raises(ConfigError, match="timeout"):
        seconds(value, name="timeout")
