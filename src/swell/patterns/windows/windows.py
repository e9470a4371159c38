"""The kinds of window: which ``[start, end)`` intervals an event time falls in.

Fixed windows (``Tumbling``, ``Sliding``) are aligned to the epoch and assigned by arithmetic;
``Session`` windows are merged per key by the operator. Durations are seconds, ``timedelta`` or
strings such as ``"10s"``, ``"5m"`` (``swell.core.config.seconds``); a bad one is a ``ConfigError``
when the window is made.
"""

from __future__ import annotations

import math

from swell.core.config import Duration, seconds
from swell.core.errors import ConfigError

MAX_OVERLAP = 10_000
"""The most sliding windows one event may fall in (each costs an update per event)."""


class Tumbling:
    """Back-to-back windows of ``size``: ``[k * size, (k + 1) * size)``; each event falls in one."""

    __slots__ = ("size",)

    def __init__(self, size: Duration) -> None:
        self.size = seconds(size, name="Tumbling size", positive=True)

    def starts(self, t: float) -> list[float]:
        """The start of the window ``t`` falls in (the operator inlines this on its fast path)."""
        return [t - t % self.size]

    def __repr__(self) -> str:
        return f"Tumbling({self.size!r})"


class Sliding:
    """Windows of ``size`` starting every ``every`` (``[k * every, k * every + size)``); an event
    falls in about ``size / every`` of them. ``every`` must be above zero and at most ``size``
    (a larger one would leave gaps no window covers); it need not divide ``size``, and ``size /
    every`` may be at most 10,000."""

    __slots__ = ("every", "size")

    def __init__(self, size: Duration, every: Duration) -> None:
        self.size = seconds(size, name="Sliding size", positive=True)
        self.every = seconds(every, name="Sliding every", positive=True)
        if self.every > self.size:
            raise ConfigError(f"Sliding every ({self.every:g} s) must be at most its size "
                              f"({self.size:g} s): events between windows would fall in none")
        if self.size / self.every > MAX_OVERLAP:
            raise ConfigError(f"Sliding({self.size:g} s, every={self.every:g} s) puts each event in "
                              f"{self.size / self.every:,.0f} windows; at most {MAX_OVERLAP:,} are taken")

    def starts(self, t: float) -> list[float]:
        """The starts of the windows ``t`` falls in, oldest first. Each is ``k * every`` for a whole
        ``k`` (never a running sum), so every event computes the same start for the same window."""
        every, size = self.every, self.size
        k = math.floor(t / every)
        if k * every > t:
            k -= 1
        elif (k + 1) * every <= t:
            k += 1
        out = []
        while (k * every) + size > t:
            out.append(k * every)
            k -= 1
        out.reverse()
        return out

    def __repr__(self) -> str:
        return f"Sliding({self.size!r}, every={self.every!r})"


class Session:
    """Per key, events less than ``gap`` apart in event time share a window: each event opens
    ``[t, t + gap)`` and overlapping windows merge (touching ones do not, as in Beam). The aggregate
    must be able to merge (every built-in one can; a ``Reducer`` needs ``merge``)."""

    __slots__ = ("gap",)

    def __init__(self, gap: Duration) -> None:
        self.gap = seconds(gap, name="Session gap", positive=True)

    def __repr__(self) -> str:
        return f"Session({self.gap!r})"


Window = Tumbling | Sliding | Session
