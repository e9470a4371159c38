"""The queue conformance suite: every test runs against every backend in ``conftest.BACKENDS``.

Durations are written in test time units (``timing.s(10)``) and time moves with
``await timing.advance(units)``: on the embedded backends that moves a ``ManualClock`` shared by the
test and the broker (a unit is a second and nothing sleeps); on a server backend whose timers run
on the server's clock it sleeps for real (a unit is a fraction of a second). Where a server makes
something due on its own clock, a receive that expects it waits up to ``timing.grace_s`` (zero on a
manual clock). Only the wake-up tests wait for real otherwise, briefly and with a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from swell.brokers.base import (
    DLQ_HEADERS,
    H_AT,
    H_ATTEMPTS,
    H_ERROR,
    H_REASON,
    H_SOURCE,
    REASON_MAX_RECEIVES,
    Broker,
    Delivery,
    KiB,
    Message,
    QueueSpec,
    QueueStats,
)
from swell.core.errors import MessageTooLarge, UnknownQueue

if TYPE_CHECKING:
    from conftest import Timing  # the fixture's type; pytest imports conftest itself

Declare = Callable[..., Awaitable[QueueSpec]]
T = TypeVar("T")


def msgs(*bodies: bytes) -> list[Message]:
    return [Message(body=b) for b in bodies]


def bodies(deliveries: list[Delivery]) -> list[bytes]:
    return [d.body for d in deliveries]


async def receive_one(broker: Broker, queue: str = "jobs", **kwargs: Any) -> Delivery:
    """Exactly one message. Pass ``wait_s=timing.grace_s`` where it became due as time passed."""
    got = await broker.receive(queue, 10, **kwargs)
    assert len(got) == 1, got
    return got[0]


async def drain(broker: Broker, queue: str, batch: int) -> list[Delivery]:
    out: list[Delivery] = []
    for _ in range(100):
        got = await broker.receive(queue, batch)
        if not got:
            return out
        assert len(got) <= batch
        out.extend(got)
    raise AssertionError("the queue never emptied")


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, T]) -> AsyncIterator[asyncio.Task[T]]:
    """Run ``coro`` as a task; cancel it on the way out if the test did not await it."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- send and receive ---------------------------------------------------------------------------


async def test_send_receive_round_trip(
    broker: Broker, declare: Declare, timing: Timing
) -> None:
    await declare()
    sent_at = timing.now()
    assert await broker.send("jobs", [Message(body=b"hello", headers={"k": "v"})]) == [True]
    await timing.advance(3)

    d = await receive_one(broker)

    assert d.body == b"hello"
    assert d.headers == {"k": "v"}
    assert d.receive_count == 1
    assert d.enqueued_at == pytest.approx(sent_at, abs=timing.eps_s)
    assert d.first_received_at == pytest.approx(sent_at + timing.s(3), abs=timing.eps_s)
    assert d.receipt.queue == "jobs"


async def test_message_without_headers_has_empty_headers(
    broker: Broker, declare: Declare
) -> None:
    await declare()
    await broker.send("jobs", msgs(b"bare"))

    assert (await receive_one(broker)).headers == {}


async def test_batch_order_is_preserved(broker: Broker, declare: Declare) -> None:
    await declare()
    first = [f"m{i:02}".encode() for i in range(10)]
    await broker.send("jobs", msgs(*first))
    await broker.send("jobs", msgs(b"m10", b"m11"))

    got = await drain(broker, "jobs", batch=4)

    assert bodies(got) == [*first, b"m10", b"m11"]


async def test_receive_respects_max_messages(broker: Broker, declare: Declare) -> None:
    await declare()
    await broker.send("jobs", msgs(b"a", b"b", b"c", b"d", b"e"))

    assert len(await broker.receive("jobs", 2)) == 2
    assert len(await broker.receive("jobs", 10)) == 3


async def test_lease_hides_message_from_other_receivers(
    broker: Broker, declare: Declare
) -> None:
    await declare()
    await broker.send("jobs", msgs(b"only"))

    await receive_one(broker)

    assert await broker.receive("jobs", 10) == []
    stats = await broker.stats("jobs")
    assert (stats.depth, stats.in_flight) == (0, 1)


async def test_visibility_expiry_redelivers_with_new_receipt(
    broker: Broker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    await broker.send("jobs", msgs(b"x"))
    first = await receive_one(broker)
    received_at = timing.now()

    await timing.advance(9)
    assert await broker.receive("jobs", 10) == []
    await timing.advance(2)
    again = await receive_one(broker, wait_s=timing.grace_s)

    assert again.body == b"x"
    assert again.receive_count == 2
    assert again.receipt != first.receipt
    assert again.first_received_at == pytest.approx(received_at, abs=timing.eps_s)


async def test_receive_timeout_shorter_than_queue_default(
    broker: Broker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(30))
    await broker.send("jobs", msgs(b"x"))
    await receive_one(broker, visibility_timeout_s=timing.s(5))

    await timing.advance(6)

    assert (await receive_one(broker, wait_s=timing.grace_s)).receive_count == 2


async def test_receive_timeout_longer_than_queue_default(
    broker: Broker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(30))
    await broker.send("jobs", msgs(b"x"))
    await receive_one(broker, visibility_timeout_s=timing.s(100))

    await timing.advance(31)
    assert await broker.receive("jobs", 10) == []
    await timing.advance(70)
    assert (await receive_one(broker, wait_s=timing.grace_s)).receive_count == 2


async def test_delayed_send_is_invisible_until_due(
    broker: Broker, declare: Declare, timing: Timing
) -> None:
    await declare()
    sent_at = timing.now()
    await broker.send("jobs", [Message(body=b"later", delay_s=timing.s(10))])

    assert await broker.receive("jobs", 10) == []
    assert (await broker.stats("jobs")).delayed == 1
    await timing.advance(9)
    assert await broker.receive("jobs", 10) == []
    await timing.advance(2)
    d = await receive_one(broker, wait_s=timing.grace_s)
    assert d.body == b"later"
    assert d.enqueued_at == pytest.approx(sent_at, abs=timing.eps_s)


async def test_receive_wait_zero_on_empty_queue_returns_at_once(
    broker: Broker, declare: Declare
) -> None:
    await declare()

    async with asyncio.timeout(1):
        assert await broker.receive("jobs", 10, wait_s=0) == []


async def test_send_wakes_a_waiting_receive(broker: Broker, declare: Declare) -> None:
    # The manual clock never moves here: only the send can end the 5 s wait in time.
    await declare()
    async with background(broker.receive("jobs", 10, wait_s=5)) as waiting:
        await asyncio.sleep(0.05)  # real: let the receive start waiting
        assert not waiting.done(), "receive with wait_s=5 returned before anything was sent"

        await broker.send("jobs", msgs(b"wake"))

        async with asyncio.timeout(2):
            got = await waiting
    assert bodies(got) == [b"wake"]


# -- ack, release, extend -----------------------------------------------------------------------


async def test_ack_deletes(broker: Broker, declare: Declare, timing: Timing) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    await broker.send("jobs", msgs(b"x"))
    d = await receive_one(broker)

    assert await broker.ack([d.receipt]) == []

    assert (await broker.stats("jobs")).total == 0
    await timing.advance(11)
    assert await broker.receive("jobs", 10) == []


async def test_ack_with_stale_receipt_is_refused(
    broker: Broker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    await broker.send("jobs", msgs(b"x"))
    old = await receive_one(broker)
    await timing.advance(11)
    new = await receive_one(broker, wait_s=timing.grace_s)

    assert await broker.ack([old.receipt]) == [old.receipt]

    assert (await broker.stats("jobs")).in_flight == 1
    assert await broker.ack([old.receipt, new.receipt]) == [old.receipt]
    assert (await broker.stats("jobs")).total == 0


async def test_receipts_are_stale_after_ack(broker: Broker, declare: Declare) -> None:
    await declare()
    await broker.send("jobs", msgs(b"x"))
    d = await receive_one(broker)
    await broker.ack([d.receipt])

    assert await broker.ack([d.receipt]) == [d.receipt]
    assert await broker.release([d.receipt]) == [d.receipt]
    assert await broker.extend([d.receipt], 30) == [d.receipt]
    assert await broker.dead_letter(d.receipt, "late") is False
    assert (await broker.stats("jobs")).total == 0


async def test_release_makes_message_visible_now(broker: Broker, declare: Declare) -> None:
    await declare()
    await broker.send("jobs", msgs(b"x"))
    d = await receive_one(broker)

    assert await broker.release([d.receipt]) == []

    assert (await receive_one(broker)).receive_count == 2


async def test_release_with_delay(broker: Broker, declare: Declare, timing: Timing) -> None:
    await declare()
    await broker.send("jobs", msgs(b"x"))
    d = await receive_one(broker)

    assert await broker.release([d.receipt], delay_s=timing.s(10)) == []

    stats = await broker.stats("jobs")
    assert (stats.depth, stats.in_flight, stats.delayed) == (0, 0, 1)
    assert await broker.receive("jobs", 10) == []
    await timing.advance(11)
    assert (await receive_one(broker, wait_s=timing.grace_s)).receive_count == 2


async def test_release_without_counting_the_receive(
    broker: Broker, declare: Declare, timing: Timing
) -> None:
    # A throttled attempt is not a failed one: it must not bring the message closer to its DLQ.
    await declare(max_receives=1)
    await broker.send("jobs", msgs(b"x"))
    for _ in range(3):
        d = await receive_one(broker)
        assert d.receive_count == 1
        assert await broker.release([d.receipt], count=False) == []

    assert (await broker.stats("jobs.dlq")).total == 0


async def test_release_and_extend_with_stale_receipt_are_refused(
    broker: Broker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    await broker.send("jobs", msgs(b"x"))
    old = await receive_one(broker)
    await timing.advance(11)
    new = await receive_one(broker, wait_s=timing.grace_s)

    assert await broker.release([old.receipt]) == [old.receipt]
    assert await broker.extend([old.receipt], timing.s(60)) == [old.receipt]

    assert await broker.receive("jobs", 10) == []  # still leased by ``new``
    await timing.advance(11)  # the refused extend did not lengthen ``new``'s lease
    assert (await receive_one(broker, wait_s=timing.grace_s)).receive_count == 3
    assert await broker.ack([new.receipt]) == [new.receipt]


async def test_extend_keeps_the_lease(
    broker: Broker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    await broker.send("jobs", msgs(b"x"))
    d = await receive_one(broker)
    await timing.advance(8)

    assert await broker.extend([d.receipt], timing.s(20)) == []  # now held until t+28

    await timing.advance(8)
    assert await broker.receive("jobs", 10) == []
    assert await broker.ack([d.receipt]) == []
    assert (await broker.stats("jobs")).total == 0


async def test_extend_runs_from_now(broker: Broker, declare: Declare, timing: Timing) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    await broker.send("jobs", msgs(b"x"))
    d = await receive_one(broker)
    await timing.advance(8)
    await broker.extend([d.receipt], timing.s(20))

    await timing.advance(19)
    assert await broker.receive("jobs", 10) == []
    await timing.advance(2)
    assert (await receive_one(broker, wait_s=timing.grace_s)).receive_count == 2


# -- dead letters -------------------------------------------------------------------------------


async def test_dead_letter_after_max_receives(
    broker: Broker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(10), max_receives=3)
    await broker.send("jobs", [Message(body=b"poison", headers={"k": "v"})])
    for attempt in range(1, 4):
        assert (await receive_one(broker, wait_s=timing.grace_s)).receive_count == attempt
        await timing.advance(11)

    assert await broker.receive("jobs", 10) == []

    assert (await broker.stats("jobs")).total == 0
    dead = await receive_one(broker, "jobs.dlq")
    assert dead.body == b"poison"
    assert dead.headers["k"] == "v"
    assert dead.headers[H_REASON] == REASON_MAX_RECEIVES
    assert dead.headers[H_ATTEMPTS] == "3"
    assert dead.headers[H_SOURCE] == "jobs"


async def test_dead_lettering_does_not_hide_ready_messages(
    broker: Broker, declare: Declare, timing: Timing
) -> None:
    # The receive that moves a message to the DLQ still leases what is ready behind it.
    await declare(visibility_timeout_s=timing.s(10), max_receives=1)
    await broker.send("jobs", msgs(b"poison"))
    await receive_one(broker)
    await timing.advance(11)
    await broker.send("jobs", msgs(b"good"))

    assert bodies(await broker.receive("jobs", 1)) == [b"good"]
    assert (await broker.stats("jobs.dlq")).depth == 1


async def test_explicit_dead_letter(broker: Broker, declare: Declare, timing: Timing) -> None:
    await declare()
    await broker.send("jobs", [Message(body=b"bad", headers={"k": "v"})])
    d = await receive_one(broker)

    assert await broker.dead_letter(d.receipt, "invalid payload", "ValueError: boom") is True

    assert (await broker.stats("jobs")).total == 0
    dead = await receive_one(broker, "jobs.dlq")
    assert dead.body == b"bad"
    assert dead.headers["k"] == "v"
    assert dead.headers[H_REASON] == "invalid payload"
    assert dead.headers[H_ERROR] == "ValueError: boom"
    assert dead.headers[H_SOURCE] == "jobs"
    assert dead.headers[H_ATTEMPTS] == "1"
    assert float(dead.headers[H_AT]) == pytest.approx(timing.now(), abs=timing.eps_s)


async def test_custom_dead_letter_queue(broker: Broker, declare: Declare) -> None:
    await declare(dead_letter="graveyard")
    await broker.send("jobs", msgs(b"bad"))
    d = await receive_one(broker)

    assert await broker.dead_letter(d.receipt, "nope") is True

    names = {s.name for s in await broker.queues()}
    assert names == {"jobs", "graveyard"}
    assert (await receive_one(broker, "graveyard")).headers[H_REASON] == "nope"


async def test_redrive_moves_messages_back(broker: Broker, declare: Declare) -> None:
    await declare()
    await broker.send("jobs", [Message(body=b, headers={"k": "v"}) for b in (b"a", b"b", b"c")])
    for d in await broker.receive("jobs", 10):
        assert await broker.dead_letter(d.receipt, "failed", "boom")

    assert await broker.redrive("jobs") == 3

    assert (await broker.stats("jobs.dlq")).total == 0
    back = await broker.receive("jobs", 10)
    assert sorted(bodies(back)) == [b"a", b"b", b"c"]
    for d in back:
        assert d.receive_count == 1
        assert d.headers == {"k": "v"}
        assert not set(d.headers) & set(DLQ_HEADERS)


async def test_redrive_respects_max_messages(broker: Broker, declare: Declare) -> None:
    await declare()
    await broker.send("jobs", msgs(b"a", b"b", b"c"))
    for d in await broker.receive("jobs", 10):
        await broker.dead_letter(d.receipt, "failed")

    assert await broker.redrive("jobs", max_messages=2) == 2

    assert (await broker.stats("jobs")).depth == 2
    assert (await broker.stats("jobs.dlq")).depth == 1


# -- dedup --------------------------------------------------------------------------------------


async def test_dedup_within_window(broker: Broker, declare: Declare) -> None:
    await declare()

    assert await broker.send("jobs", [Message(body=b"1", dedup_id="x")]) == [True]
    assert await broker.send("jobs", [Message(body=b"2", dedup_id="x")]) == [False]

    assert bodies(await broker.receive("jobs", 10)) == [b"1"]


async def test_dedup_within_one_batch(broker: Broker, declare: Declare) -> None:
    await declare()
    batch = [Message(body=b"1", dedup_id="x"), Message(body=b"2", dedup_id="x"), Message(body=b"3")]

    assert await broker.send("jobs", batch) == [True, False, True]

    assert bodies(await broker.receive("jobs", 10)) == [b"1", b"3"]


async def test_dedup_window_expires(broker: Broker, declare: Declare, timing: Timing) -> None:
    await declare(dedup_window_s=timing.s(30))
    assert await broker.send("jobs", [Message(body=b"1", dedup_id="x")]) == [True]

    await timing.advance(31)

    assert await broker.send("jobs", [Message(body=b"2", dedup_id="x")]) == [True]
    assert bodies(await broker.receive("jobs", 10)) == [b"1", b"2"]


# -- size limit ---------------------------------------------------------------------------------


async def test_message_over_limit_is_refused(broker: Broker, declare: Declare) -> None:
    await declare()

    with pytest.raises(MessageTooLarge) as caught:
        await broker.send("jobs", msgs(b"x" * (256 * KiB + 1)))

    assert caught.value.limit == 256 * KiB
    assert (await broker.stats("jobs")).total == 0


async def test_batch_with_one_large_message_stores_nothing(
    broker: Broker, declare: Declare
) -> None:
    await declare()
    batch = [Message(body=b"ok", dedup_id="d"), Message(body=b"x" * (256 * KiB + 1))]

    with pytest.raises(MessageTooLarge):
        await broker.send("jobs", batch)

    assert (await broker.stats("jobs")).total == 0
    # Nothing stored includes the dedup record: the same id is new.
    assert await broker.send("jobs", [Message(body=b"ok", dedup_id="d")]) == [True]


async def test_message_at_limit_is_accepted(broker: Broker, declare: Declare) -> None:
    await declare()
    body = bytes(range(256)) * KiB  # exactly 256 KiB

    assert await broker.send("jobs", msgs(body)) == [True]

    assert (await receive_one(broker)).body == body


async def test_custom_size_limit(broker: Broker, declare: Declare) -> None:
    await declare(max_message_bytes=10)

    assert await broker.send("jobs", msgs(b"x" * 10)) == [True]
    with pytest.raises(MessageTooLarge):
        await broker.send("jobs", msgs(b"x" * 11))


# -- unknown queues -----------------------------------------------------------------------------


async def test_unknown_queue_send(broker: Broker) -> None:
    with pytest.raises(UnknownQueue) as caught:
        await broker.send("nope", msgs(b"x"))
    assert caught.value.queue == "nope"


async def test_unknown_queue_receive(broker: Broker) -> None:
    with pytest.raises(UnknownQueue):
        await broker.receive("nope", 10)


async def test_unknown_queue_stats(broker: Broker) -> None:
    with pytest.raises(UnknownQueue):
        await broker.stats("nope")


async def test_unknown_queue_spec(broker: Broker) -> None:
    with pytest.raises(UnknownQueue):
        await broker.queue_spec("nope")


# -- stats, peek, purge -------------------------------------------------------------------------


async def test_stats_of_empty_queue(broker: Broker, declare: Declare) -> None:
    await declare()

    assert await broker.stats("jobs") == QueueStats(
        queue="jobs", depth=0, in_flight=0, delayed=0, oldest_age_s=0.0
    )


async def test_stats_counts_and_age(broker: Broker, declare: Declare, timing: Timing) -> None:
    await declare(visibility_timeout_s=timing.s(30))
    await broker.send("jobs", msgs(b"a", b"b", b"c"))
    await broker.send("jobs", [Message(body=b"d", delay_s=timing.s(100))])
    await timing.advance(5)
    assert len(await broker.receive("jobs", 1)) == 1

    stats = await broker.stats("jobs")
    assert (stats.queue, stats.depth, stats.in_flight, stats.delayed) == ("jobs", 2, 1, 1)
    assert stats.oldest_age_s == pytest.approx(timing.s(5), abs=timing.eps_s)

    await timing.advance(10)
    assert (await broker.stats("jobs")).oldest_age_s == pytest.approx(timing.s(15),
                                                                      abs=timing.eps_s)


async def test_stats_follow_the_clock(broker: Broker, declare: Declare, timing: Timing) -> None:
    # An expired lease is ready again, and a due delayed message is ready.
    await declare(visibility_timeout_s=timing.s(10))
    await broker.send("jobs", msgs(b"a"))
    await broker.send("jobs", [Message(body=b"b", delay_s=timing.s(5))])
    await receive_one(broker)

    await timing.advance(11)

    stats = await broker.stats("jobs")
    assert (stats.depth, stats.in_flight, stats.delayed) == (2, 0, 0)


async def test_peek_does_not_lease(broker: Broker, declare: Declare) -> None:
    await declare()
    await broker.send("jobs", msgs(b"a", b"b"))

    assert bodies(await broker.peek("jobs")) == [b"a", b"b"]
    assert len(await broker.peek("jobs", max_messages=1)) == 1

    got = await broker.receive("jobs", 10)
    assert bodies(got) == [b"a", b"b"]
    assert [d.receive_count for d in got] == [1, 1]


async def test_purge_empties_the_queue(broker: Broker, declare: Declare, timing: Timing) -> None:
    await declare()
    await broker.send("jobs", msgs(b"a", b"b"))
    await broker.send("jobs", [Message(body=b"c", delay_s=timing.s(60))])
    await broker.receive("jobs", 1)

    assert await broker.purge("jobs") == 3

    assert (await broker.stats("jobs")).total == 0
    assert await broker.receive("jobs", 10) == []


# -- declaring ----------------------------------------------------------------------------------


async def test_queues_lists_declared_queues_and_dead_letters(
    broker: Broker, declare: Declare
) -> None:
    a = await declare("a")
    await declare("b", max_receives=0)  # still has a DLQ, for explicit dead letters
    await declare("c", dead_letter="graveyard")

    listed = sorted(await broker.queues(), key=lambda s: s.name)

    assert [s.name for s in listed] == ["a", "a.dlq", "b", "b.dlq", "c", "graveyard"]
    assert listed[:2] == [a, a.dlq_spec()]
    assert await broker.queue_spec("a") == a
    assert await broker.queue_spec("a.dlq") == a.dlq_spec()


async def test_declare_queue_twice_is_idempotent(broker: Broker, declare: Declare) -> None:
    spec = await declare(visibility_timeout_s=12)
    await broker.send("jobs", msgs(b"kept"))

    await declare(visibility_timeout_s=12)

    assert sorted(s.name for s in await broker.queues()) == ["jobs", "jobs.dlq"]
    assert await broker.queue_spec("jobs") == spec
    assert bodies(await broker.receive("jobs", 10)) == [b"kept"]


async def test_declare_queue_updates_settings(
    broker: Broker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    updated = await declare(visibility_timeout_s=timing.s(60))
    await broker.send("jobs", msgs(b"x"))
    await receive_one(broker)

    await timing.advance(11)

    assert await broker.queue_spec("jobs") == updated
    assert {s.name: s for s in await broker.queues()}["jobs"] == updated
    assert await broker.receive("jobs", 10) == []


async def test_declare_queue_updates_dead_letter_settings(
    broker: Broker, declare: Declare
) -> None:
    await declare(visibility_timeout_s=10, max_message_bytes=1000)
    updated = await declare(visibility_timeout_s=60, max_message_bytes=2000)

    assert await broker.queue_spec("jobs.dlq") == updated.dlq_spec()
    assert {s.name: s for s in await broker.queues()}["jobs.dlq"] == updated.dlq_spec()


async def test_close_ends_a_waiting_receive_with_nothing(broker: Broker, declare: Declare) -> None:
    await declare()
    waiting = asyncio.ensure_future(broker.receive("jobs", 1, wait_s=30))
    await asyncio.sleep(0.05)
    await broker.close()
    async with asyncio.timeout(2):
        assert await waiting == []


async def test_dead_letter_in_a_dead_letter_queue_keeps_the_message(
        broker: Broker, declare: Declare) -> None:
    await declare(max_receives=0)
    await broker.send("jobs", msgs(b"x"))
    # even with max_receives=0 a queue has a DLQ for explicit dead letters
    assert await broker.dead_letter((await receive_one(broker)).receipt, "bad")
    dead = await receive_one(broker, "jobs.dlq")
    assert not await broker.dead_letter(dead.receipt, "worse")
    assert (await broker.stats("jobs.dlq")).total == 1
