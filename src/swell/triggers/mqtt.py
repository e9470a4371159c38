"""IoT telemetry over MQTT: each message on the topic filters becomes one event keyed by its device.

MQTT 5, QoS 1, a persistent session (``clean_start=False``, kept ``session_expiry``): what arrives
while swell is down waits in the broker. Messages are acknowledged in the order received, once
their events or dead letters are stored (in batches of what arrived): nothing acknowledged is lost
when swell dies; what was stored, not yet acknowledged, comes again. ``max_pending`` is the
session's Receive Maximum. With ``shared``, the subscription is ``$share/<app>/<filter>`` (each
message reaches one node). A node connects as ``swell-<app>-<source>-<i>``, ``<i>`` a slot it
holds a kv ``Lease`` on: an id of its own (a broker drops the first of two connections with one
id), the same after a restart, to resume its session; and it adopts the slots (the sessions) of
nodes gone for good, so nothing routed to them is stranded: see ``swell.triggers.mqtt_session``.
With ``client_id`` given: that one id, no slots (a single node).

A payload not JSON (``malformed``), invalid against ``model`` (``invalid``), too large for the
channel (``too_large``), a device id that cannot be a key (``bad_key``): to ``<name>.dlq`` with
the reason, then acknowledged. An unreachable broker is one error at start-up; later outages are
retried with capped, jittered backoff, shown in ``swell status`` and logged once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, cast
from urllib.parse import unquote, urlsplit

import msgspec

from swell.core.config import Duration, seconds
from swell.core.errors import AppError, MessageTooLarge, MissingDependency, PayloadError, SwellError
from swell.core.event import RESERVED_ATTRIBUTES, Event
from swell.triggers.base import SourceEnv, SourceStats
from swell.triggers.mqtt_session import PROBE_S, Link, Sessions

if TYPE_CHECKING:
    import aiomqtt

__all__ = ["EVENT_TYPE", "MqttMessage", "MqttSource"]

EVENT_TYPE = "swell.mqtt"
MAX_KEY = 256  # the longest device id (characters) a key may be
KEEP_BYTES = 256 * 1024  # what a dead letter keeps of a rejected payload
KEEP_EVENT_BYTES = 512 * 1024  # a dead letter bigger than this goes without its attributes
_EXT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


@dataclass(frozen=True)
class MqttMessage:
    """An MQTT message, as a ``key`` function sees it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, str] = field(default_factory=dict)  # its MQTT 5 user properties


class _Rejected(Exception):  # (reason, error): a message that cannot be an event
    pass


_Events = list[tuple[Event[Any], "MqttMessage"]]
_Rejects = list[tuple[Event[Any], str, str | None]]


class MqttSource:
    """Events from MQTT messages on ``topics``; see the module's docstring and ``App.mqtt``."""

    kind: ClassVar[str] = "mqtt"

    def __init__(self, name: str, *, url: str, topics: Sequence[str], to: str, qos: int = 1,
                 key: int | Callable[[MqttMessage], str] | None = None, payload: str = "json",
                 model: type | None = None, shared: bool = True, client_id: str | None = None,
                 session_expiry: Duration = "1d", max_pending: int = 10_000,
                 dead_letter: str | None = None) -> None:
        what = f"mqtt {name!r}"
        self.name, self.target, self.dead_letter = name, to, dead_letter
        host, port, tls, user, password = _parse_url(what, url)
        for bad, rule in [
            (isinstance(topics, str) or not topics, "topics must be a non-empty list of topic "
             f"filters, such as ['plant/+/temp'], not {topics!r}"),
            (qos not in (0, 1) or isinstance(qos, bool), "qos must be 0 or 1 (1: at least once, "
             f"acknowledged once stored; QoS 2 is not supported), not {qos!r}"),
            (payload not in ("json", "bytes"), f"payload must be 'json' or 'bytes', not {payload!r}"),
            (model is not None and (payload != "json" or not hasattr(model, "model_validate")),
             "model must be a pydantic model, with payload='json'"),
            (not (key is None or callable(key) or type(key) is int), "key must be a topic "
             f"segment's index, a function of the message, or None, not {key!r}"),
            (client_id is not None and (not isinstance(client_id, str) or not client_id),
             "client_id must be a non-empty string"),
            (type(max_pending) is not int or max_pending < 1,
             "max_pending must be a whole number above zero")]:
            if bad:
                raise AppError(f"{what}: {rule}")
        self.topics = [_check_filter(what, t) for t in topics]
        try:
            expiry = seconds(session_expiry, name=f"{what} session_expiry", positive=True)
        except SwellError as exc:
            raise AppError(str(exc)) from None
        self.session_expiry_s = min(max(expiry, 1.0), float(0xFFFFFFFF))
        self.qos, self.payload, self.model, self.shared = qos, payload, model, shared
        self.client_id, self.max_pending = client_id, max_pending
        first = self.topics[0].split("/")[2 if self.topics[0].startswith("$share/") else 0:]
        self._key = key if key is not None else first.index("+") if "+" in first else None
        self.stats, self._app = SourceStats(), "<app>"
        self._link = Link(host, port, tls, user, password, self.session_expiry_s, max_pending, qos)
        self._sessions: Sessions | None = None

    def detail(self) -> dict[str, Any]:
        """Broker, filters; the node's own client id (and slot), connected (all its sessions;
        since), last outage; messages in the last second; the slots and client ids it holds
        (``slots: [0, 2]``: its own first, then those it adopted) and each adopted session."""
        sessions = self._sessions.detail() if self._sessions is not None else \
            {"connected": False, "since": None}
        return {"url": self._link.shown, "filters": self.filters(), **sessions}

    def filters(self) -> list[str]:
        """The subscriptions (``$share/<app>/<filter>`` when ``shared``)."""
        return [f"$share/{self._app}/{t}" if self.shared and not t.startswith("$share/") else t
                for t in self.topics]

    async def prepare(self) -> None:
        """The extra is installed and the broker answers (one try), else one clear error."""
        try:
            import aiomqtt
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingDependency("aiomqtt", "mqtt") from exc
        try:
            async with asyncio.timeout(PROBE_S), \
                    self._link.client(f"swell-probe-{uuid.uuid4().hex[:12]}", None,
                                      persistent=False):
                pass
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:  # ("[Errno 111] Connection ...")
            why = f"no answer within {PROBE_S:g} s" if isinstance(exc, TimeoutError) else \
                (str(exc) or type(exc).__name__).split("] ", 1)[-1]
            raise AppError(f"mqtt {self.name!r}: cannot reach the MQTT broker at "
                           f"{self._link.shown}: {why[:1].lower()}{why[1:]}") from None

    async def run(self, env: SourceEnv) -> None:
        """Hold a client id (or several: see ``swell.triggers.mqtt_session``), connect, subscribe,
        store, acknowledge; after an outage, again."""
        self._app = env.app
        self._sessions = Sessions(self.name, replace(self._link, filters=tuple(self.filters())),
                                  self._batch, self.stats, self.client_id)
        await self._sessions.run(env)

    def _batch(self, env: SourceEnv,
               received: list[aiomqtt.Message]) -> Callable[[], Awaitable[None]]:
        """What arrived as events and rejects; the step that stores them (retried as it is)."""
        events, rejects = self._convert(env, received)
        return partial(self._store, env, events, rejects)

    def _convert(self, env: SourceEnv, received: list[aiomqtt.Message]) -> tuple[_Events, _Rejects]:
        events: _Events = []
        rejects: _Rejects = []
        for msg in map(_message, received):
            attributes = _attributes(msg)
            try:
                key, data = self._key_of(msg), self._decode(msg.payload)
            except _Rejected as exc:
                rejects.append((_reject(env, msg, attributes), *exc.args))
                continue
            events.append((env.emitter.event(
                data, type=EVENT_TYPE, subject=msg.topic, key=key, attributes=attributes,
                datacontenttype="application/octet-stream" if self.payload == "bytes" else None),
                msg))
        return events, rejects

    def _key_of(self, msg: MqttMessage) -> str:
        """The device id; ``_Rejected`` if there is none that can be a key."""
        rule, segments = self._key, msg.topic.split("/")
        if isinstance(rule, int) and not -len(segments) <= rule < len(segments):
            raise _Rejected("bad_key", f"topic {msg.topic!r} has no segment {rule}")
        try:
            key = msg.topic if rule is None else segments[rule] if isinstance(rule, int) \
                else rule(msg)
        except Exception as exc:  # the app's function: its failure is this message's
            raise _Rejected("bad_key", f"key function failed: {exc!r}") from None
        if not isinstance(key, str) or not key or len(key) > MAX_KEY or not key.isprintable():
            raise _Rejected("bad_key", f"device id {key!r} of topic {msg.topic!r} cannot be a "
                                       f"key: a key is 1 to {MAX_KEY} printable characters")
        return key

    def _decode(self, payload: bytes) -> Any:
        if self.payload == "bytes":
            return payload
        try:
            data = msgspec.json.decode(payload)
        except msgspec.DecodeError as exc:
            raise _Rejected("malformed", f"payload is not JSON: {exc}") from None
        try:  # (pydantic's ValidationError, or a validator's own error)
            return data if self.model is None else \
                cast(Any, self.model).model_validate(data).model_dump(mode="json")
        except Exception as exc:
            raise _Rejected("invalid", f"payload is not a valid {cast(Any, self.model).__name__}: "
                                       f"{exc}") from None

    async def _store(self, env: SourceEnv, events: _Events, rejects: _Rejects) -> None:
        """Store the events (then forgotten: a retry does not append them again) and the rejects
        (a dead-letter queue drops an id it holds). A batch the channel refuses (an event too
        large, or invalid) is stored one by one, the refused ones as rejects."""
        try:
            await env.emitter.emit([e for e, _ in events], dedup=False)
        except (MessageTooLarge, PayloadError):
            for event, msg in list(events):
                try:
                    await env.emitter.emit([event], dedup=False)
                except (MessageTooLarge, PayloadError) as exc:
                    reason = "too_large" if isinstance(exc, MessageTooLarge) else "invalid"
                    rejects.append((_reject(env, msg, _attributes(msg)), reason, str(exc)))
                del events[0]
        events.clear()
        await env.emitter.dead_letter(rejects)


def _parse_url(what: str, url: object) -> tuple[str, int, bool, str | None, str | None]:
    """Host, port, TLS, user and password of ``mqtt[s]://[user:password@]host[:port]``."""
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        port = parts.port if parts else None
    except ValueError:  # a port that is not one
        parts = None
    if parts is None or parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise AppError(f"{what}: url must be mqtt://[user:password@]host[:port] (or mqtts:// for "
                       f"TLS), not {url!r}")
    tls = parts.scheme == "mqtts"
    return (parts.hostname, port or (8883 if tls else 1883), tls,
            unquote(parts.username or "") or None, unquote(parts.password or "") or None)


def _check_filter(what: str, topic: object) -> str:
    levels = topic.split("/") if isinstance(topic, str) and topic and "\0" not in topic else ["#", ""]
    if not any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels) \
            and "#" not in levels[:-1]:
        return cast(str, topic)
    raise AppError(f"{what}: bad topic filter {topic!r}: levels joined by '/', where '+' "
                   "stands for one whole level and '#' for the rest (last level only)")


def _message(m: aiomqtt.Message) -> MqttMessage:
    raw = m.payload if isinstance(m.payload, bytes) else str(m.payload or "").encode()
    users = getattr(m.properties, "UserProperty", None) or []
    return MqttMessage(topic=m.topic.value, payload=bytes(raw), qos=m.qos, retain=bool(m.retain),
                       properties={str(k): str(v) for k, v in users})


def _attributes(msg: MqttMessage) -> dict[str, Any]:
    """Its topic, QoS, retain flag and user properties (each under its name in lower case if that
    is a valid extension name, the others as a JSON object in ``mqttproperties``)."""
    out: dict[str, Any] = {"mqtttopic": msg.topic, "mqttqos": msg.qos, "mqttretain": msg.retain}
    odd: dict[str, str] = {}
    for name, value in msg.properties.items():
        ext = name.lower()
        if (0 < len(ext) <= 20 and _EXT_CHARS.issuperset(ext) and not ext.startswith("mqtt")
                and ext not in RESERVED_ATTRIBUTES):
            out[ext] = value
        else:
            odd[name] = value
    if odd:
        out["mqttproperties"] = msgspec.json.encode(odd).decode()
    return out


def _reject(env: SourceEnv, msg: MqttMessage, attributes: dict[str, Any]) -> Event[Any]:
    """A dead letter's event: the payload as bytes (its first ``KEEP_BYTES``), the topic as
    subject and the attributes; without them if they do not make a valid event."""
    for subject, attrs in ((msg.topic, {**attributes, "mqttsize": len(msg.payload)}), (None, {})):
        event = env.emitter.event(msg.payload[:KEEP_BYTES], type=EVENT_TYPE, subject=subject,
                                  datacontenttype="application/octet-stream", attributes=attrs)
        with suppress(PayloadError):
            if len(event.to_json()) <= KEEP_EVENT_BYTES:  # (huge user properties: left out)
                break
    return event

