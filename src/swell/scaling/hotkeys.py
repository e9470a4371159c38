"""Hot keys: the keys that carry most of a partition's recent traffic, in bounded memory.

``SpaceSaving`` is the top-k sketch of Metwally, Agrawal and El Abbadi (2005): ``capacity`` counters;
a key already counted is incremented; a new key, when the table is full, takes over the smallest
counter and inherits its count as its *error*. Every key whose true count exceeds ``N / capacity``
is in the table, and ``count - error <= true count <= count`` for each key kept.

``HotKeys`` keeps one sketch per partition, fed with time-decayed weights so the top reflects the
recent rate (a promotion blast on one key shows within a half-life) rather than all-time counts.

Decay is *forward decay* (Cormode et al., 2009): instead of multiplying every counter down as time
passes, an event at time ``t`` is added with weight ``2 ** ((t - landmark) / half_life_s)``, and a
read divides by the weight of "now". Scaling every counter by the same factor never changes their
order, so the space-saving rules (replace the minimum, inherit its count) hold unchanged on the
weighted stream, ``observe`` stays one dict update, and no timer or sweep is needed. When the weight
grows large the landmark moves to now and every counter is divided down once (``O(capacity)``, every
``RENORMALISE_HALF_LIVES`` half-lives) so floats never overflow. Rotating two windows was the
alternative; it halves the memory's usefulness and makes the rate jump at each rotation.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

from swell.core.errors import ConfigError

__all__ = ["HotKey", "HotKeys", "SpaceSaving"]

RENORMALISE_HALF_LIVES = 32.0  # weights stay below 2**32 before the landmark moves
MIN_WINDOW_S = 1.0  # rates over a shorter history than this are averaged over this long

N = TypeVar("N", int, float)


class _Summary(Generic[N]):
    """Space-saving over counts of type ``N``: a dict of counters plus a lazy min-heap.

    The heap holds exactly one ``(count, key)`` entry per key kept, possibly stale (lower than the
    key's count, since counts only grow). Finding the minimum pops stale entries and pushes them
    back with their current count; each increment makes at most one entry stale, so an ``add`` is
    ``O(log capacity)`` amortised, and an add to a key already kept is a single dict update.
    """

    __slots__ = ("_counts", "_errors", "_heap", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ConfigError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._counts: dict[str, N] = {}
        self._errors: dict[str, N] = {}
        self._heap: list[tuple[N, str]] = []

    def __len__(self) -> int:
        return len(self._counts)

    def _add(self, key: str, n: N) -> None:
        counts = self._counts
        c = counts.get(key)
        if c is not None:
            counts[key] = c + n
            return
        floor = self._evict_min() if len(counts) >= self.capacity else n - n  # n - n: a zero of type N
        counts[key] = floor + n
        self._errors[key] = floor
        heapq.heappush(self._heap, (floor + n, key))

    def _evict_min(self) -> N:
        """Drop the key with the smallest count; returns that count."""
        heap, counts = self._heap, self._counts
        while True:
            c, key = heap[0]
            current = counts[key]
            if current == c:
                heapq.heappop(heap)
                del counts[key]
                del self._errors[key]
                return c
            heapq.heapreplace(heap, (current, key))

    def _top(self, k: int) -> list[tuple[str, N, N]]:
        best = heapq.nsmallest(k, self._counts.items(), key=_largest_first)
        return [(key, c, self._errors[key]) for key, c in best]


def _largest_first(kv: tuple[str, float]) -> tuple[float, str]:
    return -kv[1], kv[0]


class SpaceSaving(_Summary[int]):
    """Top-k heavy hitters of a stream of keys, in at most ``capacity`` counters.

    >>> s = SpaceSaving(capacity=2)
    >>> for key in "aabac":
    ...     s.add(key)
    >>> s.top(1)
    [('a', 3, 0)]
    """

    __slots__ = ()

    def __init__(self, capacity: int = 64) -> None:
        super().__init__(capacity)

    def add(self, key: str, n: int = 1) -> None:
        """Count ``n`` more occurrences of ``key`` (``n >= 1``)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self._add(key, n)

    def top(self, k: int) -> list[tuple[str, int, int]]:
        """The ``k`` largest counts, largest first: ``(key, estimated count, max overestimate)``.

        The key's true count lies in ``[count - error, count]``.
        """
        return self._top(k)


class _DecayedSummary(_Summary[float]):
    """Space-saving over forward-decayed float weights, plus the exact (weighted) total."""

    __slots__ = ("total",)

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.total = 0.0

    def add(self, key: str | None, w: float) -> None:
        self.total += w
        if key is not None:
            self._add(key, w)

    def counts(self) -> dict[str, float]:
        return self._counts

    def top(self, k: int) -> list[tuple[str, float]]:
        return [(key, c) for key, c, _ in self._top(k)]

    def rescale(self, factor: float) -> None:
        """Multiply every weight by ``factor`` (``> 0``); the order, hence the heap, is unchanged."""
        self.total *= factor
        self._counts = {key: c * factor for key, c in self._counts.items()}
        self._errors = {key: e * factor for key, e in self._errors.items()}
        self._heap = [(c, key) for key, c in self._counts.items()]
        heapq.heapify(self._heap)


class HotKey(msgspec.Struct, frozen=True):
    """One hot key: its recent rate and its share of its partition's (or all partitions') events."""

    partition: int | None
    """The partition, or ``None`` for a key ranked over all partitions."""
    key: str
    rate_per_s: float
    """Events/s for this key, decayed with the tracker's half-life (an estimate, high by at most
    the sketch's error)."""
    share: float
    """This key's part of the partition's recent events, 0..1."""


class HotKeys:
    """The top keys by recent rate, per partition of a stream, each in ``capacity`` counters.

    ``observe(partition, key)`` once per consumed event; ``top(partition)`` for the status page.
    Events with no key are counted in the partition's total but never ranked.
    """

    def __init__(
        self,
        partitions: int,
        capacity: int = 64,
        half_life_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if partitions < 1:
            raise ConfigError(f"partitions must be at least 1, got {partitions}")
        if half_life_s <= 0:
            raise ConfigError(f"half_life_s must be positive, got {half_life_s}")
        self.partitions = partitions
        self.half_life_s = half_life_s
        self._clock = clock
        self._lambda = math.log(2) / half_life_s
        self._start = self._landmark = clock()
        self._renormalise_after = RENORMALISE_HALF_LIVES * half_life_s
        self._sketches = [_DecayedSummary(capacity) for _ in range(partitions)]

    def observe(self, partition: int, key: str | None, n: int = 1) -> None:
        """Count ``n`` events of ``partition`` with routing key ``key`` (a batch's events of one
        key at once: one update instead of ``n``)."""
        if not 0 <= partition < self.partitions:
            raise ConfigError(f"partition {partition} is not in 0..{self.partitions - 1}")
        self._sketches[partition].add(key, n * self._weight(self._clock()))

    def top(self, partition: int | None = None, k: int = 5) -> list[HotKey]:
        """The ``k`` keys with the highest recent rate in ``partition``, or over all partitions."""
        per_s = self._per_s(self._clock())  # first: it may renormalise the stored weights
        if partition is None:
            merged: dict[str, float] = {}
            for sketch in self._sketches:
                for key, c in sketch.counts().items():
                    merged[key] = merged.get(key, 0.0) + c
            ranked = heapq.nsmallest(k, merged.items(), key=_largest_first)
        else:
            ranked = self._sketch(partition).top(k)
        total = self._total(partition)
        return [
            HotKey(partition, key, rate_per_s=c * per_s, share=min(1.0, c / total) if total > 0 else 0.0)
            for key, c in ranked
        ]

    def rate_per_s(self, partition: int | None = None) -> float:
        """All events/s of ``partition`` (keyed or not), or of every partition, decayed alike."""
        per_s = self._per_s(self._clock())  # first: it may renormalise the stored weights
        return self._total(partition) * per_s

    def _sketch(self, partition: int) -> _DecayedSummary:
        if not 0 <= partition < self.partitions:
            raise ConfigError(f"partition {partition} is not in 0..{self.partitions - 1}")
        return self._sketches[partition]

    def _total(self, partition: int | None) -> float:
        if partition is None:
            return sum(s.total for s in self._sketches)
        return self._sketch(partition).total

    def snapshot(self, k: int = 5) -> dict[str, Any]:
        """A JSON-ready summary for the runtime's status.

        ``"keys"`` (the top ``k`` of each partition) and ``"top"`` (over all partitions) each decode
        with ``msgspec.convert(value, list[HotKey])``.
        """
        keys = [hot for p in range(self.partitions) for hot in self.top(p, k)]
        return {
            "half_life_s": self.half_life_s,
            "rate_per_s": [self.rate_per_s(p) for p in range(self.partitions)],
            "keys": msgspec.to_builtins(keys),
            "top": msgspec.to_builtins(self.top(None, k)),
        }

    def _weight(self, now: float) -> float:
        """The forward-decay weight of an event at ``now`` (moving the landmark if it grew large)."""
        age = now - self._landmark
        if age > self._renormalise_after:
            factor = math.exp(-self._lambda * age)
            for sketch in self._sketches:
                sketch.rescale(factor)
            self._landmark = now
            age = 0.0
        return math.exp(self._lambda * age)

    def _per_s(self, now: float) -> float:
        """What turns a stored weight into a decayed events/s at ``now``.

        A steady rate ``r`` decays to a sum of ``r * (1 - exp(-lambda * T)) / lambda`` after ``T``
        seconds of watching; dividing by that factor makes the estimate unbiased from the start
        instead of creeping up over the first few half-lives.
        """
        watched = max(now - self._start, MIN_WINDOW_S)
        return self._lambda / (-math.expm1(-self._lambda * watched)) / self._weight(now)
