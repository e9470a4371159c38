"""Pulls from a queue's consumer: each answered on an inbox of its own, kept for the next pull
when it ended cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

from swell.brokers.nats.wire import (
    ARRIVAL_MARGIN_S,
    CONSUMER,
    MIN_PULL_WAIT_S,
    REQUEST_TIMEOUT_S,
    description,
    nanos,
    status,
)
from swell.core.errors import BrokerUnavailable

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from swell.brokers.nats.client import NatsClient
    from swell.core.clock import Clock


class PullInbox:
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
        code = status(msg)
        if code is None:
            self.want -= 1
            if self.want > 0:
                return
        elif code == "100":  # a heartbeat
            return
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)


class Puller:
    """Pulls over one ``NatsClient``, with the quiet inboxes kept for the next pulls."""

    def __init__(self, client: NatsClient) -> None:
        self.client = client
        self._inboxes: list[PullInbox] = []  # quiet ones, for the next pull

    async def pull(self, stream: str, batch: int, wait_s: float) -> list[tuple[float, Msg]]:
        """One pull from ``stream``'s consumer: up to ``batch`` messages, as soon as there are any,
        waiting up to ``wait_s`` (at least ``MIN_PULL_WAIT_S``) for the first. Each comes with the
        time its lease began.

        A pull is answered on an inbox of its own (``PullInbox``), kept for the next pull when
        this one ended cleanly; when it did not (closing, no answer in time, cancelled) the inbox
        is dropped and what reaches it after the pull gave up is nak'd."""
        client = self.client
        nc = await client.connection()
        wait_s = max(wait_s, MIN_PULL_WAIT_S)
        # no_wait with expires: the server answers as soon as it has anything, else at expiry
        request = {"batch": batch, "no_wait": True, "expires": nanos(wait_s)}
        loop = asyncio.get_running_loop()
        inbox = await self._inbox(nc)
        assert inbox.sub is not None
        strays, inbox.got, inbox.want = inbox.got, [], batch
        ended = inbox.ended = loop.create_future()
        await nak_late(strays)  # none unless the server answered an ended pull again
        out: list[tuple[float, Msg]] = []
        try:
            sent = client.clock.time()  # the server's ack waits start after this
            try:
                await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{CONSUMER}",
                                 json.dumps(request).encode(), reply=inbox.sub.subject)
            except Exception as exc:  # closed, or the buffer of a reconnecting client is full
                raise BrokerUnavailable(f"NATS at {client.url} took no pull: {exc!r}") from exc
            if not client.closing:
                await asyncio.wait((ended, client.closing_future()),
                                   timeout=wait_s + REQUEST_TIMEOUT_S,
                                   return_when=asyncio.FIRST_COMPLETED)
            got, inbox.got = inbox.got, []
            for at, msg in got:
                code = status(msg)
                if code is None:
                    out.append((max(sent, at - ARRIVAL_MARGIN_S), msg))
                elif code != "100":  # 404 no (more) messages, 408 expired, 409 refused: done
                    if code in ("409", "503") and not out:
                        # 503: no consumer leader (yet); 409: a leader change, a server shutting
                        # down, or the consumer deleted (the next declaration check makes it again)
                        raise BrokerUnavailable(
                            f"JetStream took no pull from {stream} now: {code} "
                            f"{description(msg)}".rstrip())
                    break
        finally:
            if ended.done() and inbox.nc is client.nc:
                self._inboxes.append(inbox)
            else:
                with contextlib.suppress(Exception):
                    await inbox.sub.unsubscribe()
                await nak_late(inbox.got)
        return out

    async def _inbox(self, nc: Client) -> PullInbox:
        """A quiet pull inbox of ``nc``'s, or a new one."""
        while self._inboxes:
            inbox = self._inboxes.pop()
            if inbox.nc is nc and not nc.is_closed:
                return inbox
        inbox = PullInbox(nc, self.client.clock)
        try:
            inbox.sub = await nc.subscribe(nc.new_inbox(), cb=inbox.deliver)
        except Exception as exc:  # a closed client
            raise BrokerUnavailable(f"NATS at {self.client.url} took no pull: {exc!r}") from exc
        return inbox


async def nak_late(got: list[tuple[float, Msg]]) -> None:
    """Give back deliveries that reached a pull after it gave up."""
    for _, late in got:
        if status(late) is None and late.reply:
            with contextlib.suppress(Exception):
                await late.nak()
