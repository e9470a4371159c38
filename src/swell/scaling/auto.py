"""``Auto``, the default controller: serve the demand, never push a downstream past what it allows.

Two numbers, taken every tick:

* **demand** — by Little's law, the units needed to keep up with arrivals plus those needed to drain
  the backlog within ``target_wait``: ``service_time x (arrival_rate x headroom + backlog /
  target_wait)``;
* **limit** — what the downstream sustains, learned: when attempts come back throttled, the rate of
  calls that went through *is* the downstream's quota, so ``quota x service_time`` units are all that
  help; errors in bulk and a sharp rise in latency lower it too. The limit is probed upward, slowly,
  once no throttle has been seen for a while, so a raised quota is found again.

The answer is ``min(demand, limit)``, reached fast on the way up (bounded by what has proven itself
ready, so a cold start cannot overshoot blindly) and slowly on the way down (the highest
recommendation of a short window), and zero only after ``idle`` seconds with nothing to do. With no
data (the broker did not answer) it holds.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from swell.core.config import Duration, seconds, whole
from swell.core.cost import BudgetCap
from swell.core.errors import ConfigError
from swell.scaling.base import Decision
from swell.scaling.signals import Ewma, Signals

PRIOR_SERVICE_S = 0.1   # until a handler has finished once
HEADROOM = 1.15         # spare units over the arrival rate, so waits stay short
QUOTA_SAFETY = 0.95     # run just under a learned downstream quota
PROBE_AFTER_S = 30.0    # a quiet spell after which the limit may creep up again
PROBE_EVERY_S = 5.0
DOWN_WINDOW_S = 10.0    # scale down to the highest recommendation of this window
GROWTH = 1.5            # per tick, over what is proven ready
QUIET_S = 2.0           # nothing waiting, running or finishing this long: keep one unit warm
ARRIVAL_HALF_LIFE_S = 8.0  # steady demand follows a slow average; the backlog term takes bursts
DEAD_BAND = 0.25        # a fraction of a unit of extra demand does not buy a unit
DOWN_BAND = 0.5         # nor does a fraction of a unit of slack give one back
THROTTLE_WINDOW_S = 2.0  # the downstream's quota is measured over this long
ERROR_LIMIT = 0.3       # more failed attempts than this fraction lowers the limit
LATENCY_LIMIT = 2.5     # so does service time this many times its calm baseline
PAUSE = 2.0             # a tick this many times the usual interval late: this process was paused


@dataclass
class _State:
    last: Signals | None = None
    decision: Decision = field(default_factory=lambda: Decision(0, "start"))
    service: Ewma = field(default_factory=lambda: Ewma(5.0))
    calm_service: float | None = None
    limit: float = math.inf
    last_limit_t: float = -math.inf
    last_probe_t: float = -math.inf
    idle_since: float | None = None
    quiet_since: float | None = None
    window: deque[Signals] = field(default_factory=deque)
    arrivals: Ewma = field(default_factory=lambda: Ewma(ARRIVAL_HALF_LIFE_S))
    recent: deque[tuple[float, int]] = field(default_factory=deque)
    tick_s: float = math.inf
    paused_t: float = -math.inf


class Auto:
    """The default controller. ``Auto(min=0, max=64, target_wait="10s", idle="30s")``.

    ``target_wait``: how soon a backlog should be drained; ``idle``: how long a function with
    nothing to do keeps its units before going to ``min`` (zero by default).

    ``cap``, set by the runtime from the function's ``budget=``, bounds the units at what the
    budget pays for, each unit at its price and the events it finishes now (see ``BudgetCap``;
    never below one, nor below ``min``).
    """

    def __init__(self, min: int = 0, max: int = 64, target_wait: Duration = 10.0,
                 idle: Duration = 30.0) -> None:
        self.min_units = whole(min, name="Auto(min=...)")
        self.max_units = whole(max, name="Auto(max=...)", low=1)
        if min > max:
            raise ConfigError(f"Auto needs 0 <= min <= max and max >= 1, got min={min} max={max}")
        self.target_wait_s = seconds(target_wait, name="Auto(target_wait=...)", positive=True)
        self.idle_s = seconds(idle, name="Auto(idle=...)")
        self.cap: BudgetCap | None = None
        self._st = _State()

    def __repr__(self) -> str:
        return (f"Auto(min={self.min_units}, max={self.max_units}, "
                f"target_wait={self.target_wait_s:g}, idle={self.idle_s:g})")

    @property
    def limit(self) -> float:
        """The learned downstream limit in units (``inf`` until one is learned)."""
        return self._st.limit

    def decide(self, s: Signals) -> Decision:
        st = self._st
        if s.depth is None:
            return Decision(st.decision.desired, f"hold at {st.decision.desired}: no signal")
        last, st.last = st.last, s
        dt = s.t - last.t if last is not None else 0.0
        # a late tick means this process stood still: what was measured across the pause
        # (handler times stretched by it, rates diluted by it) says nothing about the downstream
        if dt > 0:
            st.tick_s = min(st.tick_s, dt)
        paused = dt > PAUSE * st.tick_s
        if paused:
            st.paused_t = s.t
        service = self._service(s, last, dt, paused)
        st.arrivals.update(s.arrival_rate or 0.0, dt)
        if last is not None and dt > 0 and not paused:
            self._learn(s, last, dt, service)
        quiet = (s.depth == 0 and s.delayed == 0 and s.in_flight == 0
                 and (last is None or s.attempts == last.attempts))
        if not quiet:
            st.quiet_since = None
        elif st.quiet_since is None:  # quiet since the last tick that saw work
            st.quiet_since = last.t if last is not None else s.t
        st.decision = self._capped(s, service, self._clamp(s, self._recommend(s, service)))
        return st.decision

    def _capped(self, s: Signals, service: float, d: Decision) -> Decision:
        """``d``, or fewer units if the budget's projected spend at ``d`` would pass it."""
        if self.cap is None:
            return d
        latest = None if self._st.paused_t == s.t else s.service_time_s  # (not one a pause stretched)
        top = max(self.cap.units(s.completion_rate, max(s.current, s.busy), service, latest),
                  self.min_units)
        if d.desired <= top:
            return d
        return Decision(top, f"capped at {top} by budget {self.cap} (wanted {d.desired}: "
                        f"{d.reason})")

    # -- estimates -----------------------------------------------------------------------------
    def _service(self, s: Signals, last: Signals | None, dt: float, paused: bool) -> float:
        st = self._st
        st.window.append(s)
        while st.window and st.window[0].t < s.t - THROTTLE_WINDOW_S:
            st.window.popleft()
        if s.service_time_s is not None and not paused:
            value = st.service.update(s.service_time_s, dt)
            if st.calm_service is None or value < st.calm_service:
                st.calm_service = value
            elif last is not None and s.throttles == last.throttles:
                # drift the baseline up slowly, so a slower but healthy downstream is not "sick"
                st.calm_service += (value - st.calm_service) * min(1.0, dt / 300.0)
        return st.service.value or PRIOR_SERVICE_S

    def _learn(self, s: Signals, last: Signals, dt: float, service: float) -> None:
        st = self._st
        attempts = s.attempts - last.attempts
        throttles = s.throttles - last.throttles
        errors = s.errors - last.errors
        if throttles > 0:
            # what got through over the window is the downstream's quota; at a healthy latency
            # that many calls need quota x calm service time units, and more only queue or fail
            first = next((w for w in st.window if w.t >= st.paused_t), s)
            span = s.t - first.t
            if span > 0:  # (the window always holds the previous tick; this is a guard)
                passed = max(0, (s.attempts - first.attempts) - (s.throttles - first.throttles)
                             - (s.errors - first.errors)) / span
                sustained = passed * (st.calm_service or service) * QUOTA_SAFETY
                st.limit = max(1.0, min(sustained, float(max(s.busy, s.in_flight, 1))))
                st.last_limit_t = s.t
        elif s.t - st.last_limit_t > 2.0 and (self._erring(attempts, errors) or self._slow(s)):
            st.limit = max(1.0, min(st.limit, s.in_flight * 0.9))
            st.last_limit_t = s.t
        elif (math.isfinite(st.limit) and s.t - st.last_limit_t > PROBE_AFTER_S
              and s.t - st.last_probe_t > PROBE_EVERY_S and s.current >= math.floor(st.limit)):
            st.limit += 1.0
            st.last_probe_t = s.t

    @staticmethod
    def _erring(attempts: int, errors: int) -> bool:
        return attempts > 0 and errors / attempts > ERROR_LIMIT

    def _slow(self, s: Signals) -> bool:
        calm = self._st.calm_service
        return bool(calm and s.service_time_s and s.in_flight > 2
                    and s.service_time_s > LATENCY_LIMIT * calm)

    def _recommend(self, s: Signals, service: float) -> tuple[int, str]:
        st = self._st
        backlog = s.depth + s.delayed if s.depth is not None else 0
        # the slow average for steady demand, but never more than the recent rate: after a burst
        # (already counted in the backlog) demand falls as fast as the arrivals do
        arrivals = min(st.arrivals.value or 0.0, s.arrival_rate or 0.0)
        if backlog == 0 and s.in_flight == 0 and arrivals < 0.05:
            return 0, "idle"
        if st.quiet_since is not None and s.t - st.quiet_since >= QUIET_S:
            # no work for a while: whatever the average says, one warm unit is enough
            return 0, f"quiet {s.t - st.quiet_since:.0f}s"
        demand = service * (arrivals * HEADROOM + backlog / self.target_wait_s)
        want = max(1, math.ceil(demand - DEAD_BAND))
        if want < st.decision.desired:  # hysteresis: give units back only with clear slack
            want = min(st.decision.desired, max(1, math.ceil(demand + DOWN_BAND)))
        if backlog > 0:
            why = (f"backlog {backlog:,} / drain target {self.target_wait_s:g}s, "
                   f"{arrivals:,.1f}/s x {service * 1000:,.0f} ms")
        else:
            why = f"{arrivals:,.1f}/s x {service * 1000:,.0f} ms"
        if want > self._st.limit:
            return max(1, math.floor(self._st.limit)), f"{why}; capped by downstream limit"
        return want, why

    def _clamp(self, s: Signals, rec: tuple[int, str]) -> Decision:
        st = self._st
        want, why = rec
        current = st.decision.desired
        # the way to zero: only after a full idle period
        if want == 0:
            if st.idle_since is None:  # idle since the work stopped, not since we noticed
                st.idle_since = st.quiet_since if st.quiet_since is not None else s.t
            if s.t - st.idle_since >= self.idle_s or current == 0:
                st.recent.clear()
                return Decision(self.min_units, f"idle {s.t - st.idle_since:.0f}s: scale to "
                                f"{self.min_units}" if current else "idle")
            warm = max(self.min_units, min(current, 1))  # idle units are pure cost: keep one
            return Decision(warm, f"{'scale down' if warm < current else 'hold'} at {warm}: "
                            f"idle {s.t - st.idle_since:.0f}s of {self.idle_s:g}s")
        st.idle_since = None
        # up fast, but no more than half again what is ready (a cold start must prove itself)
        proven = max(s.ready, s.in_flight, 1)
        want = min(want, max(math.ceil(GROWTH * proven), proven + 4), self.max_units)
        want = max(want, self.min_units)
        st.recent.append((s.t, want))
        while st.recent and st.recent[0][0] < s.t - DOWN_WINDOW_S:
            st.recent.popleft()
        if want >= current:
            verb = "scale up" if want > current else "hold"
            return Decision(want, f"{verb}: {why}")
        # down slowly: the highest recommendation of the window, unless the limit says lower
        floor = max(w for _, w in st.recent)
        if math.isfinite(st.limit):
            floor = min(floor, max(1, math.floor(st.limit)))
        if floor < current:
            return Decision(floor, f"scale down: {why}")
        return Decision(current, f"hold at {current}: {why}")
