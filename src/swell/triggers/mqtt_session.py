"""The MQTT source's connections on one node (the source itself: ``swell.triggers.mqtt``): a client
id per slot held, one persistent session per client id, each batch of what arrived stored, then
acknowledged in the order received.

A node connects as ``swell-<app>-<source>-<i>``, ``<i>`` the lowest slot it can hold a kv
``Lease`` on (``swell/source-state/<app>/<source>/slots/<i>``): a free one, or one whose holder was
a process of this host that is gone (a node restarted after a crash resumes its own session at
once), else a new one. The number of slots ever taken is recorded
(``swell/source-state/<app>/<source>/slots``, never lowered).

A broker keeps routing a shared subscription's messages to a member whose session is offline, and
queues them there until the session expires. So no node's session is left behind: every
``ADOPT_S`` each node also takes every recorded slot that no live node holds (its node stopped, or
died and its lease lapsed) and runs that session as well, draining and storing it as its own; it
keeps it while it runs (a member of the share group under several ids) and gives every slot back
when it stops. A node that loses a slot to another node closes that session; if it was its own, an
adopted one becomes its own, else it takes another."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from swell.brokers.lease import Lease
from swell.core import keys
from swell.core.errors import SwellError
from swell.triggers.base import SourceEnv, SourceStats, unbroken

if TYPE_CHECKING:
    import aiomqtt

    #: what arrived -> a step that stores its events and dead letters (retried until it succeeds)
    Store = Callable[[SourceEnv, list[aiomqtt.Message]], Callable[[], Awaitable[None]]]

__all__ = ["PROBE_S", "Link", "Sessions"]

log = logging.getLogger("swell.sources")

BATCH = 500  # messages stored per broker call at most
PROBE_S = 5.0  # how long the start-up check (and a connection attempt) waits for the broker
SLOT_TTL_S, MAX_SLOTS, ADOPT_S = 15.0, 256, 3.0
MIN_BACKOFF_S, MAX_BACKOFF_S = 0.2, 30.0


@dataclass(frozen=True)
class Link:
    """The broker, the session's terms and the subscriptions."""

    host: str
    port: int
    tls: bool
    user: str | None
    password: str | None = field(repr=False)  # (never in a repr, a log, or swell status)
    session_expiry_s: float
    max_pending: int
    qos: int
    filters: tuple[str, ...] = ()

    @property
    def shown(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def client(self, client_id: str, inbox: Inbox | None, *,
               persistent: bool = True) -> aiomqtt.Client:
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if persistent:  # (MQTT 5 ends a session at disconnect unless told to keep it)
            props.SessionExpiryInterval = int(self.session_expiry_s)
            props.ReceiveMaximum = min(self.max_pending, 65535)
        client = aiomqtt.Client(
            self.host, self.port, identifier=client_id, username=self.user,
            password=self.password, protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=not persistent, properties=props, timeout=PROBE_S,
            tls_context=ssl.create_default_context() if self.tls else None,
            # aiomqtt makes its queue with queue_type(maxsize=...): ours, when given
            queue_type=cast(Any, lambda maxsize=0: inbox) if inbox is not None else None)
        # aiomqtt has no manual ack yet (aiomqtt#345): paho's own, set before connecting, keeps a
        # resumed session's queued messages from being acknowledged on arrival; ``Session``
        # sends each PUBACK (``_client.ack``) once the message is stored
        client._client.manual_ack_set(True)
        return client


class Inbox(asyncio.Queue[Any]):
    """aiomqtt's queue of received messages, noting when each arrived (for ``lag_s``)."""

    def __init__(self, now: Callable[[], float], stats: SourceStats) -> None:
        super().__init__()
        self.now, self.stats = now, stats
        self.arrived: deque[float] = deque()
        self.taken_at = 0.0

    def put_nowait(self, item: Any) -> None:
        self.arrived.append(self.now())
        self.stats.received += 1
        super().put_nowait(item)

    def get_nowait(self) -> Any:
        item = super().get_nowait()
        self.taken_at = self.arrived.popleft()
        return item


class Backoff:
    """Doubling waits, capped and jittered; back to the shortest once something works."""

    def __init__(self) -> None:
        self.s = 0.0

    def next(self) -> float:
        self.s = min(max(self.s * 2, MIN_BACKOFF_S), MAX_BACKOFF_S)
        return self.s * random.uniform(0.5, 1.0)


class Sessions:
    """A node's sessions of one source: its own (its slot's, or the fixed ``client_id``'s) and
    those it adopted; one ``SourceStats`` for all of them."""

    def __init__(self, name: str, link: Link, store: Store, stats: SourceStats,
                 client_id: str | None) -> None:
        self.name, self.link, self.store, self.stats = name, link, store, stats
        self.fixed = client_id
        self.own: Session | None = None
        self.held: dict[int, tuple[Lease, Session, asyncio.Task[None]]] = {}
        self.rate, self._counted, self._backoff = 0, 0, Backoff()

    def sessions(self) -> list[Session]:
        own = [self.own] if self.own is not None else []
        return own + [s for _, s, _ in sorted(self.held.values(), key=lambda h: h[1].slot or 0)
                      if s is not self.own]

    def detail(self) -> dict[str, Any]:
        """The own session's client id, slot, connection and last outage; whether every session
        is connected; the slots and client ids held (own first) and each adopted session."""
        sessions = self.sessions()
        own = self.own.state if self.own is not None else {"connected": False, "since": None}
        return {**own, "connected": bool(sessions) and all(s.state["connected"] for s in sessions),
                "rate": self.rate, "slots": [s.slot for s in sessions if s.slot is not None],
                "client_ids": [s.client_id for s in sessions],
                "adopted": [dict(s.state) for s in sessions[1:]]}

    async def run(self, env: SourceEnv) -> None:
        """Hold the slots, run a session for each; every second, renew them and note the
        backlog; every ``ADOPT_S``, adopt what no live node holds."""
        try:
            async with asyncio.TaskGroup() as tasks:
                if self.fixed is not None:
                    self.own = Session(self, None, self.fixed)
                    tasks.create_task(self.own.run(env))
                next_adopt = 0.0
                while True:
                    if self.fixed is None:
                        await self._renew()
                        if self.own is None:
                            await self._take_own(env, tasks)
                        if env.clock.monotonic() >= next_adopt:
                            next_adopt = env.clock.monotonic() + ADOPT_S
                            await self._adopt(env, tasks)
                    self.note(env.clock.monotonic())
                    self.rate, self._counted = self.stats.received - self._counted, \
                        self.stats.received
                    await env.clock.sleep(1.0)
        finally:
            self.own, held = None, list(self.held.values())
            self.held.clear()
            self.stats.pending = 0
            for lease, _, _ in held:  # stopping: a node started next may take them at once
                await lease.release()

    def note(self, now: float) -> None:
        """The backlog: messages received and not yet stored, the age of the oldest."""
        sessions = self.sessions()
        self.stats.pending = sum(s.pending() for s in sessions)
        oldest = [t for s in sessions if (t := s.oldest()) is not None]
        self.stats.lag_s = round(now - min(oldest), 3) if oldest else 0.0

    def _lease(self, env: SourceEnv, slot: int | str) -> Lease:
        return Lease(env.kv, keys.source_state(env.app, self.name, f"slots/{slot}"), env.node,
                     env.clock, ttl_s=SLOT_TTL_S)

    def _start(self, env: SourceEnv, tasks: asyncio.TaskGroup, slot: int, lease: Lease) -> Session:
        session = Session(self, slot, f"swell-{env.app}-{self.name}-{slot}")
        self.held[slot] = (lease, session, tasks.create_task(session.run(env)))
        return session

    async def _renew(self) -> None:
        """Renew each slot (when due); close the session of one another node took."""
        for slot, (lease, session, task) in list(self.held.items()):
            if await holds(lease) is not False:  # held, or the kv store did not answer
                continue
            log.warning("mqtt %s: another node took client id %s; closing that session",
                        self.name, session.client_id)
            task.cancel()
            del self.held[slot]
            if session is self.own:  # an adopted one becomes its own, if any
                self.own = next((s for _, s, _ in sorted(self.held.values(),
                                                         key=lambda h: h[1].slot or 0)), None)

    async def _take_own(self, env: SourceEnv, tasks: asyncio.TaskGroup) -> None:
        """The lowest slot this node can hold, and its session (retried until one is free)."""
        while True:
            for i in (i for i in range(MAX_SLOTS) if i not in self.held):
                lease = self._lease(env, i)
                held = await holds(lease)
                if held is None:  # the kv store did not answer: not a higher slot meanwhile
                    break
                if held:
                    self.own = self._start(env, tasks, i, lease)
                    self._backoff.s = 0.0
                    return
            self.stats.last_error = f"no free client-id slot of {MAX_SLOTS} (or no kv store)"
            log.warning("mqtt %s: %s (retrying)", self.name, self.stats.last_error)
            await env.clock.sleep(self._backoff.next())

    async def _adopt(self, env: SourceEnv, tasks: asyncio.TaskGroup) -> None:
        """Each recorded slot that no live node holds: held here, its session run here."""
        try:
            count = await self._count(env)
        except SwellError:  # the kv store: next time
            return
        for i in range(min(count, MAX_SLOTS)):
            if i in self.held:
                continue
            lease = self._lease(env, i)
            if await holds(lease):
                log.warning("mqtt %s: adopted client id swell-%s-%s-%d (no live node held it): "
                            "its session is drained here", self.name, env.app, self.name, i)
                self._start(env, tasks, i, lease)

    async def _count(self, env: SourceEnv) -> int:
        """The slots recorded, raised first to cover those held here."""
        key, need = keys.source_state(env.app, self.name, "slots"), max(self.held, default=-1) + 1
        while True:
            entry = await env.kv.get(key)
            count = 0
            if entry is not None:
                with suppress(ValueError):
                    count = int(entry.value)
            if count >= need:
                return count
            value = str(need).encode()
            if (await env.kv.put_if_absent(key, value) if entry is None else
                    await env.kv.compare_and_set(key, value, entry.revision)) is not None:
                return need


class Session:
    """One client id's persistent session: connect, subscribe, store, acknowledge; after an
    outage, again (with its own backoff; each outage logged once)."""

    def __init__(self, node: Sessions, slot: int | None, client_id: str) -> None:
        self.node, self.slot, self.client_id = node, slot, client_id
        self.state: dict[str, Any] = {"client_id": client_id, "connected": False, "since": None}
        if slot is not None:
            self.state["slot"] = slot
        self.inbox: Inbox | None = None
        self.in_batch, self.batch_at = 0, 0.0
        self.down_since: float | None = None
        self.backoff = Backoff()

    def pending(self) -> int:
        return (self.inbox.qsize() if self.inbox is not None else 0) + self.in_batch

    def oldest(self) -> float | None:
        """When the oldest message not yet stored arrived."""
        if self.in_batch:
            return self.batch_at
        return self.inbox.arrived[0] if self.inbox is not None and self.inbox.arrived else None

    async def run(self, env: SourceEnv) -> None:
        import aiomqtt

        while True:
            try:
                await self._connect(env)
            except (aiomqtt.MqttError, OSError) as exc:
                self._outage(str(exc) or type(exc).__name__)
            finally:
                self.state["connected"] = False
                self.inbox, self.in_batch = None, 0
            await env.clock.sleep(self.backoff.next())

    async def _connect(self, env: SourceEnv) -> None:
        import aiomqtt
        from paho.mqtt.subscribeoptions import SubscribeOptions

        link = self.node.link
        inbox = self.inbox = Inbox(env.clock.monotonic, self.node.stats)
        # retained messages once, when the subscription is new: not again at each reconnect
        options = SubscribeOptions(qos=link.qos,
                                   retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        async with link.client(self.client_id, inbox) as client:
            codes = await client.subscribe([(f, options) for f in link.filters])
            refused = [str(c) for c in codes if getattr(c, "is_failure", False)]
            if refused:
                raise aiomqtt.MqttError(f"subscription refused: {', '.join(refused)}")
            self._connected()
            await self._receive(env, client, inbox)

    def _connected(self) -> None:
        now, down = time.time(), self.down_since
        if down is not None:
            self.state["last_outage"]["for_s"] = round(now - down, 1)
        log.info("mqtt %s: connected to %s as %s, subscribed to %s%s", self.node.name,
                 self.node.link.shown, self.client_id, ", ".join(self.node.link.filters),
                 "" if down is None else f" (after an outage of {now - down:.1f} s)")
        self.state.update(connected=True, since=_iso(now))
        self.down_since, self.backoff.s = None, 0.0
        if all(s.down_since is None for s in self.node.sessions()):
            self.node.stats.last_error = None

    def _outage(self, error: str) -> None:
        self.node.stats.last_error = f"broker: {error}"
        if self.down_since is None:  # one line per outage, not per try
            self.down_since = now = time.time()
            self.state.update(connected=False, since=_iso(now),
                              last_outage={"at": _iso(now), "error": error})
            log.warning("mqtt %s: lost the broker at %s as %s: %s (retrying)", self.node.name,
                        self.node.link.shown, self.client_id, error)

    async def _receive(self, env: SourceEnv, client: aiomqtt.Client, inbox: Inbox) -> None:
        """Take what arrived (waiting for the first), store it, acknowledge it; again."""
        messages, stats = client.messages, self.node.stats
        while True:
            received = [await anext(messages)]  # MqttError once disconnected
            self.batch_at = inbox.taken_at
            while len(received) < BATCH and not inbox.empty():
                received.append(inbox.get_nowait())
            self.in_batch = len(received)
            acks = [(m.mid, m.qos) for m in received]
            step = self.node.store(env, received)
            while True:  # until stored: the broker's failure is retried, with backoff
                try:
                    await unbroken(_commit(client, step, acks))
                    break
                except SwellError as exc:
                    stats.errors += 1
                    stats.last_error = f"storing: {exc}"
                    log.warning("mqtt %s: storing failed (will retry): %s", self.node.name, exc)
                    await env.clock.sleep(self.backoff.next())
            self.backoff.s, self.in_batch = 0.0, 0
            self.node.note(env.clock.monotonic())


async def _commit(client: aiomqtt.Client, step: Callable[[], Awaitable[None]],
                  acks: list[tuple[int, int]]) -> None:
    """Store, then acknowledge each message, in the order received."""
    await step()
    for mid, qos in acks:
        if qos:
            client._client.ack(mid, qos)  # (see Link.client: aiomqtt#345)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


async def holds(lease: Lease) -> bool | None:
    """Whether the lease is held now (taken or renewed); ``None`` if the kv store failed to say
    (a slot held keeps its session meanwhile: only another holder closes it)."""
    try:
        return await lease.hold()
    except SwellError:
        return None
