"""Every public way to put an event somewhere takes the same targets: a declared queue, topic or
stream, or its name. A stream is fed like a queue (``ctx.publish``, ``app.publish``,
``Runtime.send``/``publish``), partitioned by key, and a consumer group reads each key in order;
on SQLite and on a NATS server the tests start. A name that is none of them is one error that
names what exists."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from support.eventually import until
from swell import App, Context, Event, Runtime
from swell.brokers.base import partition_of
from swell.core.errors import AppError, ConfigError, UnknownQueue

KEYS = 5
PER_KEY = 40


@pytest.fixture(params=["sqlite", "nats"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 's.db'}"
    server: str = request.getfixturevalue("nats_server")
    return f"{server}?namespace=p{uuid.uuid4().hex[:10]}"


def clicks_app() -> tuple[App, list[tuple[str, int, str]]]:
    """Pages come in on a queue; the handler appends a click per page to the stream ``clicks``
    (by name for even pages, by the declared object for odd ones); a group counts the clicks."""
    app = App("targets")
    clicks = app.stream("clicks", partitions=4)
    pages = app.queue("pages")
    seen: list[tuple[str, int, str]] = []

    @app.function(pages, concurrency=1)
    async def track(page: dict[str, Any], ctx: Context) -> None:
        target = "clicks" if page["n"] % 2 == 0 else clicks
        await ctx.publish(target, {"user": page["user"], "n": page["n"]}, key=page["user"])

    @app.function(clicks.group("counts", checkpoint_every=10), concurrency=4)
    async def count(event: Event[dict[str, Any]]) -> None:
        assert event.data is not None
        seen.append((event.data["user"], event.data["n"], event.key or ""))

    return app, seen


async def test_ctx_publish_appends_to_a_stream_read_in_order_per_key(url: str) -> None:
    app, seen = clicks_app()
    async with Runtime(app, url) as rt:
        for n in range(PER_KEY):  # pages in order, one handler at a time: clicks in order
            for k in range(KEYS):
                await rt.send("pages", {"user": f"u{k}", "n": n})
        await until(lambda: len(seen) >= KEYS * PER_KEY, "every click counted")

    assert len(seen) == KEYS * PER_KEY
    for k in range(KEYS):
        mine = [n for user, n, key in seen if user == f"u{k}"]
        assert mine == list(range(PER_KEY)), f"clicks of u{k} out of order"
        assert all(key == user for user, _, key in seen)


async def test_runtime_send_publish_and_app_publish_append_to_a_stream(url: str) -> None:
    app, seen = clicks_app()
    clicks = app.streams["clicks"]
    async with Runtime(app, url) as rt:
        await rt.send("clicks", {"user": "a", "n": 0}, key="a")
        await rt.publish("clicks", {"user": "a", "n": 1}, key="a")
        await rt.send(clicks, {"user": "a", "n": 2}, key="a")
        await app.publish(clicks, {"user": "a", "n": 3}, key="a")
        await app.publish("clicks", {"user": "a", "n": 4}, key="a")
        await until(lambda: len(seen) >= 5, "five clicks counted")
        records = [r for p in range(4) for r in await rt.broker.read("clicks", p)]

    assert [n for _, n, _ in seen] == [0, 1, 2, 3, 4]
    assert {r.partition for r in records} == {partition_of("a", 4, 0)}


async def test_an_event_without_a_key_is_partitioned_by_its_id(url: str) -> None:
    app = App("ids")
    app.stream("s", partitions=8)
    async with Runtime(app, url) as rt:
        ids = [await rt.send("s", {"i": i}) for i in range(40)]
        records = [r for p in range(8) for r in await rt.broker.read("s", p)]

    by_id = {Event.from_json(r.body).id: r for r in records}
    assert set(by_id) == set(ids)
    assert all(r.partition == partition_of(i, 8, 0) for i, r in by_id.items())
    assert all(Event.from_json(r.body).key is None for r in records)  # the envelope is as sent
    assert len({r.partition for r in records}) > 1, "keyless events should spread"


async def test_declared_objects_and_names_reach_queues_and_topics_alike(tmp_path: Path) -> None:
    app = App("alike")
    jobs = app.queue("jobs")
    news = app.topic("news")
    news.subscribe("all")
    async with Runtime(app, f"sqlite:///{tmp_path / 's.db'}") as rt:
        await rt.send(jobs, {"i": 1})
        await rt.send("jobs", {"i": 2})
        await app.publish(jobs, {"i": 3})
        await app.publish(news, {"i": 4}, subject="news.a")
        await rt.publish(news, {"i": 5})
        await rt.send("news", {"i": 6})
        stats = await rt.broker.stats_many(["jobs", "news.all"])

    assert (stats["jobs"].depth, stats["news.all"].depth) == (3, 3)


async def test_a_name_that_is_nothing_is_one_error_naming_what_exists(tmp_path: Path) -> None:
    app = App("unknown")
    app.queue("jobs")
    app.topic("news")
    app.stream("clicks")
    async with Runtime(app, f"sqlite:///{tmp_path / 's.db'}") as rt:
        puts: list[Callable[[], Awaitable[str]]] = [
            lambda: rt.send("nope", {}), lambda: rt.publish("nope", {}),
            lambda: app.publish("nope", {})]
        for put in puts:
            with pytest.raises(UnknownQueue) as info:
                await put()
            message = str(info.value)
            assert "'nope'" in message
            assert "queues: jobs" in message and "topics: news" in message
            assert "streams: clicks" in message and "jobs.dlq" not in message


async def test_a_stream_cannot_delay(tmp_path: Path) -> None:
    app = App("delay")
    app.stream("clicks")
    async with Runtime(app, f"sqlite:///{tmp_path / 's.db'}") as rt:
        with pytest.raises(ConfigError, match="cannot delay"):
            await rt.send("clicks", {}, delay_s=5)
        assert await rt.broker.end_offsets("clicks") == [0] * 8


def test_a_stream_queue_or_topic_name_is_taken_once() -> None:
    app = App("clash")
    app.queue("orders")
    app.topic("news")
    app.stream("clicks")
    with pytest.raises(AppError, match="'orders' is a queue already"):
        app.stream("orders")
    with pytest.raises(AppError, match="'news' is a topic already"):
        app.stream("news")
    with pytest.raises(AppError, match="'clicks' is a stream already"):
        app.queue("clicks")
    with pytest.raises(AppError, match="'clicks' is a stream already"):
        app.topic("clicks")
