"""What every part of the NATS backend shares on the wire: settings, header names, how names,
kv keys, headers and times are written, and JetStream's refusals as errors."""

from __future__ import annotations

import hashlib
import json
import re
import string
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from swell.brokers.base import KiB
from swell.core.errors import BrokerError, BrokerUnavailable, ConfigError, MissingDependency

if TYPE_CHECKING:
    from nats.aio.msg import Msg

MIN_SERVER = (2, 12)
CONSUMER = "swell"
REQUEST_TIMEOUT_S = 5.0
#: the shortest duplicate window the server takes (a queue's ``dedup_window=0`` gets this)
MIN_DEDUP_WINDOW_S = 0.1
#: the most entries one kv scan reads (the server's own cap on a batched direct get)
SCAN_BATCH = 1024
CONNECT_TIMEOUT_S = 5.0
PING_INTERVAL_S = 10
SPEC_REFRESH_S = 5.0
LONG_POLL_S = 5.0
PULL_BATCH = 256
#: a pull waits at least this long: the server may answer "no messages" to a pull that comes right
#: after a publish, before the consumer has heard of the message
MIN_PULL_WAIT_S = 0.02
#: a message that arrives later than this after its pull is taken to have left the server this
#: much before it arrived (the server's ack wait started then)
ARRIVAL_MARGIN_S = 0.05
#: a lease whose deadline is this close to the server's ack wait needs no nak of ours
LEASE_TOLERANCE_S = 0.005
HEADER_ROOM = 8 * KiB

H_HEADERS = "Swell-Headers"
H_ENQUEUED = "Swell-Enqueued-At"
H_BASE = "Swell-Receives"
H_FIRST = "Swell-First-Received-At"
H_EXPIRES = "Swell-Expires-At"
SPEC_KEY = "swell.spec"
SUBSCRIPTION_KEY = "swell.subscription"

NAMESPACE = re.compile(r"[A-Za-z0-9_]{1,64}")
NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
"""A queue, topic or stream name: a subject of plain tokens."""
KEY_SAFE = frozenset(string.ascii_letters + string.digits + "_-")
SAFE_ID = re.compile(r"[!-~]{1,200}")

ERR_STREAM_NOT_FOUND = 10059
ERR_CONSUMER_NOT_FOUND = 10014
ERR_WRONG_LAST_SEQUENCE = 10071
#: refusals of a cluster between leaders or with a node catching up (incomplete results, JetStream
#: temporarily unavailable, not the leader, stream or consumer offline): they pass, so they are
#: ``BrokerUnavailable`` and the caller tries again
ERR_PASSING = frozenset({10004, 10008, 10009, 10118, 10119})

OPTIONS = frozenset({"namespace", "replicas", "storage", "connect_timeout"})


def import_nats() -> None:
    """``MissingDependency`` naming the extra if nats-py is not installed."""
    try:
        import nats.aio.client  # noqa: F401
    except ImportError as exc:
        raise MissingDependency("nats-py", "nats") from exc


# -- names ------------------------------------------------------------------------------------


def check_name(name: str, kind: str = "queue") -> str:
    """``name`` if it can be a ``kind`` on NATS (a subject of plain tokens), else ``ConfigError``."""
    if not NAME.fullmatch(name) or len(name) > 200:
        raise ConfigError(f"{kind} name {name!r} is not valid on NATS: use dot-separated tokens of "
                          "letters, digits, '_' and '-' (at most 200 characters)")
    return name


def check_queue_name(name: str) -> str:
    """``name`` if it can be a queue on NATS (a subject of plain tokens), else ``ConfigError``."""
    return check_name(name)


def stream_part(name: str) -> str:
    """A queue, topic or stream name as a part of a JetStream stream name."""
    # a prefix code, so distinct queues never share a stream name: '-' -> '--', '.' -> '-_'
    return name.replace("-", "--").replace(".", "-_")


def queue_names(namespace: str, queue: str) -> tuple[str, str, str]:
    """(stream, subject, prefix of scheduled messages) of ``queue``."""
    check_queue_name(queue)
    return (f"swell-{namespace}-{stream_part(queue)}",
            f"swell.{namespace}.q.{queue}", f"swell.{namespace}.d.{queue}")


def encode_key(key: str) -> str:
    """A kv key as subject tokens: one token per ``/``-separated segment (so a scan by prefix is a
    subject filter), each segment's other characters escaped as ``=XX``; an empty segment is ``=``."""
    return ".".join(encode_segment(seg) for seg in key.split("/"))


def encode_segment(seg: str) -> str:
    """``seg`` as one subject token (see ``encode_key``)."""
    if not seg:
        return "="
    out: list[str] = []
    for ch in seg:
        if ch in KEY_SAFE:
            out.append(ch)
        else:
            out.extend(f"={b:02X}" for b in ch.encode())
    return "".join(out)


def decode_key(subject: str) -> str:
    """The kv key that ``encode_key`` wrote as ``subject``."""
    return "/".join(decode_segment(token) for token in subject.split("."))


def decode_segment(token: str) -> str:
    """The text that ``encode_segment`` wrote as ``token``."""
    if token == "=":
        return ""
    raw, i = bytearray(), 0
    while i < len(token):
        if token[i] == "=":
            raw.append(int(token[i + 1:i + 3], 16))
            i += 3
        else:
            raw.extend(token[i].encode())
            i += 1
    return raw.decode()


def key_filter(prefix: str) -> str:
    """The subject filter of the keys that may start with ``prefix``: its whole segments, then ``>``."""
    return ".".join([*map(encode_segment, prefix.split("/")[:-1]), ">"])


def msg_id(value: str) -> str:
    """A dedup id as a header value: printable ASCII as is, anything else by its hash."""
    if SAFE_ID.fullmatch(value):
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


# -- times and headers ------------------------------------------------------------------------


def nanos(seconds: float) -> int:
    """A duration as JetStream takes it: whole nanoseconds, at least one."""
    return max(1, round(seconds * 1e9))


def rfc3339(epoch: float) -> str:
    """Epoch seconds as an RFC 3339 UTC time with microseconds."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def schedule_at(epoch: float) -> str:
    """A ``Nats-Schedule`` that fires once at ``epoch``."""
    return "@at " + rfc3339(epoch)


def parse_ts(text: str) -> float:
    """An RFC 3339 timestamp with up to nanoseconds (as JetStream writes them) as epoch seconds."""
    text = text.rstrip("Z")
    whole, _, frac = text.partition(".")
    base = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def encode_headers(headers: dict[str, str] | None) -> str | None:
    """A message's own headers as the value of ``H_HEADERS`` (``None`` for none)."""
    # one ASCII line: a user's header values may hold newlines (tracebacks) or any character
    return json.dumps(headers, separators=(",", ":")) if headers else None


def decode_headers(raw: str | None) -> dict[str, str]:
    """The headers ``encode_headers`` wrote."""
    if not raw:
        return {}
    decoded = json.loads(raw)
    return {str(k): str(v) for k, v in decoded.items()}


def message_headers(headers: dict[str, str] | None, dedup_id: str | None,
                    into: dict[str, str]) -> dict[str, str]:
    """``into`` with a message's own headers and its dedup id (``Nats-Msg-Id``) added."""
    encoded = encode_headers(headers)
    if encoded:
        into[H_HEADERS] = encoded
    if dedup_id is not None:
        into["Nats-Msg-Id"] = msg_id(dedup_id)
    return into


def sequence(msg: Msg) -> int:
    """The stream sequence of a message read directly (``Nats-Sequence``)."""
    return int((msg.headers or {}).get("Nats-Sequence", "0"))


def status(msg: Msg) -> str | None:
    """The status of a message that is one (no data, a ``Status`` header), else ``None``."""
    return msg.headers.get("Status") if msg.headers and not msg.data else None


def description(msg: Msg) -> str:
    """The ``Description`` header of a status message."""
    return (msg.headers or {}).get("Description", "")


# -- errors -----------------------------------------------------------------------------------


class TooMany(BrokerError):
    """A batched direct get that would answer more messages than the server sends at once."""


class ApiError(BrokerError):
    """JetStream refused a request; ``err_code`` says why."""

    def __init__(self, op: str, error: dict[str, Any]) -> None:
        self.code = int(error.get("code", 0))
        self.err_code = int(error.get("err_code", 0))
        self.description = str(error.get("description", ""))
        super().__init__(f"JetStream refused {op}: {self.description} "
                         f"(code {self.code}, err_code {self.err_code})")


class ApiUnavailable(ApiError, BrokerUnavailable):
    """A refusal that passes (``ERR_PASSING``): the cluster is electing a leader or catching up."""


def refusal(op: str, error: dict[str, Any]) -> ApiError:
    """JetStream's ``error`` answer to ``op`` as the error to raise."""
    passing = int(error.get("err_code", 0)) in ERR_PASSING
    return (ApiUnavailable if passing else ApiError)(op, error)


# -- url options ------------------------------------------------------------------------------


def url_options(query: str) -> dict[str, str]:
    """The options of a ``nats://`` URL's query; ``ConfigError`` for one that is not known."""
    options = dict(parse_qsl(query))
    unknown = set(options) - OPTIONS
    if unknown:
        raise ConfigError(f"unknown NATS option(s) {sorted(unknown)}; known: {sorted(OPTIONS)}")
    return options


def int_option(options: dict[str, str], name: str, default: int) -> int:
    """A whole-number option of at least 1."""
    try:
        value = int(options.get(name, default))
    except ValueError:
        raise ConfigError(f"NATS option {name} must be a whole number, not "
                          f"{options[name]!r}") from None
    if value < 1:
        raise ConfigError(f"NATS option {name} must be at least 1, not {value}")
    return value
