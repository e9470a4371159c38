"""The connection to NATS that every part of the backend shares: connecting (and checking the
server), JetStream API requests, pipelined publishes, batched direct gets, and creating or checking
the streams swell owns. Replies to publishes and reads share one inbox subscription."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from swell.brokers.nats.wire import (
    CONNECT_TIMEOUT_S,
    ERR_STREAM_NOT_FOUND,
    MIN_SERVER,
    NAMESPACE,
    PING_INTERVAL_S,
    REQUEST_TIMEOUT_S,
    ApiError,
    ApiUnavailable,
    TooMany,
    description,
    import_nats,
    int_option,
    refusal,
    status,
    url_options,
)
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.errors import BrokerError, BrokerUnavailable, ConfigError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = logging.getLogger("swell.brokers.nats")
T = TypeVar("T")


class NatsClient:
    """One connection (made on first use) to a NATS server or cluster, and the settings of the
    ``namespace`` every stream and bucket belongs to. See ``NatsBroker`` for ``url``."""

    def __init__(self, url: str, *, clock: Clock = SYSTEM_CLOCK, namespace: str | None = None,
                 replicas: int | None = None, storage: str | None = None,
                 connect_timeout_s: float | None = None) -> None:
        import_nats()
        base, _, query = url.partition("?")
        options = url_options(query)
        self.url = base
        self.clock = clock
        self.namespace = namespace or options.get("namespace", "swell")
        if not NAMESPACE.fullmatch(self.namespace):
            raise ConfigError(f"NATS namespace {self.namespace!r} must be 1-64 of [A-Za-z0-9_]")
        self.replicas = replicas or int_option(options, "replicas", 1)
        self.storage = storage or options.get("storage", "file")
        if self.storage not in ("file", "memory"):
            raise ConfigError(f"NATS storage must be file or memory, not {self.storage!r}")
        self.connect_timeout_s = connect_timeout_s or float(
            int_option(options, "connect_timeout", int(CONNECT_TIMEOUT_S)))
        self._servers = [s.strip() for s in base.split(",") if s.strip()]
        self._nc: Client | None = None
        self._connecting = asyncio.Lock()
        self._inbox = ""
        self._boxes: dict[str, asyncio.Queue[Msg]] = {}
        self._tokens = itertools.count(1)
        self._closed_fut: asyncio.Future[Any] | None = None  # done once closing (for waits)
        self._closing = asyncio.Event()
        self.closed = False

    # -- connection ------------------------------------------------------------------------
    @property
    def nc(self) -> Client | None:
        """The connection, if one was made (and not closed)."""
        return self._nc

    @property
    def closing(self) -> bool:
        """Whether ``close`` began: waits return what they have."""
        return self._closing.is_set()

    async def connection(self) -> Client:
        """The connection, made on first use."""
        if self.closed:
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
            if connected and not self.closed:  # a failed first connect is one error, below
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

    def stop(self) -> None:
        """Begin closing: every wait returns what it has, nothing new connects."""
        self.closed = True
        self._closing.set()

    async def disconnect(self) -> None:
        """Close the connection (after ``stop``)."""
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    # -- requests --------------------------------------------------------------------------
    async def request(self, subject: str, payload: bytes = b"",
                      headers: dict[str, str] | None = None) -> Msg:
        """A request and its reply; ``BrokerUnavailable`` if none comes in time."""
        import nats.errors

        nc = await self.connection()
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

    async def api(self, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """A JetStream API request (``$JS.API.<op>``) and its answer; ``ApiError`` if refused."""
        msg = await self.request(f"$JS.API.{op}",
                                 b"" if body is None else json.dumps(body).encode())
        resp: dict[str, Any] = json.loads(msg.data)
        if "error" in resp:
            raise refusal(op, resp["error"])
        return resp

    async def ack(self, reply: str, kind: bytes) -> None:
        """An ack of any kind (``+ACK``, ``-NAK``, ``+WPI``) that waits until the server applied
        it, so what follows sees it done and a lost connection shows as an error."""
        await self.request(reply, kind)

    # -- replies: publishes and reads share one inbox subscription -----------------------------
    @contextlib.contextmanager
    def reply_box(self) -> Iterator[tuple[str, asyncio.Queue[Msg]]]:
        """(reply subject, the queue its replies land in), for as long as the block runs."""
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

    async def next_reply(self, box: asyncio.Queue[T], limit_s: float) -> T | None:
        """The next reply in ``box``; ``None`` after ``limit_s`` or when the broker closes."""
        if not box.empty():
            return box.get_nowait()
        if limit_s <= 0 or self._closing.is_set():
            return None
        getter = asyncio.ensure_future(box.get())
        try:
            await asyncio.wait((getter, self.closing_future()), timeout=limit_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None

    def closing_future(self) -> asyncio.Future[Any]:
        """A future done once the broker closes, shared by the waits of the data path (so a wait
        starts no task of its own to watch for closing)."""
        fut = self._closed_fut
        if fut is None or fut.get_loop() is not asyncio.get_running_loop():
            fut = asyncio.ensure_future(self._closing.wait())
            self._closed_fut = fut
        return fut

    def stored(self, msg: Msg, subject: str, *, append: bool = False) -> dict[str, Any]:
        """JetStream's ack (``{"seq": ..., ...}``) of a publish on ``subject``, or of an append
        (an atomic batch) to the stream ``subject``; an error if nothing was stored."""
        if status(msg) is not None:  # 503: nothing stored; the stream has no leader
            what = f"the records of {subject}" if append else repr(subject)
            raise BrokerUnavailable(f"no stream at {self.url} takes {what} now "
                                    "(electing its leader, or deleted)")
        ack: dict[str, Any] = json.loads(msg.data)
        if "error" in ack:
            raise refusal(f"an append to {subject}" if append else f"a publish on {subject}",
                          ack["error"])
        return ack

    # -- publishes -------------------------------------------------------------------------
    async def publish(self, subject: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """Publish to JetStream and wait for its ack (``{"seq": ..., "duplicate": ...}``)."""
        return (await self.publish_all([(subject, body, headers)]))[0]

    async def publish_all(self, items: Sequence[tuple[str, bytes, dict[str, str]]]
                          ) -> list[dict[str, Any]]:
        """Publish in order, pipelined (one round trip for the lot), and wait for every ack."""
        if len(items) == 1:  # one message (``swell send``, a paced producer): a plain request
            return [await self._publish_one(*items[0])]
        nc = await self.connection()
        loop = asyncio.get_running_loop()
        acks: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            boxes = []
            try:
                for subject, body, headers in items:
                    reply, box = stack.enter_context(self.reply_box())
                    boxes.append((subject, box))
                    await nc.publish(subject, body, reply=reply, headers=headers or None)
            except Exception as exc:
                raise BrokerUnavailable(f"NATS at {self.url} took no message: {exc!r}") from exc
            end = loop.time() + REQUEST_TIMEOUT_S + 0.001 * len(boxes)
            for subject, box in boxes:
                msg = await self.next_reply(box, end - loop.time())
                if msg is None:
                    raise BrokerUnavailable(f"NATS at {self.url} did not confirm a message on "
                                            f"{subject!r} in time")
                acks.append(self.stored(msg, subject))
        return acks

    async def _publish_one(self, subject: str, body: bytes,
                           headers: dict[str, str]) -> dict[str, Any]:
        import nats.errors

        nc = await self.connection()
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
            raise refusal(f"a publish on {subject}", single["error"])
        return single

    # -- reads -----------------------------------------------------------------------------
    async def direct(self, stream: str, request: dict[str, Any]) -> list[Msg]:
        """A batched direct get: the messages up to the end-of-batch marker."""
        nc = await self.connection()
        loop = asyncio.get_running_loop()
        end = loop.time() + REQUEST_TIMEOUT_S
        out: list[Msg] = []
        with self.reply_box() as (reply, box):
            try:
                await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(),
                                 reply=reply)
            except Exception as exc:  # closed, or the buffer of a reconnecting client is full
                raise BrokerUnavailable(f"NATS at {self.url} took no read: {exc!r}") from exc
            while True:
                msg = await self.next_reply(box, end - loop.time())
                if msg is None:
                    if self._closing.is_set():
                        break
                    raise BrokerUnavailable(f"NATS at {self.url} did not answer a read of "
                                            f"{stream}")
                code = status(msg)
                if code is not None:  # the end of the batch (204), or none at all (404)
                    if code == "413":
                        raise TooMany(f"NATS: more results than one read of {stream} takes")
                    if code not in ("204", "404"):
                        raise BrokerError(f"NATS refused a read of {stream}: {code} "
                                          f"{description(msg)}")
                    break
                out.append(msg)
        return out

    # -- streams ---------------------------------------------------------------------------
    async def stream_info(self, stream: str) -> dict[str, Any] | None:
        """The info of ``stream``; ``None`` if there is no such stream."""
        try:
            return await self.api(f"STREAM.INFO.{stream}")
        except ApiError as exc:
            if exc.err_code == ERR_STREAM_NOT_FOUND:
                return None
            raise

    async def list_streams(self, subject: str) -> list[dict[str, Any]]:
        """The info of every stream that takes ``subject`` (a filter), page by page."""
        out: list[dict[str, Any]] = []
        while True:
            page = await self.api("STREAM.LIST", {"subject": subject, "offset": len(out)})
            streams = page.get("streams") or []
            out.extend(streams)
            if not streams or len(out) >= int(page.get("total", 0)):
                return out

    async def ensure_stream(self, stream: str, wanted: dict[str, Any], what: str,
                            owner: str) -> dict[str, Any]:
        """The config of ``stream``, created as ``wanted`` if it does not exist. A stream that swell
        did not make (no ``owner`` in its metadata), or that exists with other settings, is a
        ``ConfigError``: swell never takes over or changes what it did not make."""
        existing = await self.stream_info(stream)
        if existing is None:
            try:
                existing = await self.api(f"STREAM.CREATE.{stream}", wanted)
            except ApiUnavailable:
                raise  # the cluster is electing or catching up: try again, not a config error
            except ApiError as exc:
                existing = await self.stream_info(stream)  # made by another process just now?
                if existing is None:
                    raise ConfigError(f"cannot create the stream of {what}: "
                                      f"{exc.description}") from exc
        config: dict[str, Any] = existing["config"]
        if not (config.get("metadata") or {}).get(owner):
            raise ConfigError(f"stream {stream!r} exists but swell did not make it; swell "
                              f"will not take it over for {what}: use another namespace")
        check_stream(what, config, wanted)
        return config

    async def check_payload(self, what: str, max_message_bytes: int, room: int,
                            detail: str = "") -> None:
        """``ConfigError`` if messages of ``max_message_bytes`` (plus ``room`` for headers) are
        over what the server takes."""
        nc = await self.connection()
        if max_message_bytes + room > nc.max_payload:
            raise ConfigError(f"{what}: max_message_bytes {max_message_bytes:,} is over what the "
                              f"NATS server takes ({nc.max_payload:,} bytes{detail})")


def check_stream(what: str, have: dict[str, Any], want: dict[str, Any]) -> None:
    """``ConfigError`` if an existing stream's config ``have`` differs from ``want`` where swell
    does not change it."""
    diffs = [f"{key} is {have.get(key)!r}, the app needs {want[key]!r}"
             for key in ("retention", "storage", "num_replicas", "allow_msg_schedules")
             if have.get(key, False) != want[key]]
    if sorted(have.get("subjects") or []) != sorted(want["subjects"]):
        diffs.append(f"subjects are {have.get('subjects')}, the app needs {want['subjects']}")
    if diffs:
        raise ConfigError(f"stream {have['name']!r} of {what} exists with other "
                          f"settings ({'; '.join(diffs)}); swell does not change them: "
                          "delete the stream or use another namespace")
