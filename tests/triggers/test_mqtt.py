"""The MQTT source in-process, against a real Mosquitto the tests start: devices' readings in order
per device, the key rules, payload decoding and validation, rejects in the dead-letter queue, the
client-id slots and the adoption of a session whose node is gone, reconnecting, and the errors of
a bad declaration or an unreachable broker."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel

from support.mosquitto import Mosquitto, mosquitto  # noqa: F401
from support.servers import free_port
from swell.brokers.base import Broker, KiB, QueueSpec, StreamSpec
from swell.brokers.lease import machine_mark
from swell.brokers.producer import Producer
from swell.brokers.types import H_ERROR, H_REASON
from swell.brokers.url import open_broker
from swell.core import keys
from swell.core.clock import SYSTEM_CLOCK
from swell.core.errors import AppError
from swell.core.event import Event
from swell.triggers import mqtt_session
from swell.triggers.base import Emitter, SourceEnv
from swell.triggers.mqtt import MqttMessage, MqttSource

STREAM, DLQ = "telemetry", "t.dlq"


class Reading(BaseModel):
    device: str
    n: int


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    b = open_broker(f"sqlite:///{tmp_path / 'b.db'}")
    await b.declare_stream(StreamSpec(name=STREAM, partitions=4, max_message_bytes=4 * KiB))
    await b.declare_queue(QueueSpec(name=DLQ, max_receives=0, is_dead_letter=True,
                                    max_message_bytes=1024 * KiB))
    try:
        yield b
    finally:
        await b.close()


def fresh() -> str:
    """An app name (and topic root) of the test's own on the shared Mosquitto."""
    return f"a{uuid.uuid4().hex[:10]}"


def env_for(broker: Broker, source: MqttSource, app: str, node: str = "n1") -> SourceEnv:
    emitter = Emitter(Producer(broker, source="/t", streams=[STREAM]), broker.kv, source.target,
                      source.stats, source=f"/swell/{app}/mqtt/{source.name}",
                      dead_letter=source.dead_letter)
    return SourceEnv(app=app, node=node, emitter=emitter, kv=broker.kv, clock=SYSTEM_CLOCK)


async def until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running(source: MqttSource, env: SourceEnv) -> AsyncIterator[MqttSource]:
    task = asyncio.create_task(source.run(env))
    try:
        await until(lambda: bool(source.detail()["connected"]) or task.done(), "the subscription")
        if task.done():
            task.result()
        yield source
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def publish(url: str, messages: Sequence[tuple[str, bytes]], *,
                  properties: dict[str, str] | None = None) -> None:
    """QoS 1, each acknowledged by the broker before the next (one device's order)."""
    port = int(url.rsplit(":", 1)[1])
    props = None
    if properties:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = list(properties.items())
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1, properties=props)


async def events(broker: Broker) -> list[Event[Any]]:
    out = []
    for p in range(4):
        out += [Event.from_json(r.body) for r in await broker.read(STREAM, p, 0, 10_000)]
    return out


async def dead(broker: Broker) -> list[tuple[str, str, Event[Any]]]:
    return [(d.headers[H_REASON], d.headers.get(H_ERROR, ""), Event.from_json(d.body))
            for d in await broker.peek(DLQ, 1000)]


def slot(app: str, i: int) -> str:
    """The kv key of source t's client-id slot i."""
    return keys.source_state(app, "t", f"slots/{i}")


def source(url: str, app: str, **kwargs: Any) -> MqttSource:
    kwargs.setdefault("topics", [f"{app}/+/temp"])
    return MqttSource("t", url=url, to=STREAM, dead_letter=DLQ, **kwargs)


# -- order, keys ------------------------------------------------------------------------------------
async def test_three_devices_arrive_in_order_per_device_keyed_by_device(
        broker: Broker, mosquitto: str) -> None:  # noqa: F811
    app = fresh()
    src = source(mosquitto, app)
    n = 150
    async with running(src, env_for(broker, src, app)):
        await asyncio.gather(*(publish(mosquitto, [(f"{app}/d{d}/temp",
                                                    b'{"device": "d%d", "n": %d}' % (d, i))
                                                   for i in range(n)]) for d in range(3)))
        await until(lambda: src.stats.emitted >= 3 * n, "every reading")
    got = await events(broker)
    assert len(got) == 3 * n
    for d in range(3):
        mine = [e for e in got if e.key == f"d{d}"]
        # in one partition, in the order published
        assert [e.data["n"] for e in mine] == list(range(n))  # type: ignore[index]
        assert {e.subject for e in mine} == {f"{app}/d{d}/temp"}
        assert mine[0].extensions == {"mqtttopic": f"{app}/d{d}/temp", "mqttqos": 1,
                                      "mqttretain": False}
    assert src.stats.pending == 0 and src.stats.received == 3 * n


async def test_a_burst_is_absorbed_and_its_backlog_is_shown(broker: Broker,
                                                             mosquitto: str) -> None:  # noqa: F811
    app = fresh()
    src = source(mosquitto, app)
    n, seen = 10_000, []
    async with running(src, env_for(broker, src, app)):
        port = int(mosquitto.rsplit(":", 1)[1])
        async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5,
                                  max_inflight_messages=1000) as client:
            client.pending_calls_threshold = n
            for start in range(0, n, 1000):  # up to 1,000 in flight at once
                await asyncio.gather(*(client.publish(f"{app}/d{i % 10}/temp", b"%d" % i, qos=1)
                                       for i in range(start, start + 1000)))
                seen.append(src.stats.pending)

        def stored() -> bool:
            seen.append(src.stats.pending)
            return src.stats.emitted == n

        await until(stored, "the whole burst", 30)
    assert max(seen) > 0 and src.stats.pending == 0  # a backlog, shown, then drained
    got = await events(broker)
    assert len(got) == n
    for d in range(10):  # each device's readings still in order
        assert [int(e.data) for e in got if e.key == f"d{d}"] == list(range(d, n, 10))  # type: ignore[arg-type]


@pytest.mark.parametrize(("key", "expected"), [
    (None, ["d1", "d2"]),  # the first filter's first '+'
    (2, ["temp", "temp"]),
    (lambda m: m.properties.get("dev", "") + m.topic[-1], ["xp", "xp"]),
])
async def test_the_key_rules(broker: Broker, mosquitto: str, key: Any,  # noqa: F811
                             expected: list[str]) -> None:
    app = fresh()
    src = source(mosquitto, app, key=key)
    async with running(src, env_for(broker, src, app)):
        await publish(mosquitto, [(f"{app}/d1/temp", b"1"), (f"{app}/d2/temp", b"2")],
                      properties={"dev": "x"})
        await until(lambda: src.stats.emitted == 2, "both")
    assert sorted(e.key or "" for e in await events(broker)) == expected


async def test_a_device_id_that_cannot_be_a_key_is_dead_lettered_and_the_rest_go_on(
        broker: Broker, mosquitto: str) -> None:  # noqa: F811
    app = fresh()

    def key(m: MqttMessage) -> str:
        dev = m.topic.split("/")[1]
        if dev == "boom":
            raise RuntimeError("no device here")
        return "" if dev == "empty" else "x" * 300 if dev == "long" else dev

    src = source(mosquitto, app, key=key)
    async with running(src, env_for(broker, src, app)):
        await publish(mosquitto, [(f"{app}/{d}/temp", b"{}") for d in
                                  ("ok1", "boom", "empty", "long", "ok2")])
        await until(lambda: src.stats.emitted == 2 and sum(src.stats.rejected.values()) == 3,
                    "2 events and 3 rejects")
    assert sorted(e.key or "" for e in await events(broker)) == ["ok1", "ok2"]
    rejects = await dead(broker)
    assert sorted(e.subject or "" for _, _, e in rejects) == [
        f"{app}/boom/temp", f"{app}/empty/temp", f"{app}/long/temp"]
    assert {reason for reason, _, _ in rejects} == {"bad_key"}
    assert any("no device here" in error for _, error, _ in rejects)
    assert src.stats.rejected == {"bad_key": 3}


# -- payloads ---------------------------------------------------------------------------------------
async def test_json_is_validated_by_the_model_and_bad_payloads_go_to_the_dlq_with_reasons(
        broker: Broker, mosquitto: str) -> None:  # noqa: F811
    app = fresh()
    src = source(mosquitto, app, model=Reading)
    async with running(src, env_for(broker, src, app)):
        await publish(mosquitto, [
            (f"{app}/d1/temp", b'{"device": "d1", "n": "7"}'),   # coerced by the model
            (f"{app}/d1/temp", b"not json {"),
            (f"{app}/d1/temp", b'{"device": "d1"}'),             # n missing
            (f"{app}/d1/temp", b'{"device": "%s", "n": 1}' % (b"x" * 5000)),
            (f"{app}/d1/temp", b'{"device": "d1", "n": 8}'),
        ], properties={"Site": "lyon", "trace-id": "t1"})
        await until(lambda: src.stats.emitted == 2 and sum(src.stats.rejected.values()) == 3,
                    "2 events and 3 rejects")
    got = await events(broker)
    assert [e.data for e in got] == [{"device": "d1", "n": 7}, {"device": "d1", "n": 8}]
    # user properties: a valid extension name in lower case, the others together as JSON
    assert got[0].extensions["site"] == "lyon"
    assert msgspec.json.decode(got[0].extensions["mqttproperties"]) == {"trace-id": "t1"}
    rejects = {reason: (error, e) for reason, error, e in await dead(broker)}
    assert set(rejects) == {"malformed", "invalid", "too_large"}
    assert rejects["malformed"][1].data == b"not json {"  # the payload, kept as bytes
    assert "not JSON" in rejects["malformed"][0]
    assert "Reading" in rejects["invalid"][0] and "n" in rejects["invalid"][0]
    assert "over the 4,096-byte limit" in rejects["too_large"][0]
    assert src.stats.rejected == {"malformed": 1, "invalid": 1, "too_large": 1}


async def test_bytes_payloads_are_kept_as_they_are(broker: Broker, mosquitto: str) -> None:  # noqa: F811
    app = fresh()
    src = source(mosquitto, app, payload="bytes", topics=[f"{app}/#"])
    async with running(src, env_for(broker, src, app)):
        await publish(mosquitto, [(f"{app}/cam/1", b"\x00\xff raw")])
        await until(lambda: src.stats.emitted == 1, "the event")
    (event,) = await events(broker)
    assert event.data == b"\x00\xff raw" and event.key == f"{app}/cam/1"  # no '+': the topic
    assert event.datacontenttype == "application/octet-stream"


# -- client ids ------------------------------------------------------------------------------------
async def test_nodes_take_distinct_slots_and_a_dead_holders_slot_is_free_at_once(
        broker: Broker, mosquitto: str) -> None:  # noqa: F811
    app = fresh()
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()  # a pid of this host that no longer runs
    dead_holder = f"{socket.gethostname()}-{gone.pid}-{machine_mark()}dead"
    await broker.kv.put(slot(app, 0), dead_holder.encode(), ttl_s=60)
    await broker.kv.put(slot(app, 1), b"elsewhere-1-e15e", ttl_s=60)
    a, b = source(mosquitto, app), source(mosquitto, app)
    async with running(a, env_for(broker, a, app, "n1")), \
            running(b, env_for(broker, b, app, "n2")):
        assert a.detail()["client_id"] == f"swell-{app}-t-0"  # the dead holder's, at once
        assert b.detail()["client_id"] == f"swell-{app}-t-2"  # slot 1 is held elsewhere
        assert a.detail()["filters"] == [f"$share/{app}/{app}/+/temp"]
        # shared: each message reaches one of them
        await publish(mosquitto, [(f"{app}/d{i % 5}/temp", b"%d" % i) for i in range(100)])
        await until(lambda: a.stats.emitted + b.stats.emitted == 100, "100 events")
    assert len(await events(broker)) == 100
    assert await broker.kv.get(slot(app, 0)) is None  # given back at stop


async def test_a_node_that_loses_its_slot_reconnects_under_another_id(
        broker: Broker, mosquitto: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(mqtt_session, "SLOT_TTL_S", 3.0)  # due for renewal every second
    app = fresh()
    src = source(mosquitto, app)
    async with running(src, env_for(broker, src, app)):
        assert src.detail()["client_id"] == f"swell-{app}-t-0"
        entry = await broker.kv.get(slot(app, 0))
        assert entry is not None
        # another node's now (a partition healed, say): this one must give the id up
        await broker.kv.put(slot(app, 0), b"elsewhere-1-e15e", ttl_s=60)
        await until(lambda: src.detail().get("client_id") == f"swell-{app}-t-1"
                    and src.detail()["connected"], "a connection under slot 1")
        # (what the broker routes to session t-0 meanwhile waits there for slot 0's new holder)


async def test_the_session_of_a_node_gone_for_good_is_adopted_and_nothing_is_stranded(
        broker: Broker, mosquitto: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(mqtt_session, "ADOPT_S", 0.5)
    app = fresh()

    def readings(start: int, n: int) -> list[tuple[str, bytes]]:
        return [(f"{app}/d{i % 5}/temp", b'{"seq": %d}' % i) for i in range(start, start + n)]

    def stored() -> int:
        return sum(s.stats.emitted for s in nodes)

    a, b, c = source(mosquitto, app), source(mosquitto, app), source(mosquitto, app)
    nodes = [a, b, c]
    async with running(a, env_for(broker, a, app, "n1")):
        async with running(b, env_for(broker, b, app, "n2")):
            assert b.detail()["client_id"] == f"swell-{app}-t-1"
            await publish(mosquitto, readings(0, 50))
            await until(lambda: stored() == 50, "the first 50")
            assert a.stats.emitted and b.stats.emitted  # both members of the share group
            # n2's host dies: its lease stays until it lapses (its session stays in Mosquitto)
            await broker.kv.put(slot(app, 1), b"elsewhere-1-e15e", ttl_s=60)
        before = a.stats.received
        await publish(mosquitto, readings(50, 200))  # some routed to n2's offline session
        await asyncio.sleep(0.5)  # a has what reached it (no adoption: slot 1 looks held)
        await until(lambda: a.stats.pending == 0, "a's share stored")
        assert 0 < a.stats.received - before < 200, "none waiting in n2's session?"
        assert a.detail()["slots"] == [0]
        await broker.kv.delete(slot(app, 1))  # n2's lease lapses: a adopts its session
        await until(lambda: stored() == 250, "every reading, n2's share through a")
        assert a.detail()["slots"] == [0, 1] and a.detail()["connected"]
        assert a.detail()["client_ids"] == [f"swell-{app}-t-0", f"swell-{app}-t-1"]
        (adopted,) = a.detail()["adopted"]
        assert adopted["client_id"] == f"swell-{app}-t-1" and adopted["connected"]
        # n2 restarted: its slot is a's now, so it takes a new one
        async with running(c, env_for(broker, c, app, "n2")):
            assert c.detail()["client_id"] == f"swell-{app}-t-2"
            assert c.detail()["slots"] == [2] and c.detail()["adopted"] == []
            count = await broker.kv.get(keys.source_state(app, "t", "slots"))
            assert count is not None and count.value == b"3"
            await publish(mosquitto, readings(250, 30))
            await until(lambda: stored() == 280, "the last 30")
    # each reading stored once: n2 acknowledged what it stored before it went, a what it drained
    seqs = sorted(e.data["seq"] for e in await events(broker))  # type: ignore[index]
    assert seqs == list(range(280))
    for i in range(3):  # a graceful stop gives every slot back, adopted ones too
        assert await broker.kv.get(slot(app, i)) is None


# -- the broker ------------------------------------------------------------------------------------
async def test_an_unreachable_broker_is_one_clear_error_at_start() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    src = MqttSource("t", url=url, topics=["a/+"], to=STREAM)
    with pytest.raises(AppError, match=f"cannot reach the MQTT broker at {url}: "
                                          "connection refused"):
        await src.prepare()


async def test_an_outage_is_shown_and_the_source_reconnects(broker: Broker,
                                                             tmp_path: Path) -> None:
    server = Mosquitto(tmp_path).start()
    app = fresh()
    try:
        src = source(server.url, app)
        await src.prepare()
        async with running(src, env_for(broker, src, app)):
            server.stop()
            await until(lambda: not src.detail()["connected"], "the outage")
            assert src.stats.last_error and src.detail()["last_outage"]["error"]
            await asyncio.to_thread(server.start)
            await until(lambda: src.detail()["connected"], "the reconnection", 20)
            assert src.stats.last_error is None
            assert src.detail()["last_outage"]["for_s"] > 0
            await publish(server.url, [(f"{app}/d1/temp", b"1")])
            await until(lambda: src.stats.emitted == 1, "an event after it")
    finally:
        server.stop()


# -- declarations ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"url": "http://h:1883"}, "url must be mqtt://"),
    ({"url": "mqtt://h:99999"}, "url must be mqtt://"),
    ({"topics": []}, "topics must be a non-empty list"),
    ({"topics": "a/b"}, "topics must be a non-empty list"),
    ({"topics": ["a/b#"]}, "bad topic filter 'a/b#'"),
    ({"topics": ["a/#/b"]}, "bad topic filter"),
    ({"topics": ["a/x+"]}, "bad topic filter"),
    ({"qos": 2}, "qos must be 0 or 1"),
    ({"payload": "xml"}, "payload must be 'json' or 'bytes'"),
    ({"payload": "bytes", "model": Reading}, "model must be a pydantic model"),
    ({"key": "1"}, "key must be a topic segment's index"),
    ({"session_expiry": 0}, "session_expiry must be above zero"),
    ({"max_pending": 0}, "max_pending must be a whole number"),
])
def test_a_bad_declaration_is_one_clear_error(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"url": "mqtt://127.0.0.1:1883", "topics": ["a/+/t"], **kwargs}
    with pytest.raises(AppError, match=message):
        MqttSource("t", to=STREAM, **args)


async def test_a_dead_letter_too_big_with_its_properties_goes_without_them(broker: Broker) -> None:
    from swell.triggers.mqtt import _reject

    src = source("mqtt://127.0.0.1:1883", "big")
    msg = MqttMessage(topic="plant/d1/temp", payload=b"{", qos=1, retain=False,
                      properties={"huge": "x" * 700_000})
    small = _reject(env_for(broker, src, "big"), msg, {"huge": "x" * 700_000})
    assert small.extensions == {} and small.data == b"{"
    assert len(small.to_json()) < 1024


async def test_a_kv_store_that_does_not_answer_is_not_a_lost_slot(broker: Broker) -> None:
    from swell.brokers.lease import Lease
    from swell.triggers.mqtt_session import holds

    lease = Lease(broker.kv, "swell/test/slot", "n1", SYSTEM_CLOCK, ttl_s=15.0)
    assert await holds(lease) is True
    await broker.close()  # the kv store fails now
    lease.renewed -= 10.0  # (due for renewal)
    assert await holds(lease) is None  # unknown: the session is kept, not closed as taken
