"""One run of the scaling benchmark's model (BENCH-SCALING.md) on a virtual clock, with the real
controllers.

Event-driven: arrivals, cold starts, downstream calls and their answers happen at their exact times;
every 0.1 s the state is sampled for the metrics, and every ``tick_s`` (0.5 s) an ``Observation`` goes
through the runtime's ``Sampler`` to the controller, whose decision (clamped to ``[0, max_instances]``)
becomes the instance target. A run is deterministic per seed: arrivals, cold starts, downstream
latency and errors each draw from their own random stream, so every controller sees the same
arrivals for a seed.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Sequence

from swell.scaling.base import Controller
from swell.scaling.signals import Observation, Sampler
from swell.scaling.sim.params import DRAINED, DT_S, SimParams
from swell.scaling.sim.results import Metrics, Series, reversals
from swell.scaling.sim.shapes import Shape


class TokenBucket:
    """``rate`` tokens/s, at most ``burst`` kept; a call without a token is throttled."""

    __slots__ = ("_t", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self._t = float(burst), 0.0

    def take(self, t: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (t - self._t) * self.rate)
        self._t = t
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False



_READY, _CALL, _DONE, _FAIL, _REQUEUE = range(5)


class Model:
    """One run. Instances: starting -> idle <-> busy; scale-down cancels starting ones first (newest
    first), then idle ones; a busy one retires when its attempt ends."""

    def __init__(self, shape: Shape, controller: Controller, seed: int, p: SimParams) -> None:
        self.shape, self.ctl, self.p = shape, controller, p
        self.arrivals = shape.arrivals(seed)
        self.cold_rng = random.Random(f"swell-sim:{seed}:cold")
        self.lat_rng = random.Random(f"swell-sim:{seed}:latency")
        self.err_rng = random.Random(f"swell-sim:{seed}:errors")
        n = len(self.arrivals)
        self.first_start = [-1.0] * n
        self.done = [-1.0] * n
        self.fails = [0] * n
        self.ready: deque[int] = deque()
        self.delayed = 0
        self.events: list[tuple[float, int, int, int]] = []
        self.seq = itertools.count()
        self.bucket = TokenBucket(p.quota_rps, p.burst)
        # instances
        self.next_id = 0
        self.starting: dict[int, None] = {}
        self.idle: list[int] = []
        self.busy: dict[int, tuple[int, float]] = {}
        self.retiring: set[int] = set()
        self.target = 0
        # counters
        self.t = self.last_acc = 0.0
        self.instance_s = self.busy_s = 0.0
        self.completed = self.attempts = self.calls = self.calls_ok = 0
        self.throttles = self.errors = self.cold_starts = 0
        self.last_done = -1.0
        self.service_times: list[float] = []
        self.sampler = Sampler()
        self.targets: list[int] = []

    # -- bookkeeping
    def _push(self, t: float, kind: int, arg: int) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, arg))

    def _advance(self, t: float) -> None:
        dt = t - self.last_acc
        if dt > 0:
            busy = len(self.busy)
            self.instance_s += (len(self.starting) + len(self.idle) + busy) * dt
            self.busy_s += busy * dt
            self.last_acc = t
        self.t = t

    @property
    def alive(self) -> int:
        return len(self.starting) + len(self.idle) + len(self.busy)

    # -- instances
    def scale_to(self, target: int) -> None:
        self.target = target
        active = self.alive - len(self.retiring)
        if target > active:
            need = target - active
            while need and self.retiring:
                self.retiring.pop()
                need -= 1
            for _ in range(need):
                iid, self.next_id = self.next_id, self.next_id + 1
                self.starting[iid] = None
                self.cold_starts += 1
                cold = self.cold_rng.lognormvariate(math.log(self.p.cold_start_median_s),
                                                    self.p.cold_start_sigma)
                self._push(self.t + cold, _READY, iid)
        excess = active - target
        while excess > 0 and self.starting:
            self.starting.popitem()
            excess -= 1
        while excess > 0 and self.idle:
            self.idle.pop()
            excess -= 1
        if excess > 0:
            for iid in self.busy:
                if iid not in self.retiring:
                    self.retiring.add(iid)
                    excess -= 1
                    if not excess:
                        break

    def _free(self, iid: int) -> None:
        del self.busy[iid]
        if iid in self.retiring:
            self.retiring.discard(iid)
        else:
            self.idle.append(iid)

    def _dispatch(self) -> None:
        t, cpu = self.t, self.p.cpu_s
        while self.ready and self.idle:
            iid, m = self.idle.pop(), self.ready.popleft()
            if self.first_start[m] < 0:
                self.first_start[m] = t
            self.busy[iid] = (m, t)
            self.attempts += 1
            self._push(t + cpu, _CALL, iid)

    # -- events
    def _handle(self, kind: int, arg: int) -> None:
        if kind == _CALL:
            self._call(arg)
        elif kind == _REQUEUE:
            self.delayed -= 1
            self.ready.append(arg)
        elif kind == _READY:
            if arg not in self.starting:
                return  # cancelled while starting
            del self.starting[arg]
            self.idle.append(arg)
        else:
            self._answer(arg, ok=kind == _DONE)
        self._dispatch()

    def _call(self, iid: int) -> None:
        p, t = self.p, self.t
        self.calls += 1
        if not self.bucket.take(t):
            self.throttles += 1
            self.delayed += 1
            self._push(t + p.throttle_delay_s, _REQUEUE, self.busy[iid][0])
            self._free(iid)
            return
        self.calls_ok += 1
        # the function's concurrency loads the downstream (a 429 is answered at once)
        over = max(0.0, (len(self.busy) - p.latency_knee) / p.latency_knee)
        latency = p.latency_base_s * (1 + over * over) * self.lat_rng.lognormvariate(0.0, p.latency_sigma)
        fail = (p.fault and p.fault_start_s <= t < p.fault_start_s + p.fault_duration_s
                and self.err_rng.random() < p.fault_error_rate)
        self._push(t + latency, _FAIL if fail else _DONE, iid)

    def _answer(self, iid: int, ok: bool) -> None:
        p, t = self.p, self.t
        m, started = self.busy[iid]
        self.service_times.append(t - started)
        if ok:
            self.done[m] = t
            self.completed += 1
            self.last_done = t
        else:
            self.errors += 1
            self.fails[m] += 1
            delay = min(p.retry_max_backoff_s, p.retry_backoff_s * 2.0 ** (self.fails[m] - 1))
            self.delayed += 1
            self._push(t + self.err_rng.uniform(delay / 2, delay), _REQUEUE, m)
        self._free(iid)

    # -- controller
    def _control(self) -> None:
        o = Observation(
            t=self.t, depth=len(self.ready), in_flight=len(self.busy), delayed=self.delayed,
            oldest_age_s=self.t - self.arrivals[self.ready[0]] if self.ready else 0.0,
            finished=self.completed, attempts=self.attempts, errors=self.errors,
            throttles=self.throttles, service_times_s=tuple(self.service_times),
            starting=len(self.starting), ready=len(self.idle) + len(self.busy),
            busy=len(self.busy), cold_starts=self.cold_starts, current=self.target)
        self.service_times.clear()
        decision = self.ctl.decide(self.sampler.observe(o))
        target = min(max(decision.desired, 0), self.p.max_instances)
        self.targets.append(target)
        self.scale_to(target)

    # -- the run
    def run(self) -> tuple[Metrics, Series]:
        arrivals, events, n = self.arrivals, self.events, len(self.arrivals)
        every = round(self.p.tick_s / DT_S)
        end_s = self.shape.duration_s
        i, k = 0, 0
        backlog: list[int] = []
        per_s: dict[str, list[int]] = {"backlog": [], "instances": [], "target": [], "calls_ok": []}
        calls_ok_before = 0
        zero_at: float | None = 0.0
        while True:
            tick = k * DT_S
            while True:
                ta = arrivals[i] if i < n else math.inf
                te = events[0][0] if events else math.inf
                if min(ta, te) > tick:
                    break
                if ta <= te:
                    self._advance(ta)
                    self.ready.append(i)
                    i += 1
                    self._dispatch()
                else:
                    t, _, kind, arg = heapq.heappop(events)
                    self._advance(t)
                    self._handle(kind, arg)
            self._advance(tick)
            waiting = len(self.ready) + self.delayed
            backlog.append(waiting)
            alive = self.alive
            if k % 10 == 0:
                per_s["backlog"].append(waiting)
                per_s["instances"].append(alive)
                per_s["target"].append(self.target)
                per_s["calls_ok"].append(self.calls_ok - calls_ok_before)
                calls_ok_before = self.calls_ok
            if alive:
                zero_at = None
            elif zero_at is None:
                zero_at = tick
            if k % every == 0:
                self._control()
            if tick >= end_s and (self.completed == n or tick >= end_s + self.p.overrun_s):
                break
            k += 1
        return self._metrics(backlog, zero_at), self._series(per_s)

    def _metrics(self, backlog: list[int], zero_at: float | None) -> Metrics:
        end, n = self.t, len(self.arrivals)
        waits = sorted((s if s >= 0 else end) - a for s, a in zip(self.first_start, self.arrivals,
                                                                   strict=True))
        e2e = sorted((d if d >= 0 else end) - a for d, a in zip(self.done, self.arrivals, strict=True))
        peak = max(backlog)
        at = backlog.index(peak)
        drain: float | None = 0.0
        if peak > DRAINED:
            drain = next(((j - at) * DT_S for j in range(at, len(backlog)) if backlog[j] <= DRAINED),
                         None)
        to_zero = None
        if zero_at is not None and n:
            to_zero = max(0.0, zero_at - self.last_done) if self.completed == n else None
        return Metrics(
            messages=n, unserved=n - self.completed,
            p50_wait_s=_pct(waits, 0.50), p99_wait_s=_pct(waits, 0.99), p99_e2e_s=_pct(e2e, 0.99),
            peak_backlog=peak, drain_s=drain, instance_s=self.instance_s, busy_s=self.busy_s,
            over_provisioning=self.instance_s / self.busy_s if self.busy_s > 0 else None,
            cold_starts=self.cold_starts,
            throttle_rate=self.throttles / self.calls if self.calls else 0.0,
            error_rate=self.errors / self.calls if self.calls else 0.0,
            reversals=reversals(self.targets), to_zero_s=to_zero)

    def _series(self, per_s: dict[str, list[int]]) -> Series:
        seconds = len(per_s["backlog"])
        arrivals = [0] * seconds
        for a in self.arrivals:
            arrivals[min(int(a), seconds - 1)] += 1
        # per_s["calls_ok"][j] counts calls in (j - 1, j]: shift so index j is the second [j, j + 1)
        ok = [*per_s["calls_ok"][1:], self.calls_ok - sum(per_s["calls_ok"])]
        return Series(tuple(arrivals), tuple(per_s["backlog"]), tuple(per_s["instances"]),
                      tuple(per_s["target"]), tuple(ok))


def _pct(sorted_xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not sorted_xs:
        return 0.0
    return sorted_xs[max(0, math.ceil(q * len(sorted_xs)) - 1)]

