"""What a controller sees of a function, sampled every tick: a frozen ``Signals`` value.

The runtime samples the broker and its own counters; the simulator fills the same value from its
model, so a controller cannot tell them apart. A field that is ``None`` is unknown at this tick
(the broker did not answer, no event finished yet): controllers hold rather than guess.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Signals:
    """One sample of one function's work."""

    t: float
    """When the sample was taken, in seconds on the controller's clock (monotonic)."""
    depth: int | None
    """Events ready and waiting; ``None`` if unknown."""
    in_flight: int
    """Events being handled now."""
    delayed: int = 0
    """Events waiting out a delay (a retry's backoff, a throttle's retry-after)."""
    oldest_age_s: float | None = None
    arrival_rate: float | None = None
    """Events/s arriving (smoothed); ``None`` until known."""
    completion_rate: float = 0.0
    """Events/s finished: acked, or dead-lettered (smoothed)."""
    service_time_s: float | None = None
    """Mean handler time over the last tick; ``None`` if nothing finished in it."""
    service_p50_s: float | None = None
    service_p99_s: float | None = None
    error_rate: float = 0.0
    """Failed attempts / attempts (smoothed, 0..1)."""
    throttle_rate: float = 0.0
    """Throttled attempts / attempts (smoothed, 0..1)."""
    attempts: int = 0
    """Totals since start: attempts, failed ones, throttled ones (monotonic counters)."""
    errors: int = 0
    throttles: int = 0
    starting: int = 0
    """Instances asked for and still cold-starting."""
    ready: int = 0
    """Instances ready to work (idle or busy)."""
    busy: int = 0
    """Instances handling an event now."""
    cold_starts: int = 0
    current: int = 0
    """The concurrency in force when the sample was taken."""
    lag: int | None = None
    """For stream consumers: events behind the head, summed over partitions."""

    @property
    def backlog(self) -> int | None:
        """Work not yet started: waiting plus delayed (``None`` if unknown)."""
        return None if self.depth is None else self.depth + self.delayed


class SignalHistory:
    """The last ``maxlen`` samples (at 0.5 s ticks, 1,200 are ten minutes), oldest first."""

    def __init__(self, maxlen: int = 1200) -> None:
        self._ring: deque[Signals] = deque(maxlen=maxlen)

    def append(self, s: Signals) -> None:
        self._ring.append(s)

    def latest(self) -> Signals | None:
        return self._ring[-1] if self._ring else None

    def since(self, t: float) -> list[Signals]:
        return [s for s in self._ring if s.t >= t]

    def __iter__(self) -> Iterator[Signals]:
        return iter(self._ring)

    def __len__(self) -> int:
        return len(self._ring)


class Ewma:
    """Exponential smoothing over time: a sample ``half_life_s`` old weighs half as much."""

    __slots__ = ("half_life_s", "value")

    def __init__(self, half_life_s: float) -> None:
        self.half_life_s = half_life_s
        self.value: float | None = None

    def update(self, sample: float, dt: float) -> float:
        if self.value is None or dt <= 0:
            self.value = sample if self.value is None else self.value
            return self.value
        keep = 0.5 ** (dt / self.half_life_s)
        self.value = keep * self.value + (1 - keep) * sample
        return self.value


@dataclass(frozen=True, slots=True)
class Observation:
    """Raw readings of one tick. Totals are counters since start; ``service_times_s`` are the
    handler times of attempts that finished since the last tick."""

    t: float
    depth: int | None
    in_flight: int
    delayed: int = 0
    oldest_age_s: float | None = None
    finished: int = 0
    """Total events finished for good: acked or dead-lettered."""
    attempts: int = 0
    errors: int = 0
    throttles: int = 0
    service_times_s: tuple[float, ...] = ()
    starting: int = 0
    ready: int = 0
    busy: int = 0
    cold_starts: int = 0
    current: int = 0
    lag: int | None = None


class Sampler:
    """Turns a tick's raw ``Observation`` into smoothed ``Signals``; the runtime and the simulator
    share it, so a controller sees the same estimates in both.

    Arrivals are not observed directly (producers may live anywhere); they are estimated by
    conservation: what arrived = growth of the queue + what finished.
    """

    def __init__(self, half_life_s: float = 2.0, window: int = 512) -> None:
        self._arrivals = Ewma(half_life_s)
        self._completions = Ewma(half_life_s)
        self._errors = Ewma(half_life_s)
        self._throttles = Ewma(half_life_s)
        self._recent: deque[float] = deque(maxlen=window)
        self._last: Observation | None = None

    def observe(self, o: Observation) -> Signals:
        last, self._last = self._last, o
        service = sum(o.service_times_s) / len(o.service_times_s) if o.service_times_s else None
        self._recent.extend(o.service_times_s)
        arrival = None
        if last is not None and o.t > last.t:
            dt = o.t - last.t
            finished = o.finished - last.finished
            tried = o.attempts - last.attempts
            self._completions.update(finished / dt, dt)
            if o.depth is not None and last.depth is not None:
                grown = (o.depth + o.in_flight + o.delayed) - (last.depth + last.in_flight
                                                               + last.delayed)
                arrival = self._arrivals.update(max(0.0, (grown + finished) / dt), dt)
            if tried > 0:
                self._errors.update((o.errors - last.errors) / tried, dt)
                self._throttles.update((o.throttles - last.throttles) / tried, dt)
        p50 = p99 = None
        if self._recent:
            xs = sorted(self._recent)
            p50, p99 = xs[len(xs) // 2], xs[min(len(xs) - 1, int(0.99 * len(xs)))]
        return Signals(
            t=o.t, depth=o.depth, in_flight=o.in_flight, delayed=o.delayed,
            oldest_age_s=o.oldest_age_s, arrival_rate=arrival if arrival is not None
            else self._arrivals.value, completion_rate=self._completions.value or 0.0,
            service_time_s=service, service_p50_s=p50, service_p99_s=p99,
            error_rate=self._errors.value or 0.0, throttle_rate=self._throttles.value or 0.0,
            attempts=o.attempts, errors=o.errors, throttles=o.throttles, starting=o.starting,
            ready=o.ready, busy=o.busy, cold_starts=o.cold_starts, current=o.current, lag=o.lag)
