"""NATS JetStream: ``nats://host:port`` (``pip install 'swell[nats]'``, nats-server 2.12 or newer).

How the queue protocol maps onto JetStream
------------------------------------------

- **A queue is a stream** ``swell-<namespace>-<queue>`` (work-queue retention: an acked message is
  gone) holding the subject ``swell.<namespace>.q.<queue>``, with **one durable pull consumer**
  ``swell``. The queue's ``visibility_timeout_s`` is the consumer's ack wait, its
  ``dedup_window_s`` the stream's duplicate window (``dedup_id`` travels as ``Nats-Msg-Id``). The
  declared ``QueueSpec`` is kept in the stream's metadata, which is what ``queues()`` and
  ``queue_spec()`` read. Declaring creates the stream and consumer, or checks them: settings swell
  owns (ack wait, duplicate window, the stored spec) follow the declaration (logged); anything else
  that differs (retention, subjects, storage, replicas, a stream swell did not make) is a
  ``ConfigError``, never changed. A queue name must be a dotted name of ``[A-Za-z0-9_-]`` tokens.
- **Receipts** are ``Receipt(queue, stream sequence, consumer delivery sequence)``. JetStream
  itself takes an ack for an old delivery of a message, so each broker keeps the leases it handed
  out and refuses a receipt that is not its latest, live lease: a receipt is good in the broker
  that received it, until its lease ends (expiry, settle, or redelivery).
- **The receive count** is the delivery count from the message metadata, plus a ``Swell-Receives``
  base that a re-published copy carries (below). Past ``max_receives`` a receive moves the message
  to its dead-letter queue (a publish there, then an ack) with the reason in its headers.
- **Leases**: the consumer's ack wait is the lease the server enforces. A receive with another
  ``visibility_timeout_s``, and ``extend``, are kept by this broker: a longer lease is held with
  in-progress acks (``+WPI``) sent before the server's ack wait runs out, the last one timed so the
  server's redelivery falls on the deadline; a shorter one ends with a ``-NAK`` at its deadline. If
  the process dies the server's ack wait still ends the lease. A lease counts as held only up to the
  last ack wait the server confirmed, so after a lost connection a receipt turns stale rather than
  settle a message the server may have handed to someone else.
- ``release(delay_s)`` is a ``-NAK`` with that delay. ``release(count=False)`` cannot be a nak
  (JetStream counts every delivery): the message is re-published with its receive count, first
  receive time and enqueue time in headers (scheduled if delayed) and the original is acked; it gets
  a new id and joins the back of the queue, like any released message.
- **Delayed sends** are JetStream message schedules (``Nats-Schedule: @at ...``, server 2.12+): a
  holder message on ``swell.<namespace>.d.<queue>.<id>`` that the server turns into a queue message
  when due. The server fires schedules up to about 0.25 s late.
- **Receives** are pulls with ``no_wait`` and an expiry: the server answers as soon as it has
  anything (up to the batch) or when ``wait_s`` runs out. Even ``wait_s=0`` waits up to 20 ms,
  because a pull right after a publish can otherwise be told "no messages" before the consumer has
  heard of it; with that, a receive sees every send that returned before it.
- ``stats``: the stream's message count on the queue's subject (the rest of the stream is
  scheduled, so ``delayed``) and the consumer's ``num_ack_pending`` (leased) give ready =
  stored - leased. JetStream does not tell a nak'd message waiting out its delay, or an expired
  lease waiting for redelivery, from a live lease; this broker moves the ones it knows of (its own
  releases and expiries) to ``delayed`` and ``depth``, so a single process sees exact numbers, and
  another process's delayed releases count as in flight until they are due and received again.
  ``oldest_age_s`` is read from the first message of the stream.
- ``peek`` reads the stream directly (including scheduled messages); its receive counts are what
  this broker knows. ``purge`` purges the stream. ``redrive`` leases the dead letters from the
  dead-letter queue's consumer, re-publishes them and acks them.
- ``first_received_at`` is exact for a first delivery and for redeliveries to the broker that saw
  the first one (and travels with a re-published copy); a redelivery to another process reports
  ``None`` (unknown).
- Times (``enqueued_at``, schedules, ack waits) are the server's wall clock and this broker's
  clock together, so the broker's clock must be the real one (the default).

The kv store is a JetStream key-value bucket ``swell_<namespace>``: the revision is the stream
sequence (never reused), create-if-absent and compare-and-set are writes with an expected last
subject sequence, a TTL is an expiry time in a header (checked on read, exact) and a per-message
TTL a little longer (``Nats-TTL``) so the server drops expired entries. A key is one subject token
per ``/``-separated segment (other characters escaped), so ``scan`` by a prefix reads only the
keys under its whole segments.

Topics (a stream per topic that the subscriptions' queue streams source from) are in
``nats_topics.py``; streams (one JetStream stream, a subject per partition) in ``nats_logs.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import re
import secrets
import string
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl

import msgspec

from swell.brokers.base import (
    REASON_MAX_RECEIVES,
    Delivery,
    KiB,
    KvEntry,
    Message,
    QueueSpec,
    QueueStats,
    Receipt,
    SubscriptionSpec,
    TopicInfo,
    TopicSpec,
    check_sizes,
    dead_letter_headers,
    redrive_headers,
)
from swell.brokers.topics import Router
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    MissingDependency,
    UnknownQueue,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from swell.brokers.base import Record, StreamSpec
    from swell.brokers.nats_logs import NatsLogs
    from swell.brokers.nats_topics import NatsTopics

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_SERVER = (2, 12)
CONSUMER = "swell"
REQUEST_TIMEOUT_S = 5.0
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

_NAMESPACE = re.compile(r"[A-Za-z0-9_]{1,64}")
_QUEUE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_KEY_SAFE = frozenset(string.ascii_letters + string.digits + "_-")
_SAFE_ID = re.compile(r"[!-~]{1,200}")

ERR_STREAM_NOT_FOUND = 10059
ERR_CONSUMER_NOT_FOUND = 10014
ERR_WRONG_LAST_SEQUENCE = 10071
#: refusals of a cluster between leaders or with a node catching up (incomplete results, JetStream
#: temporarily unavailable, not the leader, stream or consumer offline): they pass, so they are
#: ``BrokerUnavailable`` and the caller tries again
ERR_PASSING = frozenset({10004, 10008, 10009, 10118, 10119})


def _import_nats() -> None:
    try:
        import nats.aio.client  # noqa: F401
    except ImportError as exc:
        raise MissingDependency("nats-py", "nats") from exc


# -- names ------------------------------------------------------------------------------------


def check_queue_name(name: str) -> str:
    """``name`` if it can be a queue on NATS (a subject of plain tokens), else ``ConfigError``."""
    if not _QUEUE.fullmatch(name) or len(name) > 200:
        raise ConfigError(f"queue name {name!r} is not valid on NATS: use dot-separated tokens of "
                          "letters, digits, '_' and '-' (at most 200 characters)")
    return name


def _stream_part(queue: str) -> str:
    # a prefix code, so distinct queues never share a stream name: '-' -> '--', '.' -> '-_'
    return queue.replace("-", "--").replace(".", "-_")


def _enc_key(key: str) -> str:
    """A kv key as subject tokens: one token per ``/``-separated segment (so a scan by prefix is a
    subject filter), each segment's other characters escaped as ``=XX``; an empty segment is ``=``."""
    return ".".join(_enc_segment(seg) for seg in key.split("/"))


def _enc_segment(seg: str) -> str:
    if not seg:
        return "="
    out: list[str] = []
    for ch in seg:
        if ch in _KEY_SAFE:
            out.append(ch)
        else:
            out.extend(f"={b:02X}" for b in ch.encode())
    return "".join(out)


def _dec_key(subject: str) -> str:
    return "/".join(_dec_segment(token) for token in subject.split("."))


def _dec_segment(token: str) -> str:
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


def _key_filter(prefix: str) -> str:
    """The subject filter of the keys that may start with ``prefix``: its whole segments, then ``>``."""
    return ".".join([*map(_enc_segment, prefix.split("/")[:-1]), ">"])


def _msg_id(value: str) -> str:
    """A dedup id as a header value: printable ASCII as is, anything else by its hash."""
    if _SAFE_ID.fullmatch(value):
        return value
    import hashlib

    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def _ns(seconds: float) -> int:
    return max(1, round(seconds * 1e9))


def _at(epoch: float) -> str:
    return "@at " + datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_ts(text: str) -> float:
    """An RFC 3339 timestamp with up to nanoseconds (as JetStream writes them) as epoch seconds."""
    text = text.rstrip("Z")
    whole, _, frac = text.partition(".")
    base = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def _enc_headers(headers: dict[str, str] | None) -> str | None:
    # one ASCII line: a user's header values may hold newlines (tracebacks) or any character
    return json.dumps(headers, separators=(",", ":")) if headers else None


def _dec_headers(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    decoded = json.loads(raw)
    return {str(k): str(v) for k, v in decoded.items()}


def _status(msg: Msg) -> str | None:
    return msg.headers.get("Status") if msg.headers and not msg.data else None


class _TooMany(BrokerError):
    """A batched direct get that would answer more messages than the server sends at once."""


class _ApiError(BrokerError):
    def __init__(self, op: str, error: dict[str, Any]) -> None:
        self.code = int(error.get("code", 0))
        self.err_code = int(error.get("err_code", 0))
        self.description = str(error.get("description", ""))
        super().__init__(f"JetStream refused {op}: {self.description} "
                         f"(code {self.code}, err_code {self.err_code})")


class _ApiUnavailable(_ApiError, BrokerUnavailable):
    """A refusal that passes (``ERR_PASSING``): the cluster is electing a leader or catching up."""


def _refusal(op: str, error: dict[str, Any]) -> _ApiError:
    passing = int(error.get("err_code", 0)) in ERR_PASSING
    return (_ApiUnavailable if passing else _ApiError)(op, error)


# -- leases -----------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Lease:
    """A delivery this broker handed out. After release or expiry it stays (for ``stats``) until
    it is received again, settled, or forgotten."""

    queue: str
    sseq: int
    token: int
    reply: str
    ack_wait_s: float
    deadline: float  # when the lease ends (broker clock)
    server_until: float  # the server holds it at least this long (its last confirmed ack wait)
    count: int
    body: bytes
    headers: dict[str, str]
    enqueued_at: float
    first_received_at: float | None
    ready_at: float | None = None  # set once given back: visible again from then on
    keeper: asyncio.Task[None] | None = None

    @property
    def held_until(self) -> float:
        return min(self.deadline, self.server_until)

    def next_action(self, now: float) -> tuple[str, float] | None:
        """What keeps this lease honest next: a ``nak`` at the deadline, or a ``wpi`` that holds
        it past the server's ack wait; ``None`` when the server's ack wait ends it on time."""
        if self.ready_at is not None:
            return None
        if self.deadline <= self.server_until + LEASE_TOLERANCE_S:
            if self.server_until - self.deadline > LEASE_TOLERANCE_S:
                return "nak", self.deadline
            return None
        safety = min(self.ack_wait_s / 4, 2.0)
        when = min(self.server_until - safety, self.deadline - self.ack_wait_s)
        return "wpi", max(now, when)


@dataclass(slots=True)
class _QueueInfo:
    spec: QueueSpec
    stream: str
    subject: str
    delayed_prefix: str
    ack_wait_s: float
    loaded_at: float
    subscription: SubscriptionSpec | None = None
    """Set for a subscription's queue, whose consumer applies its content filter."""
    router: Router | None = None


class _PullInbox:
    """The subscription a pull is answered on, and what reached it. Deliveries keep their stream
    subject, so two pulls at once cannot share one; a pull that ended cleanly (its batch full, or
    the server's end-of-pull status) leaves it quiet, and the next pull takes it over."""

    __slots__ = ("clock", "ended", "got", "nc", "sub", "want")

    def __init__(self, nc: Client, clock: Clock) -> None:
        self.nc = nc
        self.clock = clock
        self.sub: Subscription | None = None
        self.got: list[tuple[float, Msg]] = []  # (arrival time, message), statuses included
        self.want = 0  # deliveries the current pull still waits for
        self.ended: asyncio.Future[None] | None = None

    async def deliver(self, msg: Msg) -> None:
        self.got.append((self.clock.time(), msg))
        status = _status(msg)
        if status is None:
            self.want -= 1
            if self.want > 0:
                return
        elif status == "100":  # a heartbeat
            return
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)


# -- the broker -------------------------------------------------------------------------------


class NatsBroker:
    """Queues and kv on NATS JetStream. See the module docstring for how each call maps.

    ``url`` is ``nats://[user:pass@]host:port`` (several comma-separated for a cluster) with
    optional query options ``namespace``, ``replicas``, ``storage`` (``file`` or ``memory``) and
    ``connect_timeout`` (seconds); keyword arguments win over the URL. Every stream and bucket of
    one ``namespace`` belongs to it, so two apps (or test runs) on one server never meet.
    """

    def __init__(self, url: str, *, clock: Clock = SYSTEM_CLOCK, namespace: str | None = None,
                 replicas: int | None = None, storage: str | None = None,
                 connect_timeout_s: float | None = None) -> None:
        _import_nats()
        base, _, query = url.partition("?")
        options = _options(query)
        self.url = base
        self.clock = clock
        self.namespace = namespace or options.get("namespace", "swell")
        if not _NAMESPACE.fullmatch(self.namespace):
            raise ConfigError(f"NATS namespace {self.namespace!r} must be 1-64 of [A-Za-z0-9_]")
        self.replicas = replicas or _int_option(options, "replicas", 1)
        self.storage = storage or options.get("storage", "file")
        if self.storage not in ("file", "memory"):
            raise ConfigError(f"NATS storage must be file or memory, not {self.storage!r}")
        self.connect_timeout_s = connect_timeout_s or float(
            _int_option(options, "connect_timeout", int(CONNECT_TIMEOUT_S)))
        self._servers = [s.strip() for s in base.split(",") if s.strip()]
        self._nc: Client | None = None
        self._connecting = asyncio.Lock()
        self._inbox = ""
        self._boxes: dict[str, asyncio.Queue[Msg]] = {}
        self._tokens = itertools.count(1)
        self._queues: dict[str, _QueueInfo] = {}
        self._topics: NatsTopics | None = None
        self._leases: dict[tuple[str, int], _Lease] = {}
        self._firsts: dict[tuple[str, int], float] = {}
        self._pull_inboxes: list[_PullInbox] = []  # quiet ones, for the next pull
        self._closed_fut: asyncio.Future[Any] | None = None  # done once closing (for waits)
        self._closing = asyncio.Event()
        self._closed = False
        self._kv = NatsKV(self)

    @property
    def kv(self) -> NatsKV:
        return self._kv

    def __repr__(self) -> str:
        return f"NatsBroker({self.url!r}, namespace={self.namespace!r})"

    # -- connection ------------------------------------------------------------------------
    async def _client(self) -> Client:
        if self._closed:
            raise BrokerError(f"the NATS broker on {self.url} is closed")
        if self._nc is None:
            async with self._connecting:
                if self._nc is None:
                    self._nc = await self._connect()
        return self._nc

    async def _connect(self) -> Client:
        from nats.aio.client import Client

        nc = Client()
        first_errors: list[BaseException] = []
        gave_up = asyncio.Event()
        connected = False

        async def on_error(exc: Exception) -> None:
            if not connected:  # the first connect gives up once every server refused
                first_errors.append(exc)
                if len(first_errors) >= len(self._servers):
                    gave_up.set()
            else:
                log.warning("NATS %s: %s", self.url, exc)

        async def on_disconnect() -> None:
            if connected and not self._closed:  # a failed first connect is one error, below
                log.warning("NATS %s: disconnected; reconnecting (a lease whose ack wait is not "
                            "confirmed in time turns stale)", self.url)

        async def on_reconnect() -> None:
            log.warning("NATS %s: reconnected", self.url)

        connecting = asyncio.ensure_future(nc.connect(
            servers=self._servers, error_cb=on_error, disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect, name=f"swell:{self.namespace}", allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=1,
            # a server gone without closing the socket (a partition, a power cut) is noticed
            # after two unanswered pings rather than the client's default four minutes
            ping_interval=PING_INTERVAL_S, max_outstanding_pings=2,
            connect_timeout=max(1, math.ceil(self.connect_timeout_s))))
        giving_up = asyncio.ensure_future(gave_up.wait())
        try:
            await asyncio.wait((connecting, giving_up), timeout=self.connect_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            giving_up.cancel()
        if not connecting.done() or connecting.cancelled() or connecting.exception() is not None:
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            with contextlib.suppress(Exception):
                await nc.close()
            why = first_errors[-1] if first_errors else f"no answer in {self.connect_timeout_s:g} s"
            raise BrokerUnavailable(f"cannot reach NATS at {self.url}: {why}")
        connected = True
        try:
            await self._check_server(nc)
            self._inbox = nc.new_inbox()
            await nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        except BaseException:
            await nc.close()
            raise
        return nc

    async def _check_server(self, nc: Client) -> None:
        import nats.errors

        v = nc.connected_server_version
        if (v.major, v.minor) < MIN_SERVER:
            raise ConfigError(f"nats-server {v.major}.{v.minor}.{v.patch} at {self.url} is too "
                              f"old: swell needs {'.'.join(map(str, MIN_SERVER))} or newer "
                              "(message schedules)")
        try:
            await nc.request("$JS.API.INFO", b"", timeout=REQUEST_TIMEOUT_S)
        except nats.errors.NoRespondersError:
            raise ConfigError(f"JetStream is not enabled at {self.url}: "
                              "start nats-server with -js") from None
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            # JetStream is there (a server without it says "no responders" at once) but does not
            # answer: a cluster electing its metadata leader. What needs it will say so.
            log.warning("NATS %s: JetStream did not answer yet (%r); going on", self.url, exc)

    async def _request(self, subject: str, payload: bytes = b"",
                       headers: dict[str, str] | None = None) -> Msg:
        import nats.errors

        nc = await self._client()
        try:
            # our own timeout, not the client's: Python 3.11's wait_for (which the client uses)
            # can drop a cancel that arrives as the reply lands, and a stop would then hang
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await nc.request(subject, payload, timeout=None,  # type: ignore[arg-type]
                                        headers=headers)
        except nats.errors.NoRespondersError as exc:  # in a cluster: its leader is being elected
            raise BrokerUnavailable(f"nothing at NATS {self.url} answers {subject!r} (yet)") from exc
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise BrokerUnavailable(f"NATS at {self.url} did not answer: {exc!r}") from exc

    async def _api(self, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        msg = await self._request(f"$JS.API.{op}",
                                  b"" if body is None else json.dumps(body).encode())
        resp: dict[str, Any] = json.loads(msg.data)
        if "error" in resp:
            raise _refusal(op, resp["error"])
        return resp

    async def _ack_request(self, reply: str, kind: bytes) -> None:
        """An ack of any kind (``+ACK``, ``-NAK``, ``+WPI``) that waits until the server applied
        it, so what follows sees it done and a lost connection shows as an error."""
        await self._request(reply, kind)

    # -- replies: publishes and reads share one inbox subscription; pulls have their own --
    @contextlib.contextmanager
    def _box(self) -> Iterator[tuple[str, asyncio.Queue[Msg]]]:
        token = str(next(self._tokens))
        box: asyncio.Queue[Msg] = asyncio.Queue()
        self._boxes[token] = box
        try:
            yield f"{self._inbox}.{token}", box
        finally:
            del self._boxes[token]

    async def _on_reply(self, msg: Msg) -> None:
        box = self._boxes.get(msg.subject.rsplit(".", 1)[-1])
        if box is not None:  # else a reply nobody waits for any more
            box.put_nowait(msg)

    async def _next(self, box: asyncio.Queue[T], limit_s: float) -> T | None:
        """The next reply in ``box``; ``None`` after ``limit_s`` or when the broker closes."""
        if not box.empty():
            return box.get_nowait()
        if limit_s <= 0 or self._closing.is_set():
            return None
        getter = asyncio.ensure_future(box.get())
        try:
            await asyncio.wait((getter, self._closing_future()), timeout=limit_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """Publish to JetStream and wait for its ack (``{"seq": ..., "duplicate": ...}``)."""
        return (await self._publish_all([(subject, body, headers)]))[0]

    async def _publish_all(self, items: Sequence[tuple[str, bytes, dict[str, str]]]
                           ) -> list[dict[str, Any]]:
        """Publish in order, pipelined (one round trip for the lot), and wait for every ack."""
        if len(items) == 1:  # one message (``swell send``, a paced producer): a plain request
            import nats.errors

            subject, body, headers = items[0]
            nc = await self._client()
            try:
                # a deadline of ours: nats-py's is a wait_for, which (Python 3.11) can swallow a
                # cancellation that lands just as the answer comes, and leave a stopping task on
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    answer = await nc.request(subject, body, timeout=None,  # type: ignore[arg-type]
                                              headers=headers or None)
            except nats.errors.NoRespondersError as exc:  # no stream has the subject now
                raise BrokerUnavailable(f"no stream at {self.url} takes {subject!r} now "
                                        "(electing its leader, or deleted)") from exc
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                raise BrokerUnavailable(f"NATS at {self.url} did not confirm a message on "
                                        f"{subject!r}: {exc!r}") from exc
            single: dict[str, Any] = json.loads(answer.data)
            if "error" in single:
                raise _refusal(f"a publish on {subject}", single["error"])
            return [single]
        nc = await self._client()
        loop = asyncio.get_running_loop()
        acks: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            boxes = []
            try:
                for subject, body, headers in items:
                    reply, box = stack.enter_context(self._box())
                    boxes.append((subject, box))
                    await nc.publish(subject, body, reply=reply, headers=headers or None)
            except Exception as exc:
                raise BrokerUnavailable(f"NATS at {self.url} took no message: {exc!r}") from exc
            end = loop.time() + REQUEST_TIMEOUT_S + 0.001 * len(boxes)
            for subject, box in boxes:
                msg = await self._next(box, end - loop.time())
                if msg is None:
                    raise BrokerUnavailable(f"NATS at {self.url} did not confirm a message on "
                                            f"{subject!r} in time")
                if _status(msg) is not None:  # 503: nothing stored; the stream has no leader
                    raise BrokerUnavailable(f"no stream at {self.url} takes {subject!r} now "
                                            "(electing its leader, or deleted)")
                ack: dict[str, Any] = json.loads(msg.data)
                if "error" in ack:
                    raise _refusal(f"a publish on {subject}", ack["error"])
                acks.append(ack)
        return acks

    async def _pull(self, info: _QueueInfo, batch: int,
                    wait_s: float) -> list[tuple[float, Msg]]:
        """One pull: up to ``batch`` messages, as soon as there are any, waiting up to ``wait_s``
        (at least ``MIN_PULL_WAIT_S``) for the first. Each comes with the time its lease began.

        A pull is answered on an inbox of its own (``_PullInbox``), kept for the next pull when
        this one ended cleanly; when it did not (closing, no answer in time, cancelled) the inbox
        is dropped and what reaches it after the pull gave up is nak'd."""
        nc = await self._client()
        wait_s = max(wait_s, MIN_PULL_WAIT_S)
        # no_wait with expires: the server answers as soon as it has anything, else at expiry
        request = {"batch": batch, "no_wait": True, "expires": _ns(wait_s)}
        loop = asyncio.get_running_loop()
        inbox = await self._pull_inbox(nc)
        assert inbox.sub is not None
        strays, inbox.got, inbox.want = inbox.got, [], batch
        ended = inbox.ended = loop.create_future()
        await self._nak_late(strays)  # none unless the server answered an ended pull again
        out: list[tuple[float, Msg]] = []
        try:
            sent = self.clock.time()  # the server's ack waits start after this
            try:
                await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{info.stream}.{CONSUMER}",
                                 json.dumps(request).encode(), reply=inbox.sub.subject)
            except Exception as exc:  # closed, or the buffer of a reconnecting client is full
                raise BrokerUnavailable(f"NATS at {self.url} took no pull: {exc!r}") from exc
            if not self._closing.is_set():
                await asyncio.wait((ended, self._closing_future()),
                                   timeout=wait_s + REQUEST_TIMEOUT_S,
                                   return_when=asyncio.FIRST_COMPLETED)
            got, inbox.got = inbox.got, []
            for at, msg in got:
                status = _status(msg)
                if status is None:
                    out.append((max(sent, at - ARRIVAL_MARGIN_S), msg))
                elif status != "100":  # 404 no (more) messages, 408 expired, 409 refused: done
                    if status in ("409", "503") and not out:
                        # 503: no consumer leader (yet); 409: a leader change, a server shutting
                        # down, or the consumer deleted (the next declaration check makes it again)
                        raise BrokerUnavailable(
                            f"JetStream took no pull from {info.stream} now: {status} "
                            f"{(msg.headers or {}).get('Description', '')}".rstrip())
                    break
        finally:
            if ended.done() and inbox.nc is self._nc:
                self._pull_inboxes.append(inbox)
            else:
                with contextlib.suppress(Exception):
                    await inbox.sub.unsubscribe()
                await self._nak_late(inbox.got)
        return out

    def _closing_future(self) -> asyncio.Future[Any]:
        """A future done once the broker closes, shared by the waits of the data path (so a wait
        starts no task of its own to watch ``_closing``)."""
        fut = self._closed_fut
        if fut is None or fut.get_loop() is not asyncio.get_running_loop():
            fut = asyncio.ensure_future(self._closing.wait())
            self._closed_fut = fut
        return fut

    async def _pull_inbox(self, nc: Client) -> _PullInbox:
        """A quiet pull inbox of ``nc``'s, or a new one."""
        while self._pull_inboxes:
            inbox = self._pull_inboxes.pop()
            if inbox.nc is nc and not nc.is_closed:
                return inbox
        inbox = _PullInbox(nc, self.clock)
        try:
            inbox.sub = await nc.subscribe(nc.new_inbox(), cb=inbox.deliver)
        except Exception as exc:  # a closed client
            raise BrokerUnavailable(f"NATS at {self.url} took no pull: {exc!r}") from exc
        return inbox

    @staticmethod
    async def _nak_late(got: list[tuple[float, Msg]]) -> None:
        """Give back deliveries that reached a pull after it gave up."""
        for _, late in got:
            if _status(late) is None and late.reply:
                with contextlib.suppress(Exception):
                    await late.nak()

    async def _direct(self, stream: str, request: dict[str, Any]) -> list[Msg]:
        """A batched direct get: the messages up to the end-of-batch marker."""
        nc = await self._client()
        loop = asyncio.get_running_loop()
        end = loop.time() + REQUEST_TIMEOUT_S
        out: list[Msg] = []
        with self._box() as (reply, box):
            try:
                await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(),
                                 reply=reply)
            except Exception as exc:  # closed, or the buffer of a reconnecting client is full
                raise BrokerUnavailable(f"NATS at {self.url} took no read: {exc!r}") from exc
            while True:
                msg = await self._next(box, end - loop.time())
                if msg is None:
                    if self._closing.is_set():
                        break
                    raise BrokerUnavailable(f"NATS at {self.url} did not answer a read of "
                                            f"{stream}")
                status = _status(msg)
                if status is not None:  # the end of the batch (204), or none at all (404)
                    if status == "413":
                        raise _TooMany(f"NATS: more results than one read of {stream} takes")
                    if status not in ("204", "404"):
                        raise BrokerError(f"NATS refused a read of {stream}: {status} "
                                          f"{(msg.headers or {}).get('Description', '')}")
                    break
                out.append(msg)
        return out

    # -- declarations ----------------------------------------------------------------------
    def _names(self, queue: str) -> tuple[str, str, str]:
        """(stream, subject, prefix of scheduled messages) of ``queue``."""
        check_queue_name(queue)
        return (f"swell-{self.namespace}-{_stream_part(queue)}",
                f"swell.{self.namespace}.q.{queue}", f"swell.{self.namespace}.d.{queue}")

    async def declare_queue(self, spec: QueueSpec, *,
                            subscription: SubscriptionSpec | None = None) -> None:
        specs = [s for s in (spec, spec.dlq_spec()) if s is not None]
        for s in specs:
            self._names(s.name)  # every name checked before anything is made
        nc = await self._client()
        for s in specs:
            if s.max_message_bytes + HEADER_ROOM > nc.max_payload:
                raise ConfigError(f"queue {s.name!r}: max_message_bytes {s.max_message_bytes:,} is "
                                  f"over what the NATS server takes ({nc.max_payload:,} bytes "
                                  f"less {HEADER_ROOM:,} for headers)")
        for s in specs:
            await self._declare(s, is_main=s is spec, subscription=subscription if s is spec else None)

    async def _declare(self, spec: QueueSpec, *, is_main: bool,
                       subscription: SubscriptionSpec | None = None) -> None:
        stream, subject, delayed = self._names(spec.name)
        wanted = self._stream_config(spec, stream, subject, delayed)
        if subscription is not None:  # fed from the topic's stream, from its next message on
            _, last = await self.topics_part.topic_spec(subscription.topic)
            wanted["sources"] = self.topics_part.sources(subscription, last + 1)
            wanted["metadata"][SUBSCRIPTION_KEY] = msgspec.json.encode(subscription).decode()
            wanted["subjects"] = [subject]  # delays are scheduled in the topic's stream
            wanted["allow_msg_schedules"] = False
        config = await self._stream(stream, wanted, f"queue {spec.name!r}", "swell.queue")
        stored = _stored_spec(config)
        meta = config.get("metadata") or {}
        if not is_main and stored is not None and not stored.is_dead_letter:
            spec = stored  # a dead-letter queue declared as a queue of its own keeps its settings
        elif (stored != spec or config.get("duplicate_window") != wanted["duplicate_window"]
              or meta.get(SUBSCRIPTION_KEY) != wanted["metadata"].get(SUBSCRIPTION_KEY)):
            log.info("queue %r: stored settings updated as declared (stream %s)", spec.name, stream)
            config["duplicate_window"] = wanted["duplicate_window"]
            config["metadata"] = {**meta, **wanted["metadata"]}
            if meta.get(SUBSCRIPTION_KEY) != wanted["metadata"].get(SUBSCRIPTION_KEY):
                config["sources"] = wanted.get("sources")  # a changed subscription: from now on
            await self._api(f"STREAM.UPDATE.{stream}", config)
        sub, router = _routing(config)
        ack_wait = await self._ensure_consumer(spec, stream, None if sub else subject)
        self._queues[spec.name] = _QueueInfo(spec, stream, subject, delayed, ack_wait,
                                             self.clock.monotonic(), sub, router)

    async def _stream(self, stream: str, wanted: dict[str, Any], what: str,
                      owner: str) -> dict[str, Any]:
        """The config of ``stream``, created as ``wanted`` if it does not exist. A stream that swell
        did not make (no ``owner`` in its metadata), or that exists with other settings, is a
        ``ConfigError``: swell never takes over or changes what it did not make."""
        existing = await self._stream_info(stream)
        if existing is None:
            try:
                existing = await self._api(f"STREAM.CREATE.{stream}", wanted)
            except _ApiUnavailable:
                raise  # the cluster is electing or catching up: try again, not a config error
            except _ApiError as exc:
                existing = await self._stream_info(stream)  # made by another process just now?
                if existing is None:
                    raise ConfigError(f"cannot create the stream of {what}: "
                                      f"{exc.description}") from exc
        config: dict[str, Any] = existing["config"]
        if not (config.get("metadata") or {}).get(owner):
            raise ConfigError(f"stream {stream!r} exists but swell did not make it; swell "
                              f"will not take it over for {what}: use another namespace")
        self._check_stream(what, config, wanted)
        return config

    def _stream_config(self, spec: QueueSpec, stream: str, subject: str,
                       delayed: str) -> dict[str, Any]:
        return {
            "name": stream, "subjects": [subject, f"{delayed}.*"], "retention": "workqueue",
            "storage": self.storage, "num_replicas": self.replicas, "discard": "old",
            "max_msgs": -1, "max_bytes": -1, "max_age": 0, "max_msg_size": -1,
            "max_msgs_per_subject": -1, "max_consumers": -1,
            "duplicate_window": _ns(max(spec.dedup_window_s, 0.001)),
            "allow_direct": True, "allow_msg_schedules": True,
            "metadata": {SPEC_KEY: msgspec.json.encode(spec).decode(), "swell.queue": spec.name},
        }

    @staticmethod
    def _check_stream(what: str, have: dict[str, Any], want: dict[str, Any]) -> None:
        diffs = [f"{key} is {have.get(key)!r}, the app needs {want[key]!r}"
                 for key in ("retention", "storage", "num_replicas", "allow_msg_schedules")
                 if have.get(key, False) != want[key]]
        if sorted(have.get("subjects") or []) != sorted(want["subjects"]):
            diffs.append(f"subjects are {have.get('subjects')}, the app needs {want['subjects']}")
        if diffs:
            raise ConfigError(f"stream {have['name']!r} of {what} exists with other "
                              f"settings ({'; '.join(diffs)}); swell does not change them: "
                              "delete the stream or use another namespace")

    async def _ensure_consumer(self, spec: QueueSpec, stream: str, subject: str | None) -> float:
        """Create or check the queue's consumer; its ack wait follows the declared visibility.
        ``subject=None``: no filter (a subscription's stream holds only what the queue takes)."""
        config: dict[str, Any] = {
            "durable_name": CONSUMER, "name": CONSUMER, "ack_policy": "explicit",
            "ack_wait": _ns(spec.visibility_timeout_s), "max_deliver": -1,
            "deliver_policy": "all", "replay_policy": "instant", "max_ack_pending": -1}
        if subject is not None:
            config["filter_subject"] = subject
        try:
            have: dict[str, Any] | None = (
                await self._api(f"CONSUMER.INFO.{stream}.{CONSUMER}"))["config"]
        except _ApiError as exc:
            if exc.err_code != ERR_CONSUMER_NOT_FOUND:
                raise
            have = None
        if have is not None:
            odd = [k for k in ("ack_policy", "max_deliver", "filter_subject", "deliver_policy")
                   if have.get(k) != config.get(k)]
            if odd:
                raise ConfigError(f"the consumer of queue {spec.name!r} (stream {stream!r}) exists "
                                  f"with other settings ({', '.join(odd)}); swell does not change "
                                  "them: delete it or use another namespace")
            if have.get("ack_wait") == config["ack_wait"]:
                return float(have["ack_wait"]) / 1e9
        request = {"stream_name": stream, "config": config,
                   "action": "create" if have is None else "update"}
        try:
            got = await self._api(f"CONSUMER.CREATE.{stream}.{CONSUMER}", request)
        except _ApiError:
            if have is not None:
                raise
            request["action"] = "update"  # another process made it meanwhile
            got = await self._api(f"CONSUMER.CREATE.{stream}.{CONSUMER}", request)
        return float(got["config"]["ack_wait"]) / 1e9

    async def _stream_info(self, stream: str) -> dict[str, Any] | None:
        try:
            return await self._api(f"STREAM.INFO.{stream}")
        except _ApiError as exc:
            if exc.err_code == ERR_STREAM_NOT_FOUND:
                return None
            raise

    async def _queue(self, queue: str, *, fresh: bool = False) -> _QueueInfo:
        """The queue's settings, read again from the server every ``SPEC_REFRESH_S``."""
        info = self._queues.get(queue)
        if (info is not None and not fresh
                and self.clock.monotonic() - info.loaded_at < SPEC_REFRESH_S):
            return info
        if not _QUEUE.fullmatch(queue):
            raise UnknownQueue(queue)
        stream, subject, delayed = self._names(queue)
        got = await self._stream_info(stream)
        spec = None if got is None else _stored_spec(got["config"])
        if spec is None or got is None:
            self._queues.pop(queue, None)
            raise UnknownQueue(queue)
        sub, router = _routing(got["config"])
        ack_wait = await self._ensure_consumer(spec, stream, None if sub else subject)
        info = self._queues[queue] = _QueueInfo(spec, stream, subject, delayed, ack_wait,
                                                self.clock.monotonic(), sub, router)
        return info

    async def queue_spec(self, queue: str) -> QueueSpec:
        return (await self._queue(queue, fresh=True)).spec

    async def queues(self) -> list[QueueSpec]:
        streams = await self._list_streams(f"swell.{self.namespace}.q.>")
        return sorted((s for s in (_stored_spec(i["config"]) for i in streams) if s is not None),
                      key=lambda s: s.name)

    async def _list_streams(self, subject: str) -> list[dict[str, Any]]:
        """The info of every stream that takes ``subject`` (a filter), page by page."""
        out: list[dict[str, Any]] = []
        while True:
            page = await self._api("STREAM.LIST", {"subject": subject, "offset": len(out)})
            streams = page.get("streams") or []
            out.extend(streams)
            if not streams or len(out) >= int(page.get("total", 0)):
                return out

    # -- topics (see nats_topics) ------------------------------------------------------------
    @property
    def topics_part(self) -> NatsTopics:
        if self._topics is None:
            from swell.brokers.nats_topics import NatsTopics

            self._topics = NatsTopics(self)
        return self._topics

    async def declare_topic(self, spec: TopicSpec) -> None:
        await self.topics_part.declare(spec)

    async def subscribe(self, spec: SubscriptionSpec) -> None:
        await self.topics_part.subscribe(spec)

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[bool]:
        return await self.topics_part.publish(topic, messages)

    async def topics(self) -> list[TopicInfo]:
        return await self.topics_part.topics()

    # -- streams (see nats_logs) -------------------------------------------------------------
    @property
    def logs_part(self) -> NatsLogs:
        logs: NatsLogs | None = getattr(self, "_logs", None)  # made on first use
        if logs is None:
            from swell.brokers.nats_logs import NatsLogs

            logs = self._logs = NatsLogs(self)
        return logs

    async def declare_stream(self, spec: StreamSpec) -> None:
        await self.logs_part.declare(spec)

    async def stream_spec(self, stream: str) -> StreamSpec:
        return await self.logs_part.stream_spec(stream)

    async def streams(self) -> list[StreamSpec]:
        return await self.logs_part.streams()

    async def append(self, stream: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
        return await self.logs_part.append(stream, messages)

    async def read(self, stream: str, partition: int, offset: int = 0, max_records: int = 100, *,
                   since: float | None = None) -> list[Record]:
        return await self.logs_part.read(stream, partition, offset, max_records, since=since)

    async def end_offsets(self, stream: str) -> list[int]:
        return await self.logs_part.end_offsets(stream)

    async def lag(self, stream: str, offsets: Sequence[int]) -> list[int]:
        return await self.logs_part.lag(stream, offsets)

    # -- send ------------------------------------------------------------------------------
    async def send(self, queue: str, messages: Sequence[Message]) -> list[bool]:
        info = await self._queue(queue)
        check_sizes(info.spec, messages)
        now = self.clock.time()
        items = []
        for m in messages:
            # no Nats-Expected-Stream here: it would be stored with the message and parsed again
            # at every delivery; the publish ack names the stream that stored it instead
            headers: dict[str, str] = {}
            encoded = _enc_headers(m.headers)
            if encoded:
                headers[H_HEADERS] = encoded
            if m.dedup_id is not None:
                headers["Nats-Msg-Id"] = _msg_id(m.dedup_id)
            items.append((self._target(info, headers, now, m.delay_s), m.body, headers))
        acks = await self._publish_all(items)
        for (_, _, headers), ack in zip(items, acks, strict=True):
            stream = headers.get("Nats-Expected-Stream", info.stream)  # (a schedule names its own)
            if ack.get("stream") != stream:  # another stream took the queue's subject
                raise BrokerError(f"queue {queue!r}: a message was stored by stream "
                                  f"{ack.get('stream')!r}, not by the queue's {stream!r}")
        return [not ack.get("duplicate", False) for ack in acks]

    def _target(self, info: _QueueInfo, headers: dict[str, str], now: float, delay_s: float) -> str:
        """The subject to publish on: the queue's, or a schedule that fires into it when due (a
        subscription's queue, which sources from its topic, cannot schedule: the topic's stream
        holds the schedule, which fires onto the subscription's own subject there)."""
        if delay_s <= 0:
            return info.subject
        headers.setdefault(H_ENQUEUED, repr(now))
        headers["Nats-Schedule"] = _at(now + delay_s)
        if info.subscription is not None:
            stream, target, prefix = self.topics_part.schedule(info.subscription)
            headers["Nats-Expected-Stream"] = stream
            headers["Nats-Schedule-Target"] = target
            return f"{prefix}.{secrets.token_hex(10)}"
        headers["Nats-Schedule-Target"] = info.subject
        return f"{info.delayed_prefix}.{secrets.token_hex(10)}"

    # -- receive ---------------------------------------------------------------------------
    async def receive(self, queue: str, max_messages: int, visibility_timeout_s: float | None = None,
                      wait_s: float = 0.0) -> list[Delivery]:
        info = await self._queue(queue)
        lease_s = (info.spec.visibility_timeout_s if visibility_timeout_s is None
                   else visibility_timeout_s)
        loop = asyncio.get_running_loop()
        wait_until = loop.time() + max(wait_s, 0.0)
        out: list[Delivery] = []
        while len(out) < max_messages and not self._closing.is_set():
            want = min(max_messages - len(out), PULL_BATCH)
            wait = 0.0 if out else min(wait_until - loop.time(), LONG_POLL_S)
            got = await self._pull(info, want, wait)
            moved = 0
            for at, msg in got:
                d = await self._admit(info, msg, at, lease_s)
                if d is None:
                    moved += 1
                else:
                    out.append(d)
            if not got and (out or loop.time() >= wait_until):
                break
            if got and len(got) < want and not moved:
                break  # that was all there was
        out.sort(key=lambda d: d.receipt.id)  # a batch in message order, as on every backend
        return out

    @staticmethod
    def _delivered(reply: str) -> tuple[int, int, int, float]:
        """(stream sequence, consumer sequence, times delivered, stored at) from a delivery's ack
        subject: ``$JS.ACK.[<domain>.<account hash>.]<stream>.<consumer>.<delivered>.<stream seq>.
        <consumer seq>.<timestamp ns>.<pending>[.<token>]`` (what ``msg.metadata`` reads, without
        the datetime and objects it builds for each message)."""
        t = reply.split(".")
        i = 4 if len(t) == 9 else 6
        if len(t) < 9 or t[0] != "$JS" or t[1] != "ACK":
            raise BrokerError(f"not a JetStream delivery (ack subject {reply!r})")
        return int(t[i + 1]), int(t[i + 2]), int(t[i]), int(t[i + 3]) / 1e9

    async def _admit(self, info: _QueueInfo, msg: Msg, at: float,
                     lease_s: float) -> Delivery | None:
        """A pulled message as a lease, or ``None`` if it went to the dead-letter queue."""
        sseq, token, delivered, stored_at = self._delivered(msg.reply)
        raw = msg.headers or {}
        count = int(raw.get(H_BASE, "0")) + delivered
        enqueued = float(raw[H_ENQUEUED]) if H_ENQUEUED in raw else stored_at
        headers = _dec_headers(raw.get(H_HEADERS))
        key = (info.spec.name, sseq)
        old = self._leases.pop(key, None)
        if old is not None:
            self._stop_keeper(old)
        first = float(raw[H_FIRST]) if H_FIRST in raw else (
            at if delivered == 1 else self._firsts.get(key))
        if info.subscription is not None and info.router is not None and not \
                self.topics_part.admit(info.subscription, info.router, msg.data, delivered == 1):
            await self._ack_request(msg.reply, b"+ACK")  # kept out by the subscription's filter
            return None
        if 0 < info.spec.max_receives < count:
            await self._to_dlq(info, sseq, msg.reply, msg.data, headers, enqueued,
                               REASON_MAX_RECEIVES, None, count - 1)
            return None
        if first is not None:
            self._remember_first(key, first)
        lease = _Lease(info.spec.name, sseq, token, msg.reply, info.ack_wait_s, at + lease_s,
                       at + info.ack_wait_s, count, msg.data, headers, enqueued, first)
        self._leases[key] = lease
        self._keep(lease)
        return Delivery(receipt=Receipt(info.spec.name, sseq, token), body=msg.data,
                        headers=dict(headers), receive_count=count, enqueued_at=enqueued,
                        first_received_at=first)

    def _remember_first(self, key: tuple[str, int], at: float) -> None:
        self._firsts[key] = at
        if len(self._firsts) > 100_000:  # bounded: forget the oldest tenth
            for old in list(itertools.islice(self._firsts, 10_000)):
                del self._firsts[old]

    # -- keeping leases --------------------------------------------------------------------
    def _keep(self, lease: _Lease) -> None:
        """Start the task that nak's or in-progress-acks ``lease`` on time, if it needs one."""
        self._stop_keeper(lease)
        if lease.next_action(self.clock.time()) is not None:
            lease.keeper = asyncio.ensure_future(self._keeper(lease))

    @staticmethod
    def _stop_keeper(lease: _Lease) -> None:
        if lease.keeper is not None and lease.keeper is not asyncio.current_task():
            lease.keeper.cancel()
        lease.keeper = None

    async def _keeper(self, lease: _Lease) -> None:
        try:
            while (action := lease.next_action(now := self.clock.time())) is not None:
                if action[1] > now:
                    await self.clock.sleep(action[1] - now)
                else:
                    await self._act(lease, action[0])
        except BrokerError as exc:  # the lease ends at the last ack wait the server confirmed
            log.warning("could not keep the lease of %s #%d: %s", lease.queue, lease.sseq, exc)

    async def _act(self, lease: _Lease, action: str) -> None:
        sent = self.clock.time()
        if action == "wpi":
            await self._ack_request(lease.reply, b"+WPI")
            lease.server_until = sent + lease.ack_wait_s
        else:  # the lease ends before the server's ack wait would: give it back now
            await self._ack_request(lease.reply, b"-NAK")
            lease.ready_at = sent

    def _held(self, r: Receipt) -> _Lease | None:
        lease = self._leases.get((r.queue, r.id))
        if (lease is None or lease.token != r.token or lease.ready_at is not None
                or self.clock.time() >= lease.held_until):
            return None
        return lease

    def _forget(self, lease: _Lease) -> None:
        key = (lease.queue, lease.sseq)
        if self._leases.get(key) is lease:
            del self._leases[key]
        self._firsts.pop(key, None)
        self._stop_keeper(lease)

    def _split(self, receipts: Sequence[Receipt]) -> tuple[list[_Lease], list[Receipt]]:
        held, stale = [], []
        for r in receipts:
            lease = self._held(r)
            if lease is None:
                stale.append(r)
            else:
                held.append(lease)
        return held, stale

    @staticmethod
    async def _each(leases: list[_Lease], fn: Callable[[_Lease], Awaitable[None]]) -> None:
        results = await asyncio.gather(*(fn(lease) for lease in leases), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    # -- settle ----------------------------------------------------------------------------
    async def ack(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        held, stale = self._split(receipts)
        await self._ack_all(held, b"+ACK")
        for lease in held:
            self._forget(lease)
        return stale

    async def _ack_all(self, leases: Sequence[_Lease], kind: bytes) -> None:
        """``kind`` for every lease, pipelined, and wait until the server applied them all.

        A consumer applies the acks of one connection in the order they came, and answers an ack
        that asks for it once it is applied; so only the last ack of each queue asks, and its
        answer confirms the ones before it (one round trip a batch, not one an ack)."""
        if not leases:
            return
        nc = await self._client()
        last: dict[str, _Lease] = {}
        for lease in leases:
            last[lease.queue] = lease
        confirm = set(map(id, last.values()))
        try:
            for lease in leases:
                if id(lease) not in confirm:
                    await nc.publish(lease.reply, kind)
        except Exception as exc:
            raise BrokerUnavailable(f"NATS at {self.url} took no ack: {exc!r}") from exc
        if len(last) == 1:  # the usual case: no task for it
            await self._ack_request(leases[-1].reply, kind)
        else:
            await self._each(list(last.values()),
                             lambda lease: self._ack_request(lease.reply, kind))

    async def release(self, receipts: Sequence[Receipt], delay_s: float = 0.0, *,
                      count: bool = True) -> list[Receipt]:
        held, stale = self._split(receipts)
        delay_s = max(delay_s, 0.0)

        async def nak(lease: _Lease) -> None:
            payload = b"-NAK"
            if delay_s > 0:
                payload += b" " + json.dumps({"delay": _ns(delay_s)}).encode()
            now = self.clock.time()
            await self._ack_request(lease.reply, payload)
            self._stop_keeper(lease)
            lease.ready_at = now + delay_s

        async def again(lease: _Lease) -> None:
            await self._republish(await self._queue(lease.queue), lease, delay_s)
            await self._ack_request(lease.reply, b"+ACK")
            self._forget(lease)

        await self._each(held, nak if count else again)
        return stale

    async def _republish(self, info: _QueueInfo, lease: _Lease, delay_s: float) -> None:
        """A copy of a leased message, one receive fewer, visible after ``delay_s``. Its dedup id
        keeps a retried release from making two."""
        headers = {"Nats-Expected-Stream": info.stream, H_ENQUEUED: repr(lease.enqueued_at),
                   H_BASE: str(max(0, lease.count - 1)),
                   "Nats-Msg-Id": f"swell~again~{lease.sseq}~{lease.token}"}
        encoded = _enc_headers(lease.headers)
        if encoded:
            headers[H_HEADERS] = encoded
        if lease.first_received_at is not None:
            headers[H_FIRST] = repr(lease.first_received_at)
        subject = self._target(info, headers, self.clock.time(), delay_s)
        await self._publish(subject, lease.body, headers)

    async def extend(self, receipts: Sequence[Receipt], seconds: float) -> list[Receipt]:
        held, stale = self._split(receipts)

        async def extend(lease: _Lease) -> None:
            now = self.clock.time()
            lease.deadline = now + seconds
            self._stop_keeper(lease)
            action = lease.next_action(now)
            if action is not None and action[1] <= now:
                await self._act(lease, action[0])  # what is due now, so an error shows here
            self._keep(lease)

        await self._each(held, extend)
        return stale

    # -- dead letters ----------------------------------------------------------------------
    async def dead_letter(self, receipt: Receipt, reason: str, error: str | None = None) -> bool:
        lease = self._held(receipt)
        if lease is None:
            return False
        info = await self._queue(receipt.queue)
        if info.spec.dead_letter_queue is None:
            return False
        await self._to_dlq(info, lease.sseq, lease.reply, lease.body, lease.headers,
                           lease.enqueued_at, reason, error, lease.count)
        self._forget(lease)
        return True

    async def _to_dlq(self, info: _QueueInfo, sseq: int, reply: str, body: bytes,
                      headers: dict[str, str], enqueued_at: float, reason: str,
                      error: str | None, attempts: int) -> None:
        """Publish to the dead-letter queue, then ack the original. A crash between the two
        leaves the message where it was; the dedup id keeps the DLQ from a second copy."""
        name = info.spec.dead_letter_queue
        if name is not None:
            dlq = await self._queue(name)
            h = dead_letter_headers(headers, source=info.spec.name, reason=reason, error=error,
                                    attempts=attempts, at=self.clock.time())
            await self._publish(dlq.subject, body, {
                "Nats-Expected-Stream": dlq.stream, H_HEADERS: _enc_headers(h) or "{}",
                H_ENQUEUED: repr(enqueued_at), "Nats-Msg-Id": f"swell~dead~{info.stream}~{sseq}"})
        await self._ack_request(reply, b"+ACK")
        self._firsts.pop((info.spec.name, sseq), None)

    async def redrive(self, queue: str, max_messages: int | None = None) -> int:
        info = await self._queue(queue)
        name = info.spec.dead_letter_queue
        if name is None:
            return 0
        dlq = await self._queue(name)
        moved = 0
        while max_messages is None or moved < max_messages:
            want = PULL_BATCH if max_messages is None else min(PULL_BATCH, max_messages - moved)
            got = await self._pull(dlq, want, 0.0)
            for _, msg in got:
                await self._redrive_one(info, dlq, msg)
                moved += 1
            if len(got) < want:
                break
        return moved

    async def _redrive_one(self, info: _QueueInfo, dlq: _QueueInfo, msg: Msg) -> None:
        raw, meta = msg.headers or {}, msg.metadata
        headers = {"Nats-Expected-Stream": info.stream,
                   "Nats-Msg-Id": f"swell~redrive~{dlq.stream}~{meta.sequence.stream}",
                   H_ENQUEUED: raw.get(H_ENQUEUED) or repr(meta.timestamp.timestamp())}
        encoded = _enc_headers(redrive_headers(_dec_headers(raw.get(H_HEADERS))))
        if encoded:
            headers[H_HEADERS] = encoded
        await self._publish(info.subject, msg.data, headers)
        await self._ack_request(msg.reply, b"+ACK")

    # -- looking ---------------------------------------------------------------------------
    async def peek(self, queue: str, max_messages: int = 100) -> list[Delivery]:
        info = await self._queue(queue)
        if max_messages <= 0:
            return []
        out = []
        for msg in await self._direct(info.stream, {"seq": 1, "batch": max_messages}):
            raw = msg.headers or {}
            sseq = int(raw.get("Nats-Sequence", "0"))
            lease = self._leases.get((queue, sseq))
            first = self._firsts.get((queue, sseq))
            if first is None and H_FIRST in raw:
                first = float(raw[H_FIRST])
            out.append(Delivery(
                receipt=Receipt(queue, sseq, -1), body=msg.data,
                headers=_dec_headers(raw.get(H_HEADERS)),
                receive_count=lease.count if lease else int(raw.get(H_BASE, "0")),
                enqueued_at=_enqueued(raw) or 0.0, first_received_at=first))
        return out

    async def stats(self, queue: str) -> QueueStats:
        info = await self._queue(queue)
        # what is stored, on the queue's subject and in all (the rest are scheduled); what the
        # consumer has handed out and not had acked (leased, or given back and not taken again)
        state = (await self._api(f"STREAM.INFO.{info.stream}",
                                 {"subjects_filter": info.subject}))["state"]
        consumer = await self._api(f"CONSUMER.INFO.{info.stream}.{CONSUMER}")
        total = int(state.get("messages", 0))
        on_queue = total if info.subscription is not None else (  # (which schedules nothing)
            min(total, int((state.get("subjects") or {}).get(info.subject, 0))))
        leased = min(on_queue, int(consumer["num_ack_pending"]))
        ready, delayed = self._known_returns(info)
        ready = min(ready, leased)
        delayed = min(delayed, leased - ready)
        oldest = await self._oldest(info, state) if total else None
        now = self.clock.time()
        return QueueStats(queue=queue, depth=on_queue - leased + ready,
                          in_flight=leased - ready - delayed,
                          delayed=total - on_queue + delayed,
                          oldest_age_s=0.0 if oldest is None else max(0.0, now - oldest))

    async def stats_many(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        out: dict[str, QueueStats] = {}
        for queue in queues:
            with contextlib.suppress(UnknownQueue):
                out[queue] = await self.stats(queue)
        return out

    def _known_returns(self, info: _QueueInfo) -> tuple[int, int]:
        """This broker's leases that are not held any more: (ready again, waiting out a delay).
        One not received again within a visibility timeout of being ready is forgotten here:
        another process may hold it by now."""
        now, ready, delayed = self.clock.time(), 0, 0
        for key, lease in list(self._leases.items()):
            if key[0] != info.spec.name:
                continue
            back_at = lease.held_until if lease.ready_at is None else lease.ready_at
            if back_at > now:
                delayed += lease.ready_at is not None
            elif now - back_at < info.spec.visibility_timeout_s:
                ready += 1
            else:
                self._forget(lease)
        return ready, delayed

    async def _oldest(self, info: _QueueInfo, state: dict[str, Any]) -> float | None:
        got = await self._direct(info.stream, {"seq": int(state["first_seq"]), "batch": 1})
        if got:
            return _enqueued(got[0].headers or {})
        return _parse_ts(state["first_ts"]) if state.get("first_ts") else None

    async def purge(self, queue: str) -> int:
        info = await self._queue(queue)
        purged = int((await self._api(f"STREAM.PURGE.{info.stream}", {}))["purged"])
        for key, lease in list(self._leases.items()):
            if key[0] == queue:
                self._forget(lease)
        return purged

    async def close(self) -> None:
        if self._closed:
            return
        if self._topics is not None and self._nc is not None:
            with contextlib.suppress(BrokerError):
                await self._topics.flush(force=True)  # this process's topic counts
        self._closed = True
        self._closing.set()  # a receive still waiting returns what it has: nothing
        keepers = [lease.keeper for lease in self._leases.values() if lease.keeper is not None]
        for task in keepers:
            task.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None


def _enqueued(raw: dict[str, str]) -> float | None:
    """When a stored message was first sent: our header, else the server's timestamp."""
    if H_ENQUEUED in raw:
        return float(raw[H_ENQUEUED])
    return _parse_ts(raw["Nats-Time-Stamp"]) if "Nats-Time-Stamp" in raw else None


def _routing(config: dict[str, Any]) -> tuple[SubscriptionSpec | None, Router | None]:
    """The subscription a queue stream belongs to, if any, and its compiled routing."""
    raw = (config.get("metadata") or {}).get(SUBSCRIPTION_KEY)
    if raw is None:
        return None, None
    sub = msgspec.json.decode(raw, type=SubscriptionSpec)
    return sub, Router.of(sub)


def _stored_spec(config: dict[str, Any]) -> QueueSpec | None:
    raw = (config.get("metadata") or {}).get(SPEC_KEY)
    return None if raw is None else msgspec.json.decode(raw, type=QueueSpec)


def _options(query: str) -> dict[str, str]:
    options = dict(parse_qsl(query))
    allowed = {"namespace", "replicas", "storage", "connect_timeout"}
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(f"unknown NATS option(s) {sorted(unknown)}; known: {sorted(allowed)}")
    return options


def _int_option(options: dict[str, str], name: str, default: int) -> int:
    try:
        value = int(options.get(name, default))
    except ValueError:
        raise ConfigError(f"NATS option {name} must be a whole number, not "
                          f"{options[name]!r}") from None
    if value < 1:
        raise ConfigError(f"NATS option {name} must be at least 1, not {value}")
    return value


# -- kv ---------------------------------------------------------------------------------------


class NatsKV:
    """The kv store: a JetStream key-value bucket per namespace (see the module docstring)."""

    #: seconds the server keeps a delete marker, and keeps an entry past its TTL
    MARKER_TTL_S = 300
    GC_SLACK_S = 1

    def __init__(self, broker: NatsBroker) -> None:
        self._b = broker
        self.bucket = f"swell_{broker.namespace}"
        self._stream = f"KV_{self.bucket}"
        self._prefix = f"$KV.{self.bucket}."
        self._ready = False
        self._lock = asyncio.Lock()

    async def _ensure(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                await self._create()
                self._ready = True

    async def _create(self) -> None:
        config = {"name": self._stream, "subjects": [f"{self._prefix}>"], "retention": "limits",
                  "storage": self._b.storage, "num_replicas": self._b.replicas,
                  "max_msgs_per_subject": 1, "discard": "new", "max_msgs": -1, "max_bytes": -1,
                  "max_age": 0, "max_msg_size": -1, "duplicate_window": _ns(120),
                  "allow_rollup_hdrs": True, "deny_delete": True, "allow_direct": True,
                  "allow_msg_ttl": True, "metadata": {"swell.kv": self._b.namespace}}
        have = await self._b._stream_info(self._stream)
        if have is None:
            try:
                await self._b._api(f"STREAM.CREATE.{self._stream}", config)
                return
            except _ApiError:
                have = await self._b._stream_info(self._stream)  # made meanwhile?
                if have is None:
                    raise
        if not have["config"].get("allow_msg_ttl") or have["config"].get(
                "max_msgs_per_subject") != 1:
            raise ConfigError(f"the kv bucket {self.bucket!r} exists with other settings (no "
                              "per-message TTL, or history > 1); swell does not change it: "
                              "delete it or use another namespace")

    async def _last(self, key: str) -> tuple[KvEntry | None, int]:
        """The live entry of ``key`` (or None) and the revision of the key's last message."""
        await self._ensure()
        msg = await self._b._request(f"$JS.API.DIRECT.GET.{self._stream}.{self._prefix}"
                                     f"{_enc_key(key)}")
        status = _status(msg)
        if status == "404":
            return None, 0
        if status is not None:
            raise BrokerError(f"kv read of {key!r} failed: {status} "
                              f"{(msg.headers or {}).get('Description', '')}")
        raw = msg.headers or {}
        seq = int(raw.get("Nats-Sequence", "0"))
        return self._entry(key, raw, msg.data, seq), seq

    def _entry(self, key: str, raw: dict[str, str], value: bytes, seq: int) -> KvEntry | None:
        if raw.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in raw:
            return None
        expires = float(raw[H_EXPIRES]) if H_EXPIRES in raw else None
        if expires is not None and expires <= self._b.clock.time():
            return None
        return KvEntry(key=key, value=bytes(value), revision=seq, expires_at=expires)

    async def _write(self, key: str, value: bytes, ttl_s: float | None,
                     expect: int | None, op: str | None = None) -> int | None:
        """Write (``expect``: only if the key's last revision is that, 0 for none); the new
        revision, or ``None`` if the key moved on."""
        await self._ensure()
        headers: dict[str, str] = {}
        if op is not None:
            headers["KV-Operation"] = op
            headers["Nats-TTL"] = f"{self.MARKER_TTL_S}s"
        if ttl_s is not None:
            headers[H_EXPIRES] = repr(self._b.clock.time() + ttl_s)
            headers["Nats-TTL"] = f"{max(1, math.ceil(ttl_s)) + self.GC_SLACK_S}s"
        if expect is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expect)
        try:
            ack = await self._b._publish(f"{self._prefix}{_enc_key(key)}", bytes(value), headers)
        except _ApiError as exc:
            if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                return None
            raise
        return int(ack["seq"])

    async def get(self, key: str) -> KvEntry | None:
        return (await self._last(key))[0]

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> int:
        rev = await self._write(key, value, ttl_s, None)
        assert rev is not None  # an unconditional write always lands
        return rev

    async def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> int | None:
        for _ in range(8):  # again only if an expired entry or a marker vanished meanwhile
            entry, last = await self._last(key)
            if entry is not None:
                return None
            rev = await self._write(key, value, ttl_s, last)
            if rev is not None:
                return rev
        return None

    async def compare_and_set(self, key: str, value: bytes, revision: int,
                              ttl_s: float | None = None) -> int | None:
        entry, _ = await self._last(key)
        if entry is None or entry.revision != revision:
            return None
        return await self._write(key, value, ttl_s, revision)

    async def delete(self, key: str, revision: int | None = None) -> bool:
        for _ in range(8):  # again only if the key changed under a delete without a revision
            entry, _ = await self._last(key)
            if entry is None or (revision is not None and entry.revision != revision):
                return False
            if await self._write(key, b"", None, entry.revision, op="DEL") is not None:
                return True
            if revision is not None:
                return False
        return False

    async def scan(self, prefix: str) -> list[KvEntry]:
        """Every live entry whose key starts with ``prefix``: the last message of every matching
        key in one batched direct get (``multi_last``), each read as the request is served.

        (Not an ordered consumer from each key's last message: a key written again between the
        consumer's creation and its delivery loses its old message, and the new one may come
        after the consumer said nothing was pending, so a live key went unseen now and then.)"""
        await self._ensure()
        subject = f"{self._prefix}{_key_filter(prefix)}"
        try:
            msgs = await self._b._direct(self._stream, {"multi_last": [subject],
                                                         "batch": SCAN_BATCH})
        except _TooMany:  # more keys than one read takes: list them, then read them in parts
            subjects = await self._subjects(subject)
            msgs = []
            for i in range(0, len(subjects), SCAN_BATCH):
                part = subjects[i : i + SCAN_BATCH]
                msgs += await self._b._direct(self._stream, {"multi_last": part,
                                                              "batch": len(part)})
        entries: list[KvEntry] = []
        for msg in msgs:
            raw = msg.headers or {}
            key = _dec_key(raw.get("Nats-Subject", "")[len(self._prefix):])
            entry = self._entry(key, raw, msg.data, int(raw.get("Nats-Sequence", "0")))
            if entry is not None and key.startswith(prefix):
                entries.append(entry)
        return sorted(entries, key=lambda e: e.key)

    async def _subjects(self, subject_filter: str) -> list[str]:
        """The subjects in the bucket that match ``subject_filter`` (the stream's info, by pages)."""
        subjects: list[str] = []
        while True:
            info = await self._b._api(f"STREAM.INFO.{self._stream}", {
                "subjects_filter": subject_filter, "offset": len(subjects)})
            page = list(info.get("state", {}).get("subjects") or {})
            subjects += page
            if not page or len(subjects) >= int(info.get("total", 0)):
                return subjects
