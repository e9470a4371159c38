"""NATS only: configuration errors, lazy import, receipts bound to their broker, server restarts.

Every server here is one the tests started (``nats_server`` for the session, ``nats_servers`` for
a test's own); nothing talks to a server already running on the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import pytest

from swell.brokers.base import Message, QueueSpec
from swell.brokers.url import open_broker
from swell.core.errors import BrokerUnavailable, ConfigError, MissingDependency

if TYPE_CHECKING:
    from support.servers import NatsProcess
    from swell.brokers.nats import NatsBroker

if os.environ.get("CI", "").strip().lower() == "true":
    import nats as nats_py  # in CI the dev extra must have installed it
else:
    nats_py = pytest.importorskip("nats", reason="nats-py is not installed: pip install 'swell[nats]'")


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, text
    return text


@pytest.fixture
async def open_nats(nats_server: str) -> AsyncIterator[Callable[..., NatsBroker]]:
    """``open_nats(url=..., namespace=...)``: brokers on the session server (by default) in a
    fresh namespace; all closed after the test."""
    from swell.brokers.nats import NatsBroker

    opened: list[NatsBroker] = []
    namespace = f"t{uuid.uuid4().hex[:12]}"

    def make(url: str = nats_server, **kwargs: Any) -> NatsBroker:
        kwargs.setdefault("namespace", namespace)
        broker = NatsBroker(url, **kwargs)
        opened.append(broker)
        return broker

    yield make
    for broker in opened:
        await broker.close()


async def raw_api(url: str, op: str, body: dict[str, object] | None = None) -> dict[str, object]:
    """One JetStream API call on a connection of the test's own."""
    nc = await nats_py.connect(url)
    try:
        msg = await nc.request(f"$JS.API.{op}", json.dumps(body or {}).encode(), timeout=5)
        reply: dict[str, object] = json.loads(msg.data)
        return reply
    finally:
        await nc.close()


# -- configuration ------------------------------------------------------------------------------


def test_importing_swell_does_not_import_nats_py() -> None:
    code = ("import sys, swell, swell.brokers.url, swell.brokers.nats; "
            "assert 'nats' not in sys.modules, 'nats-py was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_nats_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from swell.brokers.nats import NatsBroker

    monkeypatch.setitem(sys.modules, "nats.aio.client", None)  # import fails as if absent
    with pytest.raises(MissingDependency) as caught:
        NatsBroker("nats://127.0.0.1:4222")
    assert "pip install 'swell[nats]'" in one_line(caught.value)


def test_open_broker_takes_nats_urls() -> None:
    from swell.brokers.nats import NatsBroker

    broker = open_broker("nats://127.0.0.1:4222?namespace=shop&storage=memory")
    assert isinstance(broker, NatsBroker)
    assert (broker.namespace, broker.storage, broker.url) == ("shop", "memory",
                                                               "nats://127.0.0.1:4222")
    for bad in ("nats://h:1?colour=red", "nats://h:1?namespace=a.b", "nats://h:1?storage=disk",
                "nats://h:1?replicas=0"):
        with pytest.raises(ConfigError) as caught:
            open_broker(bad)
        one_line(caught.value)


async def test_unreachable_server_is_one_clear_error(open_nats: Callable[..., NatsBroker]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"nats://127.0.0.1:{s.getsockname()[1]}"
    broker = open_nats(url, connect_timeout_s=3)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        await broker.declare_queue(QueueSpec(name="jobs"))
    assert url in one_line(caught.value)
    assert time.monotonic() - started < 3.5


async def test_server_without_jetstream_is_one_clear_error(
        open_nats: Callable[..., NatsBroker], nats_servers: Callable[..., NatsProcess]) -> None:
    server = nats_servers(jetstream=False)
    with pytest.raises(ConfigError) as caught:
        await open_nats(server.url).declare_queue(QueueSpec(name="jobs"))
    assert "-js" in one_line(caught.value)


@pytest.mark.parametrize("name", ["bad name", "a..b", "a.*", "a.>", ".a", "a.", "", "a/b"])
async def test_queue_name_that_is_no_subject_is_one_clear_error(
        open_nats: Callable[..., NatsBroker], name: str) -> None:
    broker = open_nats()
    with pytest.raises(ConfigError) as caught:
        await broker.declare_queue(QueueSpec(name=name))
    assert repr(name) in one_line(caught.value)
    assert await broker.queues() == []  # nothing was made


async def test_stream_swell_did_not_make_is_refused(
        open_nats: Callable[..., NatsBroker], nats_server: str) -> None:
    broker = open_nats()
    stream = f"swell-{broker.namespace}-jobs"
    await raw_api(nats_server, f"STREAM.CREATE.{stream}",
                  {"name": stream, "subjects": [f"theirs.{broker.namespace}"]})
    with pytest.raises(ConfigError) as caught:
        await broker.declare_queue(QueueSpec(name="jobs"))
    assert "did not make it" in one_line(caught.value)


async def test_stream_with_other_settings_is_refused_and_left_alone(
        open_nats: Callable[..., NatsBroker], nats_server: str) -> None:
    broker = open_nats()
    await broker.declare_queue(QueueSpec(name="jobs"))
    stream = f"swell-{broker.namespace}-jobs"
    config = (await raw_api(nats_server, f"STREAM.INFO.{stream}"))["config"]
    assert isinstance(config, dict)
    await raw_api(nats_server, f"STREAM.DELETE.{stream}")
    await raw_api(nats_server, f"STREAM.CREATE.{stream}", {**config, "retention": "limits"})

    with pytest.raises(ConfigError) as caught:
        await open_nats().declare_queue(QueueSpec(name="jobs"))

    assert "retention is 'limits', the app needs 'workqueue'" in one_line(caught.value)
    after = (await raw_api(nats_server, f"STREAM.INFO.{stream}"))["config"]
    assert isinstance(after, dict) and after["retention"] == "limits"  # never changed silently


async def test_max_message_bytes_over_the_servers_limit_is_refused(
        open_nats: Callable[..., NatsBroker]) -> None:
    with pytest.raises(ConfigError) as caught:
        await open_nats().declare_queue(QueueSpec(name="jobs", max_message_bytes=64 * 2**20))
    assert "max_message_bytes" in one_line(caught.value)


# -- receipts and connections -------------------------------------------------------------------


async def test_a_receipt_is_good_only_in_the_broker_that_received_it(
        open_nats: Callable[..., NatsBroker]) -> None:
    first, second = open_nats(), open_nats()
    await first.declare_queue(QueueSpec(name="jobs"))
    await first.send("jobs", [Message(body=b"x")])
    (d,) = await first.receive("jobs", 1)

    assert await second.ack([d.receipt]) == [d.receipt]  # JetStream would take it; swell not
    assert await first.ack([d.receipt]) == []
    assert (await second.stats("jobs")).total == 0


async def test_settings_declared_elsewhere_are_seen(open_nats: Callable[..., NatsBroker]) -> None:
    first, second = open_nats(), open_nats()
    spec = QueueSpec(name="jobs", visibility_timeout_s=7, max_receives=2)
    await first.declare_queue(spec)
    assert await second.queue_spec("jobs") == spec
    assert [s.name for s in await second.queues()] == ["jobs", "jobs.dlq"]


async def test_a_server_restart_ends_leases_honestly(
        open_nats: Callable[..., NatsBroker], nats_servers: Callable[..., NatsProcess]) -> None:
    # A lease the server could not be told to keep is not held: its receipt turns stale rather
    # than settle a message the server hands out again; the message itself survives.
    server = nats_servers()
    broker = open_nats(server.url)
    await broker.declare_queue(QueueSpec(name="jobs", visibility_timeout_s=1))
    await broker.send("jobs", [Message(body=b"x")])
    (d,) = await broker.receive("jobs", 1, visibility_timeout_s=30)  # kept alive by +WPI

    server.stop()
    await asyncio.sleep(1.5)  # past the server's ack wait, with no keep-alive confirmed
    server.start()

    assert await broker.ack([d.receipt]) == [d.receipt]
    async with asyncio.timeout(20):
        (again,) = await broker.receive("jobs", 1, wait_s=15)
    assert again.body == b"x"
    assert again.receive_count == 2
    assert await broker.ack([again.receipt]) == []
    assert (await broker.stats("jobs")).total == 0


async def test_settling_without_a_connection_is_an_error_not_a_silent_success(
        open_nats: Callable[..., NatsBroker], nats_servers: Callable[..., NatsProcess]) -> None:
    server = nats_servers()
    broker = open_nats(server.url)
    await broker.declare_queue(QueueSpec(name="jobs", visibility_timeout_s=30))
    await broker.send("jobs", [Message(body=b"x")])
    (d,) = await broker.receive("jobs", 1)

    server.stop()
    async with asyncio.timeout(15):
        with pytest.raises(BrokerUnavailable) as caught:
            await broker.ack([d.receipt])
    one_line(caught.value)

    server.start()
    async with asyncio.timeout(15):
        while True:  # once reconnected, the lease (30 s) still holds and the ack lands
            try:
                assert await broker.ack([d.receipt]) == []
                break
            except BrokerUnavailable:
                await asyncio.sleep(0.2)
    assert (await broker.stats("jobs")).total == 0
