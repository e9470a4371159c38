"""``Retry(attempts=None)`` and a throttle's default wait mean one thing each, wherever an event
comes from: a queue, a consumer group, or a replay of a group."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from support.eventually import until
from swell import App, Retry, Runtime, Throttled
from swell.brokers.base import Broker, Message
from swell.brokers.memory import MemoryBroker
from swell.brokers.producer import Producer
from swell.runtime.app import declare
from swell.runtime.replay import Replay

RETRY = Retry(backoff=0.001, jitter=False)  # attempts=None


def test_attempts_none_is_the_queues_max_receives_and_five_where_there_is_no_queue() -> None:
    from swell.core.retry import DEFAULT_ATTEMPTS

    assert Retry().allowed(3) == 3
    assert Retry().allowed(0) == 2**31  # a queue that never dead-letters on its own
    assert Retry().allowed() == DEFAULT_ATTEMPTS == 5
    assert Retry(attempts=2).allowed() == 2
    assert Retry(attempts=2).allowed(5) == 2


def test_a_throttle_waits_its_retry_after_and_one_second_without_one() -> None:
    from swell.core.retry import THROTTLE_RETRY_AFTER_S, throttle_delay_s

    assert throttle_delay_s(None) == THROTTLE_RETRY_AFTER_S == Throttled().retry_after_s == 1.0
    assert throttle_delay_s(0.0) == 0.0
    assert throttle_delay_s(2.5) == 2.5


Behave = Callable[[int], None]
"""What the handler does on the n-th try of its event: return, or raise."""


def fails_until(n: int) -> Behave:
    def behave(attempt: int) -> None:
        if attempt < n:
            raise RuntimeError(f"attempt {attempt} fails")
    return behave


def throttled_until(n: int) -> Behave:
    def behave(attempt: int) -> None:
        if attempt < n:
            raise Throttled(retry_after=0)
    return behave


def _app(source: str, behave: Behave, tries: Counter[str]) -> App:
    """One handler with the default ``Retry`` (short backoff) on a queue (``max_receives`` 5 by
    default) or a consumer group; ``tries`` counts its calls (``n``) and successes (``ok``)."""
    app = App("meaning")
    trigger = app.queue("jobs") if source == "queue" else \
        app.stream("clicks", partitions=1).group("g")

    @app.function(trigger, retry=RETRY)
    async def handle(data: dict[str, Any]) -> None:
        tries["n"] += 1
        behave(tries["n"])
        tries["ok"] += 1

    return app


async def _event(broker: Broker, source: str) -> None:
    event = Producer(broker, source="/t").event("x", {"i": 1}, key="k")
    if source == "queue":
        await broker.send("jobs", [Message(body=event.to_json())])
    else:
        await broker.append("clicks", [Message(body=event.to_json(), key="k")])


async def _run(source: str, behave: Behave) -> tuple[Counter[str], float]:
    """Handle one event from ``source`` until it succeeds or is given up; the handler's tries,
    and the seconds it took."""
    tries: Counter[str] = Counter()
    app = _app(source, behave, tries)
    broker = MemoryBroker()
    began = time.monotonic()
    if source == "replay":
        await declare(app, broker)
        await _event(broker, source)
        job = Replay(app, broker, "clicks", "g", "1h", "0s", 3600.0, 1, None, now=time.time())
        await job.restore(False)
        await job.run(await job.plan(), lambda n: None)
        return tries, time.monotonic() - began
    dlq = "jobs.dlq" if source == "queue" else "clicks.g.dlq"
    async with Runtime(app, broker) as rt:
        await _event(rt.broker, source)

        async def settled() -> bool:
            return tries["ok"] > 0 or (await rt.broker.stats(dlq)).total > 0

        await until(settled, "the event to succeed or be dead-lettered")
    return tries, time.monotonic() - began


@pytest.mark.parametrize("source", ["queue", "group", "replay"])
async def test_retry_with_no_attempts_tries_five_times_everywhere(source: str) -> None:
    tries, _ = await _run(source, fails_until(99))

    assert tries == {"n": 5}


@pytest.mark.parametrize("source", ["queue", "group", "replay"])
async def test_a_throttle_with_retry_after_zero_is_tried_again_at_once_everywhere(
        source: str) -> None:
    tries, took_s = await _run(source, throttled_until(3))

    assert tries == {"n": 3, "ok": 1}
    assert took_s < 1.5  # two throttles, no wait (a wait of 1 s each was the bug)


@pytest.mark.parametrize("source", ["queue", "group", "replay"])
async def test_a_throttle_uses_up_no_attempt_everywhere(source: str) -> None:
    tries, _ = await _run(source, throttled_until(7))  # six throttles: more than the five attempts

    assert tries == {"n": 7, "ok": 1}
