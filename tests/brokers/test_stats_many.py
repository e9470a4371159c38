"""Every backend with queues: ``stats_many``, the stats of many queues at once (a runtime reads
every function's queue each tick in one call)."""

from __future__ import annotations

from support.conformance import Declare, Timing
from swell.brokers.base import Message, QueueBroker


async def test_stats_many_is_stats_of_each(queues: QueueBroker, declare: Declare,
                                           timing: Timing) -> None:
    await declare("empty")
    await declare("busy", visibility_timeout_s=timing.s(30))
    await queues.send("busy", [Message(body=b"a"), Message(body=b"b"), Message(body=b"c")])
    await queues.send("busy", [Message(body=b"d", delay_s=timing.s(100))])
    await timing.advance(5)
    assert len(await queues.receive("busy", 1)) == 1

    many = await queues.stats_many(["busy", "empty", "busy.dlq"])

    assert set(many) == {"busy", "empty", "busy.dlq"}
    for name, stats in many.items():
        one = await queues.stats(name)
        assert (stats.queue, stats.depth, stats.in_flight, stats.delayed) == (
            one.queue, one.depth, one.in_flight, one.delayed), name
        assert abs(stats.oldest_age_s - one.oldest_age_s) <= timing.eps_s + timing.s(1), name
    assert (many["busy"].depth, many["busy"].in_flight, many["busy"].delayed) == (2, 1, 1)
    assert many["empty"].total == 0


async def test_stats_many_leaves_out_unknown_queues(queues: QueueBroker, declare: Declare) -> None:
    await declare("known")

    assert set(await queues.stats_many(["known", "never-declared"])) == {"known"}
    assert await queues.stats_many([]) == {}
