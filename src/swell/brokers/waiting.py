"""How a receive waits: woken at once by a send in this process, else by a poll of the backend.

Polls stay short while messages keep coming (and for ``HOLD_S`` after the last one), then back off
while idle, so a consumer across processes sees a new message within about a millisecond under load
and costs little when nothing happens.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from swell.core.clock import Clock

T = TypeVar("T")

MIN_POLL_S = 0.001
MAX_POLL_S = 0.05
#: how long polls stay at ``MIN_POLL_S`` after a receive got something: at a steady rate the gaps
#: between messages are this short, and a backed-off poll would add its interval to their latency
HOLD_S = 0.1

#: an attempt returns what it got and the epoch time the next message falls due (None: unknown)
Attempt = Callable[[], Awaitable[tuple[list[T], float | None]]]


class Waker:
    """Per-queue wake-ups for receivers waiting in this process."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._events: dict[str, asyncio.Event] = {}
        self._last_got: dict[str, float] = {}  # per queue: when an attempt last got something
        self.closed = False

    def notify(self, queue: str) -> None:
        ev = self._events.pop(queue, None)
        if ev is not None:
            ev.set()

    def _event(self, queue: str) -> asyncio.Event:
        ev = self._events.get(queue)
        if ev is None:
            ev = self._events[queue] = asyncio.Event()
        return ev

    async def wait_for(self, queue: str, attempt: Attempt[T], wait_s: float,
                       changed: Callable[[], Awaitable[bool]] | None = None) -> list[T]:
        """Run ``attempt`` until it returns something or ``wait_s`` passes.

        ``changed`` (for backends shared across processes) tells cheaply whether another process
        wrote since the last look; without it only local notifies and due times wake the waiter.
        """
        ev = self._event(queue)
        got, due = await attempt()
        if got:
            self._last_got[queue] = self.clock.monotonic()
        if got or wait_s <= 0:
            return got
        deadline = self.clock.monotonic() + wait_s
        hold_until = self._last_got.get(queue, -math.inf) + HOLD_S
        interval = MIN_POLL_S
        while True:
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return []
            until_due = math.inf if due is None else max(0.0, due - self.clock.time())
            timeout = min(remaining, until_due, interval if changed is not None else math.inf)
            woken = await self._wait(ev, timeout)
            if self.closed:
                return []
            ev = self._event(queue)
            if (woken or (due is not None and self.clock.time() >= due)
                    or (changed is not None and await changed())):
                got, due = await attempt()
                if got:
                    self._last_got[queue] = self.clock.monotonic()
                    return got
            elif self.clock.monotonic() >= hold_until:
                interval = min(interval * 1.5, MAX_POLL_S)

    async def _wait(self, ev: asyncio.Event, limit_s: float) -> bool:
        if ev.is_set():
            return True
        if limit_s <= 0:
            return False
        waiter = asyncio.ensure_future(ev.wait())
        sleeper = asyncio.ensure_future(self.clock.sleep(limit_s))
        try:
            await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
        return ev.is_set()

    def close(self) -> None:
        self.closed = True
        for ev in self._events.values():
            ev.set()
        self._events.clear()
