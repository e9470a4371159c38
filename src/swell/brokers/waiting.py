"""How a receive waits: woken at once by a send in this process; for a store that other processes
write too, by one watcher per broker.

The watcher asks the store, in one call for every queue waited on, which of them another process
may have changed since each was last looked at, and when their next message falls due: it wakes
those with a message due now and wakes the others when theirs falls due. So a waiting queue costs
nothing while idle, whatever their number, and a look at one queue never hides another queue's
change (each queue remembers what it has seen: the store's version is per queue, not per broker).

A queue whose waiter gave up with nothing due is remembered as quiet: the next receive on it
skips its first look at the store (the watcher looks within a poll, and a send in this process
notifies), so a thousand idle queues do not each read the store every receive wait either.

The watcher's polls stay short while messages keep coming (and for ``HOLD_S`` after the last
one), then back off while idle, so a consumer across processes sees a new message within about a
millisecond under load, and within ``MAX_POLL_S`` after an idle spell.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from contextlib import suppress
from typing import TypeVar

from swell.core.clock import Clock, RealClock
from swell.core.errors import SwellError

T = TypeVar("T")
log = logging.getLogger("swell.waiting")

MIN_POLL_S = 0.001
#: one watcher per broker polls at this rate while idle, whatever the number of queues: short
#: enough that an event from another process after an idle spell waits well under 50 ms
MAX_POLL_S = 0.025
#: how long polls stay at ``MIN_POLL_S`` after a receive got something: at a steady rate the gaps
#: between messages are this short, and a backed-off poll would add its interval to their latency
HOLD_S = 0.1

#: how long a queue called quiet skips its receives' first look at the store: a safety net, so
#: that a wake-up missed for any reason delays an event by this much at most, never for good
QUIET_FOR_S = 30.0

#: an attempt returns what it got and the epoch time the next message falls due (None: unknown)
Attempt = Callable[[], Awaitable[tuple[list[T], float | None]]]

#: given the queues waited on, those that may have changed since they were last looked at (by an
#: attempt or a watch), each with the epoch time its next message falls due (None: it is empty)
Watch = Callable[[AbstractSet[str]], Awaitable[Mapping[str, float | None]]]


class Waker:
    """Per-queue wake-ups for receivers waiting in this process.

    ``watch`` (for backends shared across processes) is what the watcher asks; without it only
    local notifies and due times wake a waiter."""

    def __init__(self, clock: Clock, watch: Watch | None = None) -> None:
        self.clock = clock
        self._watch = watch
        self._events: dict[str, asyncio.Event] = {}
        self._waiting: Counter[str] = Counter()  # receivers waiting, per queue
        self._due: dict[str, float] = {}  # per waiting queue: when the watcher saw its next due
        # per queue whose last waiter gave up: when its next message falls due (None: none)
        # (and when it was called quiet: trusted for QUIET_FOR_S at most)
        self._quiet: dict[str, tuple[float | None, float]] = {}
        self._last_got = -math.inf  # when an attempt last got something
        self._interval = MIN_POLL_S
        self._watcher: asyncio.Task[None] | None = None
        self.closed = False

    def notify(self, queue: str) -> None:
        """Something changed in ``queue`` (a message stored, or given back): a receiver waiting on
        it looks again; the next receive looks at once."""
        self._quiet.pop(queue, None)
        ev = self._events.pop(queue, None)
        if ev is not None:
            ev.set()

    def _event(self, queue: str) -> asyncio.Event:
        ev = self._events.get(queue)
        if ev is None:
            ev = self._events[queue] = asyncio.Event()
        return ev

    async def wait_for(self, queue: str, attempt: Attempt[T], wait_s: float) -> list[T]:
        """Run ``attempt`` until it returns something or ``wait_s`` passes."""
        ev = self._event(queue)
        due, since = self._quiet.pop(queue, (None, -math.inf))
        quiet = self.clock.monotonic() - since < QUIET_FOR_S
        if not (quiet and wait_s > 0 and (due is None or due > self.clock.time())):
            got, due = await attempt()
            if got:
                self._got()
            if got or wait_s <= 0:
                return got
        deadline = self.clock.monotonic() + wait_s
        self._enter(queue)
        try:
            while True:
                remaining = deadline - self.clock.monotonic()
                if remaining <= 0:
                    # quiet, unless told of a change during the last look (without a watcher
                    # a change in another process would go unseen)
                    if self._watch is not None and not ev.is_set():
                        self._quiet[queue] = (_sooner(due, self._due.get(queue)),
                                              self.clock.monotonic())
                    return []
                until_due = math.inf if due is None else max(0.0, due - self.clock.time())
                woken = await self._wait(ev, min(remaining, until_due))
                if self.closed:
                    return []
                ev = self._event(queue)
                if woken or (due is not None and self.clock.time() >= due):
                    got, due = await attempt()
                    if got:
                        self._got()
                        return got
        finally:
            self._leave(queue)

    def _got(self) -> None:
        self._last_got = self.clock.monotonic()
        self._interval = MIN_POLL_S

    def _enter(self, queue: str) -> None:
        self._waiting[queue] += 1
        if self._watch is not None and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.create_task(self._watch_loop(self._watch), name="swell:waker")

    def _leave(self, queue: str) -> None:
        self._waiting[queue] -= 1
        if self._waiting[queue] <= 0:
            del self._waiting[queue]
            self._due.pop(queue, None)

    async def _watch_loop(self, watch: Watch) -> None:
        """While anyone waits: wake the queues whose due time came, and ask ``watch`` (one call
        for all of them) which others changed."""
        while self._waiting and not self.closed:
            await self.clock.sleep(min(self._interval, self._wake_due()))
            if not self._waiting or self.closed:
                return
            try:
                changed = await watch(frozenset(self._waiting))
            except SwellError as exc:  # the next look tries again, idle-slow
                if self.closed:
                    return
                log.warning("cannot look for messages from other processes: %s", exc)
                self._interval = MAX_POLL_S
                continue
            if self._learn(changed) or self.clock.monotonic() < self._last_got + HOLD_S:
                self._interval = MIN_POLL_S
            else:
                self._interval = min(self._interval * 1.5, MAX_POLL_S)

    def _learn(self, changed: Mapping[str, float | None]) -> bool:
        """Take in what the watcher saw; whether it woke anyone."""
        now = self.clock.time()
        woke = False
        for queue, due in changed.items():
            if queue not in self._waiting:
                # its waiter left while this look was under way and may have called it quiet:
                # the change must not be lost, so its next receive looks at the store
                self._quiet.pop(queue, None)
                continue
            if due is not None and due <= now:
                self._due.pop(queue, None)
                self.notify(queue)
                woke = True
            elif due is None:
                self._due.pop(queue, None)
            else:
                self._due[queue] = due
        return woke

    def _wake_due(self) -> float:
        """Wake the waiting queues whose due time (as the watcher saw it) has come; the seconds
        until the next one."""
        if not self._due:
            return math.inf
        now = self.clock.time()
        for queue in [q for q, due in self._due.items() if due <= now]:
            del self._due[queue]
            self.notify(queue)
        return min(self._due.values(), default=math.inf) - now

    async def _wait(self, ev: asyncio.Event, limit_s: float) -> bool:
        if ev.is_set():
            return True
        if limit_s <= 0:
            return False
        if isinstance(self.clock, RealClock):  # the loop's own timer: no task to wait with
            with suppress(TimeoutError):
                async with asyncio.timeout(limit_s):
                    await ev.wait()
            return ev.is_set()
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
        self._quiet.clear()
        for ev in self._events.values():
            ev.set()
        self._events.clear()
        if self._watcher is not None:
            self._watcher.cancel()

    async def aclose(self) -> None:
        """``close``, and wait for the watcher to end."""
        self.close()
        if self._watcher is not None:
            with suppress(asyncio.CancelledError):
                await self._watcher


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
