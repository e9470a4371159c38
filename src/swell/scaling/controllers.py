"""The baseline controllers of BENCH-SCALING.md, and ``parse_controller`` to name one.

Each is asked every tick (0.5 s) and acts at its own period, otherwise it returns its last decision.
It reads time only from ``Signals.t``; a sample without data (``depth is None``) holds the last
decision, so a broker that stops answering never scales a function to zero.

* ``Fixed(n)``: a static pool.
* ``TargetTracking``: KEDA + HPA on a queue (``ceil((visible + in flight) / 10)``).
* ``Knative``: the Knative pod autoscaler (KPA), stable and panic windows.
* ``AIMD`` and ``Gradient2``: Netflix concurrency-limits' limiters, the limit taken as the number of
  units, with a keep-alive before zero.
"""

from __future__ import annotations

import math
from collections import deque

from swell.core.config import number, whole
from swell.core.errors import ConfigError
from swell.scaling.base import Controller, Decision
from swell.scaling.signals import Signals

__all__ = ["AIMD", "CONTROLLER_NAMES", "Fixed", "Gradient2", "Knative", "TargetTracking",
           "parse_controller"]

CONTROLLER_NAMES = ("auto", "fixed:N", "hpa", "kpa", "aimd", "gradient2")


def _hold(last: Decision | None, s: Signals) -> Decision:
    n = last.desired if last is not None else s.current
    return Decision(n, f"hold at {n}: no signal")


def _check_bounds(name: str, min_units: int, max_units: int) -> None:
    whole(min_units, name=f"{name}(min=...)")
    whole(max_units, name=f"{name}(max=...)", low=1)
    if min_units > max_units:
        raise ConfigError(f"{name} needs 0 <= min <= max and max >= 1, got min={min_units} "
                          f"max={max_units}")


class Fixed:
    """A static pool of ``n`` units, whatever happens."""

    def __init__(self, n: int) -> None:
        whole(n, name="Fixed(n)")
        self.n = self.min_units = self.max_units = n

    def __repr__(self) -> str:
        return f"Fixed({self.n})"

    def decide(self, s: Signals) -> Decision:
        return Decision(self.n, f"fixed at {self.n}")


class TargetTracking:
    """KEDA polling a queue + the Kubernetes HPA on its external metric.

    KEDA polls every ``polling_s``: it activates 0 -> 1 when ``visible + in flight`` is over
    ``activation``, and scales to zero ``cooldown_s`` after the metric was last active. The HPA syncs
    every ``sync_s`` while there is at least one unit: ``ceil(metric / per_instance)``, unchanged
    within ``tolerance``, up by at most ``max(up_factor x, +up_units)`` per sync, down only to the
    highest recommendation of the last ``down_window_s``, never below 1 (zero is KEDA's job).
    """

    def __init__(self, min: int = 0, max: int = 64, per_instance: float = 10.0,
                 polling_s: float = 30.0, activation: float = 0.0, sync_s: float = 15.0,
                 tolerance: float = 0.1, up_factor: float = 2.0, up_units: int = 4,
                 down_window_s: float = 300.0, cooldown_s: float = 300.0) -> None:
        _check_bounds("TargetTracking", min, max)
        c = "TargetTracking"
        number(per_instance, name=f"{c}(per_instance=...)", above=True)
        number(activation, name=f"{c}(activation=...)")
        number(tolerance, name=f"{c}(tolerance=...)")
        number(up_factor, name=f"{c}(up_factor=...)", low=1.0)
        whole(up_units, name=f"{c}(up_units=...)")
        for n, v in (("polling_s", polling_s), ("sync_s", sync_s), ("down_window_s", down_window_s),
                     ("cooldown_s", cooldown_s)):
            number(v, name=f"{c}({n}=...)")
        self.min_units, self.max_units = min, max
        self.per_instance, self.polling_s, self.activation = per_instance, polling_s, activation
        self.sync_s, self.tolerance = sync_s, tolerance
        self.up_factor, self.up_units = up_factor, up_units
        self.down_window_s, self.cooldown_s = down_window_s, cooldown_s
        self._desired = min
        self._last: Decision | None = None
        self._next_poll = self._next_sync = -math.inf
        self._last_active: float | None = None
        self._recs: deque[tuple[float, int]] = deque()

    def __repr__(self) -> str:
        return f"TargetTracking(min={self.min_units}, max={self.max_units})"

    def decide(self, s: Signals) -> Decision:
        if s.depth is None:
            return _hold(self._last, s)
        if self._last_active is None:
            self._last_active = s.t
        metric = s.depth + s.in_flight
        was = self._desired
        reason = None
        if s.t >= self._next_poll:
            self._next_poll = s.t + self.polling_s
            reason = self._poll(s.t, metric)
        if was > 0 and self._desired > 0 and s.t >= self._next_sync:
            self._next_sync = s.t + self.sync_s
            reason = self._sync(s.t, metric) or reason
        if reason is not None or self._last is None:
            self._last = Decision(self._desired, reason or f"hold at {self._desired}")
        return self._last

    def _poll(self, t: float, metric: int) -> str | None:
        if metric > self.activation:
            self._last_active = t
            if self._desired == 0:
                self._desired = max(1, self.min_units)
                self._recs.clear()
                return f"activate: {metric:,} waiting or in flight, 0 -> {self._desired}"
        elif (self._desired > self.min_units and self._last_active is not None
              and t - self._last_active >= self.cooldown_s):
            self._desired = self.min_units
            self._recs.clear()
            return f"scale to {self.min_units}: inactive for {t - self._last_active:.0f} s"
        return None

    def _sync(self, t: float, metric: int) -> str:
        cur = self._desired
        floor = max(1, self.min_units)
        ratio = metric / (self.per_instance * cur)
        if abs(ratio - 1.0) <= self.tolerance:
            rec, why = cur, f"within tolerance: {metric:,} / {self.per_instance:g} per instance"
        else:
            rec = math.ceil(metric / self.per_instance)
            why = f"{metric:,} waiting or in flight / {self.per_instance:g} per instance -> {rec:,}"
            if rec > self.max_units:
                why += f", at most {self.max_units}"
        rec = min(max(rec, floor), self.max_units)
        self._recs.append((t, rec))
        while self._recs and self._recs[0][0] < t - self.down_window_s:
            self._recs.popleft()
        if rec > cur:
            limit = max(math.ceil(cur * self.up_factor), cur + self.up_units)
            new = min(rec, limit, self.max_units)
            verb = f"scale up: {why}" + (f", limited to {new}" if new < rec else "")
        else:
            new = min(cur, max(r for _, r in self._recs))
            verb = (f"scale down: {why}, highest of {self.down_window_s:g} s = {new}" if new < cur
                    else f"hold at {cur}: {why}")
        self._desired = new
        return verb


class Knative:
    """The Knative pod autoscaler (KPA) on a queue: concurrency = waiting + in flight.

    Every ``tick_s``: desired = ``ceil(avg concurrency / (target x utilization))`` over the
    ``stable_window_s``; if the ``panic_window_s`` average asks for ``panic_threshold`` x the ready
    units, panic: follow the panic window and never scale down until the surge has been in the
    stable window for a whole window. At most ``max_scale_down_rate`` fewer per tick (ready / 2);
    zero after ``scale_to_zero_grace_s`` of wanting zero. From zero it acts at once (the activator).
    """

    def __init__(self, min: int = 0, max: int = 64, target: float = 1.0, utilization: float = 0.7,
                 stable_window_s: float = 60.0, panic_window_s: float = 6.0,
                 panic_threshold: float = 2.0, tick_s: float = 2.0,
                 scale_to_zero_grace_s: float = 30.0, max_scale_down_rate: float = 2.0,
                 max_scale_up_rate: float = 1000.0) -> None:
        _check_bounds("Knative", min, max)
        c = "Knative"
        number(target, name=f"{c}(target=...)", above=True)
        number(utilization, name=f"{c}(utilization=...)", above=True, high=1.0)
        for n, v in (("stable_window_s", stable_window_s), ("panic_window_s", panic_window_s),
                     ("tick_s", tick_s)):
            number(v, name=f"{c}({n}=...)", above=True)
        number(scale_to_zero_grace_s, name=f"{c}(scale_to_zero_grace_s=...)")
        number(panic_threshold, name=f"{c}(panic_threshold=...)", above=True)
        number(max_scale_down_rate, name=f"{c}(max_scale_down_rate=...)", low=1.0)
        number(max_scale_up_rate, name=f"{c}(max_scale_up_rate=...)", low=1.0)
        self.min_units, self.max_units = min, max
        self.target = target * utilization
        self.stable_window_s, self.panic_window_s = stable_window_s, panic_window_s
        self.panic_threshold, self.tick_s = panic_threshold, tick_s
        self.grace_s = scale_to_zero_grace_s
        self.max_down_rate, self.max_up_rate = max_scale_down_rate, max_scale_up_rate
        self._samples: deque[tuple[float, int]] = deque()
        self._last: Decision | None = None
        self._next_tick = -math.inf
        self._panic_time: float | None = None
        self._max_panic = 0
        self._zero_since: float | None = None

    def __repr__(self) -> str:
        return f"Knative(min={self.min_units}, max={self.max_units})"

    @property
    def panicking(self) -> bool:
        return self._panic_time is not None

    def decide(self, s: Signals) -> Decision:
        if s.depth is None:
            return _hold(self._last, s)
        concurrency = s.depth + s.in_flight
        self._samples.append((s.t, concurrency))
        while self._samples[0][0] <= s.t - self.stable_window_s:
            self._samples.popleft()
        current = self._last.desired if self._last is not None else 0
        if s.t >= self._next_tick or (current == 0 and concurrency > 0):
            self._next_tick = s.t + self.tick_s
            self._last = self._tick(s, current)
        assert self._last is not None
        return self._last

    def _avg(self, t: float, window_s: float) -> float:
        xs = [c for ts, c in self._samples if ts > t - window_s]
        return sum(xs) / len(xs)

    def _tick(self, s: Signals, current: int) -> Decision:
        stable, panic = self._avg(s.t, self.stable_window_s), self._avg(s.t, self.panic_window_s)
        ready = float(max(1, s.ready))
        max_up, max_down = math.ceil(self.max_up_rate * ready), math.floor(ready / self.max_down_rate)
        dspc = min(max(math.ceil(stable / self.target), max_down), max_up)
        dppc = min(max(math.ceil(panic / self.target), max_down), max_up)
        over = panic / self.target / ready >= self.panic_threshold
        if over:
            self._panic_time = s.t
        elif self._panic_time is not None and self._panic_time + self.stable_window_s <= s.t:
            self._panic_time, self._max_panic = None, 0
        want = dspc
        why = f"stable {stable:,.1f} concurrent / {self.target:g} per unit"
        if self._panic_time is not None:
            want = max(want, dppc, self._max_panic)
            self._max_panic = want
            why = f"panic: {panic:,.1f} concurrent in {self.panic_window_s:g} s / {self.target:g} per unit"
        want = min(max(want, self.min_units), self.max_units)
        if want == 0 and current > 0:
            self._zero_since = s.t if self._zero_since is None else self._zero_since
            if s.t - self._zero_since < self.grace_s:
                return Decision(current, f"hold at {current}: idle, grace {self.grace_s:g} s")
            return Decision(0, f"scale to zero: idle for {s.t - self._zero_since:.0f} s of grace")
        self._zero_since = None
        verb = "scale up" if want > current else "scale down" if want < current else "hold"
        return Decision(want, f"{verb}: {why} -> {want}")


class _Limiter:
    """What AIMD and Gradient2 share: a limit in units, evaluated every ``period_s``, zero after
    ``keep_alive_s`` with nothing waiting or running, woken at the limit when work shows up."""

    def __init__(self, min: int, max: int, initial: float, min_limit: float, period_s: float,
                 keep_alive_s: float) -> None:
        c = type(self).__name__
        _check_bounds(c, min, max)
        number(min_limit, name=f"{c}(min_limit=...)", above=True)
        number(initial, name=f"{c}(initial=...)", low=min_limit)
        number(period_s, name=f"{c}(period_s=...)", above=True)
        number(keep_alive_s, name=f"{c}(keep_alive_s=...)")
        self.min_units, self.max_units = min, max
        self.limit = float(initial)
        self.min_limit = min_limit
        self.period_s, self.keep_alive_s = period_s, keep_alive_s
        self._last: Decision | None = None
        self._next = -math.inf
        self._idle_since: float | None = None
        self._prev: Signals | None = None

    def decide(self, s: Signals) -> Decision:
        if s.depth is None:
            return _hold(self._last, s)
        self._observe(s)
        if s.t < self._next and self._last is not None:
            return self._last
        self._next = s.t + self.period_s
        prev, self._prev = self._prev, s
        current = self._last.desired if self._last is not None else self.min_units
        idle = s.depth == 0 and s.delayed == 0 and s.in_flight == 0
        if idle:
            self._idle_since = s.t if self._idle_since is None else self._idle_since
            if current == 0 or s.t - self._idle_since >= self.keep_alive_s:
                self._last = Decision(self.min_units, f"idle {s.t - self._idle_since:.0f} s: "
                                      f"scale to {self.min_units}" if current else "idle")
            else:
                self._last = Decision(current, f"hold at {current}: idle "
                                      f"{s.t - self._idle_since:.0f} s of {self.keep_alive_s:g} s")
            return self._last
        self._idle_since = None
        why = self._update(s, prev) if prev is not None else "first sample"
        want = min(max(math.floor(self.limit), 1, self.min_units), self.max_units)
        self._last = Decision(want, f"limit {self.limit:.1f}: {why}")
        return self._last

    def _observe(self, s: Signals) -> None:
        """Every sample, acted on or not."""

    def _update(self, s: Signals, prev: Signals) -> str:
        raise NotImplementedError


class AIMD(_Limiter):
    """Additive increase, multiplicative decrease (Netflix concurrency-limits' ``AIMDLimit``).

    Each ``period_s``: x ``backoff`` if an attempt was throttled or failed since the last
    evaluation, else +1 if ``in flight x 2 >= limit``; otherwise the limit stays.
    """

    def __init__(self, min: int = 0, max: int = 64, initial: float = 1.0, min_limit: float = 1.0,
                 backoff: float = 0.9, period_s: float = 1.0, keep_alive_s: float = 30.0) -> None:
        super().__init__(min, max, initial, min_limit, period_s, keep_alive_s)
        number(backoff, name="AIMD(backoff=...)", above=True, high=1.0)
        self.backoff = backoff

    def __repr__(self) -> str:
        return f"AIMD(min={self.min_units}, max={self.max_units})"

    def _update(self, s: Signals, prev: Signals) -> str:
        throttles, errors = s.throttles - prev.throttles, s.errors - prev.errors
        if throttles > 0 or errors > 0:
            self.limit = max(self.min_limit, self.limit * self.backoff)
            return f"x{self.backoff:g} after {throttles:,} throttled, {errors:,} failed"
        if s.in_flight * 2 >= self.limit:
            self.limit = min(float(self.max_units), self.limit + 1)
            return f"+1, {s.in_flight:,} in flight"
        return f"hold, {s.in_flight:,} in flight"


class ExpAvg:
    """concurrency-limits' ``ExpAvgMeasurement``: a plain mean over the first ``warmup`` samples,
    then an exponential average with factor ``2 / (window + 1)``."""

    def __init__(self, window: int, warmup: int) -> None:
        self.factor, self.warmup = 2.0 / (window + 1), warmup
        self.count, self.value = 0, 0.0

    def add(self, x: float) -> float:
        if self.count < self.warmup:
            self.count += 1
            self.value += (x - self.value) / self.count
        else:
            self.value = self.value * (1 - self.factor) + x * self.factor
        return self.value


class Gradient2(_Limiter):
    """Netflix concurrency-limits' ``Gradient2Limit``, one sample per ``period_s``.

    short RTT = the mean service time of the period; long RTT = its exponential average over
    ``long_window`` samples (decayed 5 % when more than twice the short one). Unless app-limited
    (``in flight < limit / 2``): ``gradient = clamp(tolerance x long / short, 0.5, 1)``,
    ``new = limit x gradient + queue_size``, smoothed: ``limit x (1 - smoothing) + new x smoothing``.
    """

    def __init__(self, min: int = 0, max: int = 64, initial: float = 1.0, min_limit: float = 1.0,
                 smoothing: float = 0.2, queue_size: float = 4.0, tolerance: float = 1.0,
                 long_window: int = 600, period_s: float = 1.0, keep_alive_s: float = 30.0) -> None:
        super().__init__(min, max, initial, min_limit, period_s, keep_alive_s)
        number(smoothing, name="Gradient2(smoothing=...)", above=True, high=1.0)
        number(queue_size, name="Gradient2(queue_size=...)")
        number(tolerance, name="Gradient2(tolerance=...)", above=True)
        whole(long_window, name="Gradient2(long_window=...)", low=1)
        self.smoothing, self.queue_size, self.tolerance = smoothing, queue_size, tolerance
        self.long_rtt = ExpAvg(long_window, 10)
        self._rtts: list[float] = []

    def __repr__(self) -> str:
        return f"Gradient2(min={self.min_units}, max={self.max_units})"

    def _observe(self, s: Signals) -> None:
        if s.service_time_s is not None:
            self._rtts.append(s.service_time_s)

    def _update(self, s: Signals, prev: Signals) -> str:
        if not self._rtts:
            return "hold, no finished attempt"
        short = sum(self._rtts) / len(self._rtts)
        self._rtts.clear()
        long = self.long_rtt.add(short)
        if long / short > 2:
            self.long_rtt.value *= 0.95
        if s.in_flight < self.limit / 2:
            return f"hold, app-limited ({s.in_flight:,} in flight)"
        gradient = max(0.5, min(1.0, self.tolerance * long / short))
        new = self.limit * gradient + self.queue_size
        new = self.limit * (1 - self.smoothing) + new * self.smoothing
        self.limit = max(self.min_limit, min(float(self.max_units), new))
        return f"gradient {gradient:.2f} (RTT {long * 1000:.0f} ms long, {short * 1000:.0f} ms short)"


def parse_controller(spec: str, max_units: int = 64) -> Controller:
    """A controller from its name: ``fixed:N``, ``hpa``, ``kpa``, ``aimd``, ``gradient2`` or
    ``auto``, each allowed up to ``max_units`` units."""
    name, _, arg = spec.strip().lower().partition(":")
    if name == "fixed":
        try:
            n = int(arg)
        except ValueError:
            raise ConfigError(f"controller {spec!r}: fixed needs a size, like fixed:8") from None
        return Fixed(n)
    if arg:
        raise ConfigError(f"controller {spec!r} takes no argument")
    if name == "auto":
        from swell.scaling.auto import Auto

        return Auto(max=max_units)
    factories: dict[str, type[TargetTracking | Knative | AIMD | Gradient2]] = {
        "hpa": TargetTracking, "keda": TargetTracking, "kpa": Knative, "knative": Knative,
        "aimd": AIMD, "gradient2": Gradient2}
    if name not in factories:
        raise ConfigError(f"unknown controller {spec!r}: use {', '.join(CONTROLLER_NAMES)}")
    return factories[name](max=max_units)
