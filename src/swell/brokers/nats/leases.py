"""The leases a ``NatsBroker`` handed out, and the tasks that keep them honest: an in-progress ack
(``+WPI``) that holds a lease past the server's ack wait, a ``-NAK`` that ends it before."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from swell.brokers.nats.wire import LEASE_TOLERANCE_S
from swell.core.errors import BrokerError

if TYPE_CHECKING:
    from swell.brokers.base import Receipt
    from swell.brokers.nats.client import NatsClient

log = logging.getLogger("swell.brokers.nats")

#: the first receive times remembered, at the most (the oldest tenth is forgotten past it)
FIRSTS_MAX = 100_000


@dataclass(slots=True, eq=False)
class Lease:
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

    def stop_keeper(self) -> None:
        """Cancel the task that keeps this lease (unless that task is the caller)."""
        if self.keeper is not None and self.keeper is not asyncio.current_task():
            self.keeper.cancel()
        self.keeper = None


class Leases:
    """The leases (and first receive times) of one broker, by (queue, stream sequence)."""

    def __init__(self, client: NatsClient) -> None:
        self.client = client
        self.clock = client.clock
        self.by_key: dict[tuple[str, int], Lease] = {}
        self.firsts: dict[tuple[str, int], float] = {}

    def remember_first(self, key: tuple[str, int], at: float) -> None:
        self.firsts[key] = at
        if len(self.firsts) > FIRSTS_MAX:  # bounded: forget the oldest tenth
            for old in list(itertools.islice(self.firsts, FIRSTS_MAX // 10)):
                del self.firsts[old]

    # -- keeping ---------------------------------------------------------------------------
    def keep(self, lease: Lease) -> None:
        """Start the task that nak's or in-progress-acks ``lease`` on time, if it needs one."""
        lease.stop_keeper()
        if lease.next_action(self.clock.time()) is not None:
            lease.keeper = asyncio.ensure_future(self._keeper(lease))

    async def _keeper(self, lease: Lease) -> None:
        try:
            while (action := lease.next_action(now := self.clock.time())) is not None:
                if action[1] > now:
                    await self.clock.sleep(action[1] - now)
                else:
                    await self.act(lease, action[0])
        except BrokerError as exc:  # the lease ends at the last ack wait the server confirmed
            log.warning("could not keep the lease of %s #%d: %s", lease.queue, lease.sseq, exc)

    async def act(self, lease: Lease, action: str) -> None:
        """Send the ``wpi`` or ``nak`` that ``lease.next_action`` asked for."""
        sent = self.clock.time()
        if action == "wpi":
            await self.client.ack(lease.reply, b"+WPI")
            lease.server_until = sent + lease.ack_wait_s
        else:  # the lease ends before the server's ack wait would: give it back now
            await self.client.ack(lease.reply, b"-NAK")
            lease.ready_at = sent

    async def close(self) -> None:
        """Stop keeping every lease (the server's ack waits end them)."""
        keepers = [lease.keeper for lease in self.by_key.values() if lease.keeper is not None]
        for task in keepers:
            task.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)

    # -- looking up ------------------------------------------------------------------------
    def held(self, r: Receipt) -> Lease | None:
        """The lease of receipt ``r`` if it is this broker's latest, live lease."""
        lease = self.by_key.get((r.queue, r.id))
        if (lease is None or lease.token != r.token or lease.ready_at is not None
                or self.clock.time() >= lease.held_until):
            return None
        return lease

    def forget(self, lease: Lease) -> None:
        key = (lease.queue, lease.sseq)
        if self.by_key.get(key) is lease:
            del self.by_key[key]
        self.firsts.pop(key, None)
        lease.stop_keeper()

    def forget_queue(self, queue: str) -> None:
        for key, lease in list(self.by_key.items()):
            if key[0] == queue:
                self.forget(lease)

    def split(self, receipts: Sequence[Receipt]) -> tuple[list[Lease], list[Receipt]]:
        """(the leases of the receipts that are held, the receipts that are stale)."""
        held, stale = [], []
        for r in receipts:
            lease = self.held(r)
            if lease is None:
                stale.append(r)
            else:
                held.append(lease)
        return held, stale

    def known_returns(self, queue: str, visibility_timeout_s: float) -> tuple[int, int]:
        """This broker's leases of ``queue`` that are not held any more: (ready again, waiting
        out a delay). One not received again within a visibility timeout of being ready is
        forgotten here: another process may hold it by now."""
        now, ready, delayed = self.clock.time(), 0, 0
        for key, lease in list(self.by_key.items()):
            if key[0] != queue:
                continue
            back_at = lease.held_until if lease.ready_at is None else lease.ready_at
            if back_at > now:
                delayed += lease.ready_at is not None
            elif now - back_at < visibility_timeout_s:
                ready += 1
            else:
                self.forget(lease)
        return ready, delayed


async def each(leases: list[Lease], fn: Callable[[Lease], Awaitable[None]]) -> None:
    """``fn`` for every lease at once; the first error, once all are done."""
    results = await asyncio.gather(*(fn(lease) for lease in leases), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
