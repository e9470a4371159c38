"""The queue conformance suite: every test runs against every backend in ``conftest.BACKENDS`` that
has queues.

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
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest

from support.conformance import Declare, Timing
from swell.brokers.base import (
    DLQ_HEADERS,
    H_AT,
    H_ATTEMPTS,
    H_ERROR,
    H_REASON,
    H_SOURCE,
    REASON_MAX_RECEIVES,
    Delivery,
    KiB,
    Message,
    QueueBroker,
    QueueSpec,
    QueueStats,
)
from swell.core.errors import MessageTooLarge, UnknownQueue

T = TypeVar("T")


def msgs(*bodies: bytes) -> list[Message]:
    return [Message(body=b) for b in bodies]


def bodies(deliveries: list[Delivery]) -> list[bytes]:
    return [d.body for d in deliveries]


async def receive_one(queues: QueueBroker, queue: str = "jobs", **kwargs: Any) -> Delivery:
    """Exactly one message. Pass ``wait_s=timing.grace_s`` where it became due as time passed."""
    got = await queues.receive(queue, 10, **kwargs)
    assert len(got) == 1, got
    return got[0]


async def drain(queues: QueueBroker, queue: str, batch: int) -> list[Delivery]:
    out: list[Delivery] = []
    for _ in range(100):
        got = await queues.receive(queue, batch)
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
    queues: QueueBroker, declare: Declare, timing: Timing
) -> None:
    await declare()
    sent_at = timing.now()
    assert await queues.send("jobs", [Message(body=b"hello", headers={"k": "v"})]) == [True]
    await timing.advance(3)

    d = await receive_one(queues)

    assert d.body == b"hello"
    assert d.headers == {"k": "v"}
    assert d.receive_count == 1
    assert d.enqueued_at == pytest.approx(sent_at, abs=timing.eps_s)
    assert d.first_received_at == pytest.approx(sent_at + timing.s(3), abs=timing.eps_s)
    assert d.receipt.queue == "jobs"


async def test_message_without_headers_has_empty_headers(
    queues: QueueBroker, declare: Declare
) -> None:
    await declare()
    await queues.send("jobs", msgs(b"bare"))

    assert (await receive_one(queues)).headers == {}


async def test_batch_order_is_preserved(queues: QueueBroker, declare: Declare) -> None:
    await declare()
    first = [f"m{i:02}".encode() for i in range(10)]
    await queues.send("jobs", msgs(*first))
    await queues.send("jobs", msgs(b"m10", b"m11"))

    got = await drain(queues, "jobs", batch=4)

    assert bodies(got) == [*first, b"m10", b"m11"]


async def test_receive_respects_max_messages(queues: QueueBroker, declare: Declare) -> None:
    await declare()
    await queues.send("jobs", msgs(b"a", b"b", b"c", b"d", b"e"))

    assert len(await queues.receive("jobs", 2)) == 2
    assert len(await queues.receive("jobs", 10)) == 3


async def test_lease_hides_message_from_other_receivers(
    queues: QueueBroker, declare: Declare
) -> None:
    await declare()
    await queues.send("jobs", msgs(b"only"))

    await receive_one(queues)

    assert await queues.receive("jobs", 10) == []
    stats = await queues.stats("jobs")
    assert (stats.depth, stats.in_flight) == (0, 1)


async def test_visibility_expiry_redelivers_with_new_receipt(
    queues: QueueBroker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    await queues.send("jobs", msgs(b"x"))
    first = await receive_one(queues)
    received_at = timing.now()

    await timing.advance(9)
    assert await queues.receive("jobs", 10) == []
    await timing.advance(2)
    again = await receive_one(queues, wait_s=timing.grace_s)

    assert again.body == b"x"
    assert again.receive_count == 2
    assert again.receipt != first.receipt
    assert again.first_received_at == pytest.approx(received_at, abs=timing.eps_s)


async def test_receive_timeout_shorter_than_queue_default(
    queues: QueueBroker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(30))
    await queues.send("jobs", msgs(b"x"))
    await receive_one(queues, visibility_timeout_s=timing.s(5))

    await timing.advance(6)

    assert (await receive_one(queues, wait_s=timing.grace_s)).receive_count == 2


async def test_receive_timeout_longer_than_queue_default(
    queues: QueueBroker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(30))
    await queues.send("jobs", msgs(b"x"))
    await receive_one(queues, visibility_timeout_s=timing.s(100))

    await timing.advance(31)
    assert await queues.receive("jobs", 10) == []
    await timing.advance(70)
    assert (await receive_one(queues, wait_s=timing.grace_s)).receive_count == 2


async def test_delayed_send_is_invisible_until_due(
    queues: QueueBroker, declare: Declare, timing: Timing
) -> None:
    await declare()
    sent_at = timing.now()
    await queues.send("jobs", [Message(body=b"later", delay_s=timing.s(10))])

    assert await queues.receive("jobs", 10) == []
    assert (await queues.stats("jobs")).delayed == 1
    await timing.advance(9)
    assert await queues.receive("jobs", 10) == []
    await timing.advance(2)
    d = await receive_one(queues, wait_s=timing.grace_s)
    assert d.body == b"later"
    assert d.enqueued_at == pytest.approx(sent_at, abs=timing.eps_s)


async def test_receive_wait_zero_on_empty_queue_returns_at_once(
    queues: QueueBroker, declare: Declare
) -> None:
    await declare()

    async with asyncio.timeout(1):
        assert await queues.receive("jobs", 10, wait_s=0) == []


async def test_send_wakes_a_waiting_receive(queues: QueueBroker, declare: Declare) -> None:
    # The manual clock never moves here: only the send can end the 5 s wait in time.
    await declare()
    async with background(queues.receive("jobs", 10, wait_s=5)) as waiting:
        await asyncio.sleep(0.05)  # real: let the receive start waiting
        assert not waiting.done(), "receive with wait_s=5 returned before anything was sent"

        await queues.send("jobs", msgs(b"wake"))

        async with asyncio.timeout(2):
            got = await waiting
    assert bodies(got) == [b"wake"]


# -- ack, release, extend -----------------------------------------------------------------------


async def test_ack_deletes(queues: QueueBroker, declare: Declare, timing: Timing) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    await queues.send("jobs", msgs(b"x"))
    d = await receive_one(queues)

    assert await queues.ack([d.receipt]) == []

    assert (await queues.stats("jobs")).total == 0
    await timing.advance(11)
    assert await queues.receive("jobs", 10) == []


async def test_ack_with_stale_receipt_is_refused(
    queues: QueueBroker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    await queues.send("jobs", msgs(b"x"))
    old = await receive_one(queues)
    await timing.advance(11)
    new = await receive_one(queues, wait_s=timing.grace_s)

    assert await queues.ack([old.receipt]) == [old.receipt]

    assert (await queues.stats("jobs")).in_flight == 1
    assert await queues.ack([old.receipt, new.receipt]) == [old.receipt]
    assert (await queues.stats("jobs")).total == 0


async def test_receipts_are_stale_after_ack(queues: QueueBroker, declare: Declare) -> None:
    await declare()
    await queues.send("jobs", msgs(b"x"))
    d = await receive_one(queues)
    await queues.ack([d.receipt])

    assert await queues.ack([d.receipt]) == [d.receipt]
    assert await queues.release([d.receipt]) == [d.receipt]
    assert await queues.extend([d.receipt], 30) == [d.receipt]
    assert await queues.dead_letter(d.receipt, "late") is False
    assert (await queues.stats("jobs")).total == 0


async def test_release_makes_message_visible_now(queues: QueueBroker, declare: Declare) -> None:
    await declare()
    await queues.send("jobs", msgs(b"x"))
    d = await receive_one(queues)

    assert await queues.release([d.receipt]) == []

    assert (await receive_one(queues)).receive_count == 2


async def test_release_with_delay(queues: QueueBroker, declare: Declare, timing: Timing) -> None:
    await declare()
    await queues.send("jobs", msgs(b"x"))
    d = await receive_one(queues)

    assert await queues.release([d.receipt], delay_s=timing.s(10)) == []

    stats = await queues.stats("jobs")
    assert (stats.depth, stats.in_flight, stats.delayed) == (0, 0, 1)
    assert await queues.receive("jobs", 10) == []
    await timing.advance(11)
    assert (await receive_one(queues, wait_s=timing.grace_s)).receive_count == 2


async def test_release_without_counting_the_receive(
    queues: QueueBroker, declare: Declare, timing: Timing
) -> None:
    # A throttled attempt is not a failed one: it must not bring the message closer to its DLQ.
    await declare(max_receives=1)
    await queues.send("jobs", msgs(b"x"))
    for _ in range(3):
        d = await receive_one(queues)
        assert d.receive_count == 1
        assert await queues.release([d.receipt], count=False) == []

    assert (await queues.stats("jobs.dlq")).total == 0


async def test_release_and_extend_with_stale_receipt_are_refused(
    queues: QueueBroker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    await queues.send("jobs", msgs(b"x"))
    old = await receive_one(queues)
    await timing.advance(11)
    new = await receive_one(queues, wait_s=timing.grace_s)

    assert await queues.release([old.receipt]) == [old.receipt]
    assert await queues.extend([old.receipt], timing.s(60)) == [old.receipt]

    assert await queues.receive("jobs", 10) == []  # still leased by ``new``
    await timing.advance(11)  # the refused extend did not lengthen ``new``'s lease
    assert (await receive_one(queues, wait_s=timing.grace_s)).receive_count == 3
    assert await queues.ack([new.receipt]) == [new.receipt]


async def test_extend_keeps_the_lease(
    queues: QueueBroker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    await queues.send("jobs", msgs(b"x"))
    d = await receive_one(queues)
    await timing.advance(8)

    assert await queues.extend([d.receipt], timing.s(20)) == []  # now held until t+28

    await timing.advance(8)
    assert await queues.receive("jobs", 10) == []
    assert await queues.ack([d.receipt]) == []
    assert (await queues.stats("jobs")).total == 0


async def test_extend_runs_from_now(queues: QueueBroker, declare: Declare, timing: Timing) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    await queues.send("jobs", msgs(b"x"))
    d = await receive_one(queues)
    await timing.advance(8)
    await queues.extend([d.receipt], timing.s(20))

    await timing.advance(19)
    assert await queues.receive("jobs", 10) == []
    await timing.advance(2)
    assert (await receive_one(queues, wait_s=timing.grace_s)).receive_count == 2


# -- dead letters -------------------------------------------------------------------------------


async def test_dead_letter_after_max_receives(
    queues: QueueBroker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(10), max_receives=3)
    await queues.send("jobs", [Message(body=b"poison", headers={"k": "v"})])
    for attempt in range(1, 4):
        assert (await receive_one(queues, wait_s=timing.grace_s)).receive_count == attempt
        await timing.advance(11)

    assert await queues.receive("jobs", 10) == []

    assert (await queues.stats("jobs")).total == 0
    dead = await receive_one(queues, "jobs.dlq")
    assert dead.body == b"poison"
    assert dead.headers["k"] == "v"
    assert dead.headers[H_REASON] == REASON_MAX_RECEIVES
    assert dead.headers[H_ATTEMPTS] == "3"
    assert dead.headers[H_SOURCE] == "jobs"


async def test_dead_lettering_does_not_hide_ready_messages(
    queues: QueueBroker, declare: Declare, timing: Timing
) -> None:
    # The receive that moves a message to the DLQ still leases what is ready behind it.
    await declare(visibility_timeout_s=timing.s(10), max_receives=1)
    await queues.send("jobs", msgs(b"poison"))
    await receive_one(queues)
    await timing.advance(11)
    await queues.send("jobs", msgs(b"good"))

    assert bodies(await queues.receive("jobs", 1)) == [b"good"]
    assert (await queues.stats("jobs.dlq")).depth == 1


async def test_explicit_dead_letter(queues: QueueBroker, declare: Declare, timing: Timing) -> None:
    await declare()
    await queues.send("jobs", [Message(body=b"bad", headers={"k": "v"})])
    d = await receive_one(queues)

    assert await queues.dead_letter(d.receipt, "invalid payload", "ValueError: boom") is True

    assert (await queues.stats("jobs")).total == 0
    dead = await receive_one(queues, "jobs.dlq")
    assert dead.body == b"bad"
    assert dead.headers["k"] == "v"
    assert dead.headers[H_REASON] == "invalid payload"
    assert dead.headers[H_ERROR] == "ValueError: boom"
    assert dead.headers[H_SOURCE] == "jobs"
    assert dead.headers[H_ATTEMPTS] == "1"
    assert float(dead.headers[H_AT]) == pytest.approx(timing.now(), abs=timing.eps_s)


async def test_custom_dead_letter_queue(queues: QueueBroker, declare: Declare) -> None:
    await declare(dead_letter="graveyard")
    await queues.send("jobs", msgs(b"bad"))
    d = await receive_one(queues)

    assert await queues.dead_letter(d.receipt, "nope") is True

    names = {s.name for s in await queues.queues()}
    assert names == {"jobs", "graveyard"}
    assert (await receive_one(queues, "graveyard")).headers[H_REASON] == "nope"


async def test_redrive_moves_messages_back(queues: QueueBroker, declare: Declare) -> None:
    await declare()
    await queues.send("jobs", [Message(body=b, headers={"k": "v"}) for b in (b"a", b"b", b"c")])
    for d in await queues.receive("jobs", 10):
        assert await queues.dead_letter(d.receipt, "failed", "boom")

    assert await queues.redrive("jobs") == 3

    assert (await queues.stats("jobs.dlq")).total == 0
    back = await queues.receive("jobs", 10)
    assert sorted(bodies(back)) == [b"a", b"b", b"c"]
    for d in back:
        assert d.receive_count == 1
        assert d.headers == {"k": "v"}
        assert not set(d.headers) & set(DLQ_HEADERS)


async def test_redrive_respects_max_messages(queues: QueueBroker, declare: Declare) -> None:
    await declare()
    await queues.send("jobs", msgs(b"a", b"b", b"c"))
    for d in await queues.receive("jobs", 10):
        await queues.dead_letter(d.receipt, "failed")

    assert await queues.redrive("jobs", max_messages=2) == 2

    assert (await queues.stats("jobs")).depth == 2
    assert (await queues.stats("jobs.dlq")).depth == 1


# -- dedup --------------------------------------------------------------------------------------


async def test_dedup_within_window(queues: QueueBroker, declare: Declare) -> None:
    await declare()

    assert await queues.send("jobs", [Message(body=b"1", dedup_id="x")]) == [True]
    assert await queues.send("jobs", [Message(body=b"2", dedup_id="x")]) == [False]

    assert bodies(await queues.receive("jobs", 10)) == [b"1"]


async def test_dedup_within_one_batch(queues: QueueBroker, declare: Declare) -> None:
    await declare()
    batch = [Message(body=b"1", dedup_id="x"), Message(body=b"2", dedup_id="x"), Message(body=b"3")]

    assert await queues.send("jobs", batch) == [True, False, True]

    assert bodies(await queues.receive("jobs", 10)) == [b"1", b"3"]


async def test_dedup_window_expires(queues: QueueBroker, declare: Declare, timing: Timing) -> None:
    await declare(dedup_window_s=timing.s(30))
    assert await queues.send("jobs", [Message(body=b"1", dedup_id="x")]) == [True]

    await timing.advance(31)

    assert await queues.send("jobs", [Message(body=b"2", dedup_id="x")]) == [True]
    assert bodies(await queues.receive("jobs", 10)) == [b"1", b"2"]


# -- size limit ---------------------------------------------------------------------------------


async def test_message_over_limit_is_refused(queues: QueueBroker, declare: Declare) -> None:
    await declare()

    with pytest.raises(MessageTooLarge) as caught:
        await queues.send("jobs", msgs(b"x" * (256 * KiB + 1)))

    assert caught.value.limit == 256 * KiB
    assert (await queues.stats("jobs")).total == 0


async def test_batch_with_one_large_message_stores_nothing(
    queues: QueueBroker, declare: Declare
) -> None:
    await declare()
    batch = [Message(body=b"ok", dedup_id="d"), Message(body=b"x" * (256 * KiB + 1))]

    with pytest.raises(MessageTooLarge):
        await queues.send("jobs", batch)

    assert (await queues.stats("jobs")).total == 0
    # Nothing stored includes the dedup record: the same id is new.
    assert await queues.send("jobs", [Message(body=b"ok", dedup_id="d")]) == [True]


async def test_message_at_limit_is_accepted(queues: QueueBroker, declare: Declare) -> None:
    await declare()
    body = bytes(range(256)) * KiB  # exactly 256 KiB

    assert await queues.send("jobs", msgs(body)) == [True]

    assert (await receive_one(queues)).body == body


async def test_custom_size_limit(queues: QueueBroker, declare: Declare) -> None:
    await declare(max_message_bytes=10)

    assert await queues.send("jobs", msgs(b"x" * 10)) == [True]
    with pytest.raises(MessageTooLarge):
        await queues.send("jobs", msgs(b"x" * 11))


# -- unknown queues -----------------------------------------------------------------------------


async def test_unknown_queue_send(queues: QueueBroker) -> None:
    with pytest.raises(UnknownQueue) as caught:
        await queues.send("nope", msgs(b"x"))
    assert caught.value.queue == "nope"


async def test_unknown_queue_receive(queues: QueueBroker) -> None:
    with pytest.raises(UnknownQueue):
        await queues.receive("nope", 10)


async def test_unknown_queue_stats(queues: QueueBroker) -> None:
    with pytest.raises(UnknownQueue):
        await queues.stats("nope")


async def test_unknown_queue_spec(queues: QueueBroker) -> None:
    with pytest.raises(UnknownQueue):
        await queues.queue_spec("nope")


# -- stats, peek, purge -------------------------------------------------------------------------


async def test_stats_of_empty_queue(queues: QueueBroker, declare: Declare) -> None:
    await declare()

    assert await queues.stats("jobs") == QueueStats(
        queue="jobs", depth=0, in_flight=0, delayed=0, oldest_age_s=0.0
    )


async def test_stats_counts_and_age(queues: QueueBroker, declare: Declare, timing: Timing) -> None:
    await declare(visibility_timeout_s=timing.s(30))
    await queues.send("jobs", msgs(b"a", b"b", b"c"))
    await queues.send("jobs", [Message(body=b"d", delay_s=timing.s(100))])
    await timing.advance(5)
    assert len(await queues.receive("jobs", 1)) == 1

    stats = await queues.stats("jobs")
    assert (stats.queue, stats.depth, stats.in_flight, stats.delayed) == ("jobs", 2, 1, 1)
    assert stats.oldest_age_s == pytest.approx(timing.s(5), abs=timing.eps_s)

    await timing.advance(10)
    assert (await queues.stats("jobs")).oldest_age_s == pytest.approx(timing.s(15),
                                                                      abs=timing.eps_s)


async def test_stats_follow_the_clock(queues: QueueBroker, declare: Declare, timing: Timing) -> None:
    # An expired lease is ready again, and a due delayed message is ready.
    await declare(visibility_timeout_s=timing.s(10))
    await queues.send("jobs", msgs(b"a"))
    await queues.send("jobs", [Message(body=b"b", delay_s=timing.s(5))])
    await receive_one(queues)

    await timing.advance(11)

    stats = await queues.stats("jobs")
    assert (stats.depth, stats.in_flight, stats.delayed) == (2, 0, 0)


async def test_peek_does_not_lease(queues: QueueBroker, declare: Declare) -> None:
    await declare()
    await queues.send("jobs", msgs(b"a", b"b"))

    assert bodies(await queues.peek("jobs")) == [b"a", b"b"]
    assert len(await queues.peek("jobs", max_messages=1)) == 1

    got = await queues.receive("jobs", 10)
    assert bodies(got) == [b"a", b"b"]
    assert [d.receive_count for d in got] == [1, 1]


async def test_purge_empties_the_queue(queues: QueueBroker, declare: Declare, timing: Timing) -> None:
    await declare()
    await queues.send("jobs", msgs(b"a", b"b"))
    await queues.send("jobs", [Message(body=b"c", delay_s=timing.s(60))])
    await queues.receive("jobs", 1)

    assert await queues.purge("jobs") == 3

    assert (await queues.stats("jobs")).total == 0
    assert await queues.receive("jobs", 10) == []


# -- declaring ----------------------------------------------------------------------------------


async def test_queues_lists_declared_queues_and_dead_letters(
    queues: QueueBroker, declare: Declare
) -> None:
    a = await declare("a")
    await declare("b", max_receives=0)  # still has a DLQ, for explicit dead letters
    await declare("c", dead_letter="graveyard")

    listed = sorted(await queues.queues(), key=lambda s: s.name)

    assert [s.name for s in listed] == ["a", "a.dlq", "b", "b.dlq", "c", "graveyard"]
    assert listed[:2] == [a, a.dlq_spec()]
    assert await queues.queue_spec("a") == a
    assert await queues.queue_spec("a.dlq") == a.dlq_spec()


async def test_declare_queue_twice_is_idempotent(queues: QueueBroker, declare: Declare) -> None:
    spec = await declare(visibility_timeout_s=12)
    await queues.send("jobs", msgs(b"kept"))

    await declare(visibility_timeout_s=12)

    assert sorted(s.name for s in await queues.queues()) == ["jobs", "jobs.dlq"]
    assert await queues.queue_spec("jobs") == spec
    assert bodies(await queues.receive("jobs", 10)) == [b"kept"]


async def test_declare_queue_updates_settings(
    queues: QueueBroker, declare: Declare, timing: Timing
) -> None:
    await declare(visibility_timeout_s=timing.s(10))
    updated = await declare(visibility_timeout_s=timing.s(60))
    await queues.send("jobs", msgs(b"x"))
    await receive_one(queues)

    await timing.advance(11)

    assert await queues.queue_spec("jobs") == updated
    assert {s.name: s for s in await queues.queues()}["jobs"] == updated
    assert await queues.receive("jobs", 10) == []


async def test_declare_queue_updates_dead_letter_settings(
    queues: QueueBroker, declare: Declare
) -> None:
    await declare(visibility_timeout_s=10, max_message_bytes=1000)
    updated = await declare(visibility_timeout_s=60, max_message_bytes=2000)

    assert await queues.queue_spec("jobs.dlq") == updated.dlq_spec()
    assert {s.name: s for s in await queues.queues()}["jobs.dlq"] == updated.dlq_spec()


async def test_close_ends_a_waiting_receive_with_nothing(queues: QueueBroker, declare: Declare) -> None:
    await declare()
    waiting = asyncio.ensure_future(queues.receive("jobs", 1, wait_s=30))
    await asyncio.sleep(0.05)
    await queues.close()
    async with asyncio.timeout(2):
        assert await waiting == []


async def test_dead_letter_in_a_dead_letter_queue_keeps_the_message(
        queues: QueueBroker, declare: Declare) -> None:
    await declare(max_receives=0)
    await queues.send("jobs", msgs(b"x"))
    # even with max_receives=0 a queue has a DLQ for explicit dead letters
    assert await queues.dead_letter((await receive_one(queues)).receipt, "bad")
    dead = await receive_one(queues, "jobs.dlq")
    assert not await queues.dead_letter(dead.receipt, "worse")
    assert (await queues.stats("jobs.dlq")).total == 1


async def test_release_without_counting_keeps_the_message_from_its_dlq(
        queues: QueueBroker, timing: Timing) -> None:
    await queues.declare_queue(QueueSpec(name="t", max_receives=2,
                                         visibility_timeout_s=timing.s(5)))
    await queues.send("t", [Message(body=b"x")])
    for _ in range(5):  # throttled five times: never dead-lettered, count stays at 1
        (d,) = await queues.receive("t", 1, wait_s=timing.grace_s)
        assert d.receive_count == 1
        assert await queues.release([d.receipt], timing.s(1.0), count=False) == []
        await timing.advance(1.5)
    (d,) = await queues.receive("t", 1, wait_s=timing.grace_s)
    assert d.receive_count == 1
    assert (await queues.stats("t.dlq")).total == 0
