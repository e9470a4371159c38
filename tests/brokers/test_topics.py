"""The topic part of the broker protocol, on every backend with topics: fan-out to subscriptions by
routing key and content filter, counts, dedup, and what a publish refuses.

On NATS a topic is a stream and its subscriptions' queues are fed from it by the server, a few
milliseconds after the publish: a test receives with ``wait_s=timing.grace_s``, and counts what
the filter kept out only once the subscription's consumer has looked at it (NATS filters there).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from support.conformance import Timing
from swell.brokers.base import Delivery, Message, QueueSpec, SubscriptionSpec, TopicBroker, TopicSpec
from swell.core.errors import MessageTooLarge, PayloadError, UnknownTopic
from swell.core.filters import Pattern, PatternError


def event(n: int, subject: str | None = None, **data: Any) -> Message:
    body = {"specversion": "1.0", "id": f"e{n}", "source": "/t", "type": "t.created",
            "subject": subject, "data": {"n": n, **data}}
    return Message(body=msgspec.json.encode(body), subject=subject)


def sub(name: str, subject: str | None = None, filter: dict[str, Any] | None = None,
        topic: str = "orders") -> SubscriptionSpec:
    return SubscriptionSpec(topic=topic, name=name, queue=QueueSpec(name=f"{topic}.{name}"),
                            subject=subject, filter=None if filter is None else Pattern.parse(filter).json)


async def collect(topics: TopicBroker, queue: str, n: int, timing: Timing) -> list[int]:
    """The ``data.n`` of the next ``n`` messages of ``queue`` (acked), then checks nothing more
    comes within the grace period."""
    got: list[Delivery] = []
    for _ in range(50):
        if len(got) >= n:
            break
        got += await topics.receive(queue, n - len(got), wait_s=timing.grace_s or 0.0)
    await topics.ack([d.receipt for d in got])
    extra = await topics.receive(queue, 10, wait_s=min(timing.grace_s, 0.3))
    assert not extra, f"{queue}: more than {n}: {[d.body for d in extra]}"
    return sorted(msgspec.json.decode(d.body)["data"]["n"] for d in got)


async def test_a_publish_reaches_every_matching_subscription(topics: TopicBroker, timing: Timing) -> None:
    await topics.declare_topic(TopicSpec(name="orders"))
    await topics.subscribe(sub("all"))
    await topics.subscribe(sub("created", subject="orders.*.created"))
    await topics.subscribe(sub("eu", subject="orders.eu.>"))
    await topics.subscribe(sub("big", filter={"data": {"amount": [{"numeric": [">=", 100]}]}}))

    accepted = await topics.publish("orders", [
        event(1, "orders.eu.created", amount=50), event(2, "orders.us.created", amount=150),
        event(3, "orders.eu.paid.late", amount=500), event(4, None, amount=1)])
    assert accepted == [True] * 4

    assert await collect(topics, "orders.all", 4, timing) == [1, 2, 3, 4]
    assert await collect(topics, "orders.created", 2, timing) == [1, 2]
    assert await collect(topics, "orders.eu", 2, timing) == [1, 3]
    assert await collect(topics, "orders.big", 2, timing) == [2, 3]
    counts = {s.spec.name: (s.matched, s.filtered) for t in await topics.topics() for s in t.subscriptions}
    assert counts == {"all": (4, 0), "created": (2, 0), "eu": (2, 0), "big": (2, 2)}


async def test_a_subscription_added_later_sees_only_what_is_published_after(
        topics: TopicBroker, timing: Timing) -> None:
    await topics.declare_topic(TopicSpec(name="orders"))
    await topics.subscribe(sub("early"))
    await topics.publish("orders", [event(1, "orders.a")])
    await topics.subscribe(sub("late"))
    await topics.publish("orders", [event(2, "orders.b")])

    assert await collect(topics, "orders.early", 2, timing) == [1, 2]
    assert await collect(topics, "orders.late", 1, timing) == [2]


async def test_a_topic_without_subscriptions_takes_a_publish_and_delivers_it_nowhere(
        topics: TopicBroker, timing: Timing) -> None:
    await topics.declare_topic(TopicSpec(name="orders"))
    assert await topics.publish("orders", [event(1, "orders.a")]) == [True]
    (info,) = await topics.topics()
    assert info.spec.name == "orders" and info.subscriptions == []


async def test_each_subscription_has_its_own_queue_retries_and_dead_letters(
        topics: TopicBroker, timing: Timing) -> None:
    await topics.declare_topic(TopicSpec(name="orders"))
    spec = SubscriptionSpec(topic="orders", name="flaky",
                            queue=QueueSpec(name="orders.flaky", max_receives=1))
    await topics.subscribe(spec)
    await topics.subscribe(sub("calm"))
    await topics.publish("orders", [event(1, "orders.a")])

    (d,) = await topics.receive("orders.flaky", 1, wait_s=timing.grace_s)
    assert await topics.dead_letter(d.receipt, "failed")
    assert (await topics.stats("orders.flaky.dlq")).depth == 1
    assert await collect(topics, "orders.calm", 1, timing) == [1]


async def test_a_duplicate_publish_within_the_window_is_not_delivered_again(
        topics: TopicBroker, timing: Timing) -> None:
    await topics.declare_topic(TopicSpec(name="orders"))
    await topics.subscribe(sub("all"))
    first = Message(body=event(1).body, dedup_id="order-1", subject="orders.a")
    assert await topics.publish("orders", [first]) == [True]
    assert await topics.publish("orders", [first]) == [False]
    assert await collect(topics, "orders.all", 1, timing) == [1]


async def test_a_delayed_publish_is_delivered_after_its_delay(topics: TopicBroker, timing: Timing) -> None:
    await topics.declare_topic(TopicSpec(name="orders"))
    await topics.subscribe(sub("all"))
    later = Message(body=event(1).body, subject="orders.a", delay_s=timing.s(3))
    await topics.publish("orders", [later])
    assert await topics.receive("orders.all", 1, wait_s=min(timing.grace_s, timing.s(1))) == []
    await timing.advance(4)
    assert await collect(topics, "orders.all", 1, timing) == [1]


async def test_what_a_publish_refuses_stores_nothing(topics: TopicBroker, timing: Timing) -> None:
    await topics.declare_topic(TopicSpec(name="orders", max_message_bytes=1000))
    await topics.subscribe(sub("all"))
    with pytest.raises(UnknownTopic, match="'nope'"):
        await topics.publish("nope", [event(1)])
    with pytest.raises(MessageTooLarge):
        await topics.publish("orders", [event(1, "orders.a"), event(2, "orders.a", pad="x" * 2000)])
    for bad in ("orders..a", "orders.*", "orders.>", "orders a", ".orders", ""):
        with pytest.raises(PayloadError, match="subject"):
            await topics.publish("orders", [event(1, "orders.a"), event(2, bad)])
    assert await topics.receive("orders.all", 10, wait_s=min(timing.grace_s, 0.3)) == []


async def test_subscribing_needs_a_declared_topic_and_valid_patterns(topics: TopicBroker) -> None:
    with pytest.raises(UnknownTopic):
        await topics.subscribe(sub("all"))
    await topics.declare_topic(TopicSpec(name="orders"))
    with pytest.raises(PatternError):
        await topics.subscribe(sub("bad", subject="orders.>.x"))
    with pytest.raises(PatternError):
        await topics.subscribe(SubscriptionSpec(topic="orders", name="bad2",
                                                queue=QueueSpec(name="orders.bad2"),
                                                filter='{"data": "not-a-list"}'))
    (info,) = await topics.topics()
    assert info.subscriptions == []


async def test_a_changed_subscription_routes_by_its_new_settings(topics: TopicBroker, timing: Timing) -> None:
    await topics.declare_topic(TopicSpec(name="orders"))
    await topics.subscribe(sub("s", subject="orders.a"))
    await topics.subscribe(sub("s", subject="orders.b"))
    await topics.publish("orders", [event(1, "orders.a"), event(2, "orders.b")])
    assert await collect(topics, "orders.s", 1, timing) == [2]
