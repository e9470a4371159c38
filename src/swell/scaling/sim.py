"""The scaling benchmark's model (BENCH-SCALING.md) on a virtual clock, with the real controllers.

Event-driven: arrivals, cold starts, downstream calls and their answers happen at their exact times;
every 0.1 s the state is sampled for the metrics, and every ``tick_s`` (0.5 s) an ``Observation`` goes
through the runtime's ``Sampler`` to the controller, whose decision (clamped to ``[0, max_instances]``)
becomes the instance target. A run is deterministic per seed: arrivals, cold starts, downstream
latency and errors each draw from their own random stream, so every controller sees the same
arrivals for a seed.

    result = simulate("step", "hpa", seed=0)
    table = compare(["step", "saw"], ["auto", "fixed:8", "kpa"], seeds=10)
"""

from __future__ import annotations

import heapq
import itertools
import math
import multiprocessing
import random
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from swell.core.config import number, whole
from swell.core.errors import ConfigError
from swell.scaling.base import Controller
from swell.scaling.controllers import parse_controller
from swell.scaling.signals import Observation, Sampler

__all__ = ["Floor", "Metrics", "Series", "Shape", "SimParams", "SimResult", "Summary", "TokenBucket",
           "compare", "fluid_floor", "parse_shape", "reversals", "simulate", "summarize"]

DT_S = 0.1          # the sampling step of the metrics
DRAINED = 10        # "drained" = no more than this many waiting
SHAPES = ("step", "saw", "diurnal")


@dataclass(frozen=True, slots=True)
class SimParams:
    """The model's knobs; the defaults are BENCH-SCALING.md's."""

    quota_rps: float = 100.0
    """The downstream's token bucket: refill rate and size."""
    burst: int = 20
    cpu_s: float = 0.05
    """Handler time before the downstream call."""
    latency_base_s: float = 0.15
    """Downstream latency: ``base x (1 + max(0, (in_flight - knee) / knee) ^ 2) x lognormal(0, sigma)``,
    ``in_flight`` being the function's messages in flight when the call is made."""
    latency_knee: int = 20
    latency_sigma: float = 0.25
    cold_start_median_s: float = 2.0
    cold_start_sigma: float = 0.3
    max_instances: int = 64
    throttle_delay_s: float = 1.0
    """A throttled (429) message goes back to the queue for this long."""
    fault: bool = False
    """``fault_error_rate`` of accepted calls fail during ``[fault_start_s, + fault_duration_s)``."""
    fault_start_s: float = 120.0
    fault_duration_s: float = 60.0
    fault_error_rate: float = 0.05
    retry_backoff_s: float = 1.0
    """A failed attempt is released for ``backoff x 2^(n-1)`` (capped), jittered in its upper half."""
    retry_max_backoff_s: float = 300.0
    tick_s: float = 0.5
    """How often the controller is asked."""
    overrun_s: float = 10.0
    """How long past the shape's end a run goes on while work is left (in-flight attempts, a last
    throttle or retry delay); what is still not done then counts as unserved."""

    def __post_init__(self) -> None:
        positive = {"quota_rps": self.quota_rps, "latency_base_s": self.latency_base_s,
                    "tick_s": self.tick_s, "cold_start_median_s": self.cold_start_median_s}
        for name, value in positive.items():
            number(value, name=name, above=True)
        others = {"cpu_s": self.cpu_s, "latency_sigma": self.latency_sigma,
                  "cold_start_sigma": self.cold_start_sigma, "throttle_delay_s": self.throttle_delay_s,
                  "fault_start_s": self.fault_start_s, "fault_duration_s": self.fault_duration_s,
                  "retry_backoff_s": self.retry_backoff_s,
                  "retry_max_backoff_s": self.retry_max_backoff_s, "overrun_s": self.overrun_s}
        for name, value in others.items():
            number(value, name=name)
        number(self.fault_error_rate, name="fault_error_rate", high=1.0)
        whole(self.burst, name="burst", low=1)
        whole(self.latency_knee, name="latency_knee", low=1)
        whole(self.max_instances, name="max_instances", low=1)
        if abs(self.tick_s / DT_S - round(self.tick_s / DT_S)) > 1e-9:
            raise ConfigError(f"tick_s must be a multiple of {DT_S} s, got {self.tick_s}")


# -- traffic ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Shape:
    """Traffic: messages/s as a function of t (``step``, ``saw``, ``diurnal``), or the arrival
    times of a replay. Build one with ``Shape.step()`` ... or ``parse_shape``."""

    name: str
    duration_s: float
    kind: str
    times: tuple[float, ...] = ()

    @classmethod
    def step(cls) -> Shape:
        """20/s; 150/s for t in [120, 180); 20/s until 600; idle until 900."""
        return cls("step", 900.0, "step")

    @classmethod
    def saw(cls) -> Shape:
        """A ramp 0 -> 120/s over 60 s, then 30 s idle, repeated until 900."""
        return cls("saw", 900.0, "saw")

    @classmethod
    def diurnal(cls) -> Shape:
        """42.5 - 37.5 cos(2 pi t / 600), plus 250/s for t in [700, 730), until 1200."""
        return cls("diurnal", 1200.0, "diurnal")

    @classmethod
    def replay(cls, times: Iterable[float], name: str = "replay", tail_s: float = 300.0) -> Shape:
        """The given arrival times (seconds), shifted to start at 0, then ``tail_s`` idle."""
        ts = sorted(times)
        if not ts:
            raise ConfigError(f"replay {name!r} has no arrivals")
        start = ts[0]
        shifted = tuple(t - start for t in ts)
        return cls(name, shifted[-1] + tail_s, "replay", shifted)

    def until(self, t: float) -> Shape:
        """The same traffic, cut at ``t`` (a short run, for tests)."""
        return Shape(self.name, min(t, self.duration_s), self.kind,
                     tuple(x for x in self.times if x < t))

    def rate(self, t: float) -> float:
        """Messages/s at ``t`` (for a replay: the count in t's second)."""
        if t < 0 or t >= self.duration_s:
            return 0.0
        if self.kind == "step":
            return 150.0 if 120 <= t < 180 else 20.0 if t < 600 else 0.0
        if self.kind == "saw":
            phase = t % 90.0
            return 2.0 * phase if phase < 60 else 0.0
        if self.kind == "diurnal":
            return 42.5 - 37.5 * math.cos(2 * math.pi * t / 600.0) + (250.0 if 700 <= t < 730 else 0.0)
        a = math.floor(t)
        return float(_bisect_count(self.times, a, a + 1))

    def arrivals(self, seed: int) -> list[float]:
        """Arrival times for ``seed``: a Poisson process of intensity ``rate(t)`` (thinned per
        second), or the replay's own times."""
        if self.kind == "replay":
            return list(self.times)
        rng = random.Random(f"swell-sim:{seed}:arrivals")
        out: list[float] = []
        rate = self.rate
        for a in range(math.ceil(self.duration_s)):
            hi = max(rate(a + k / 10) for k in range(11))
            if hi <= 0:
                continue
            hi += 0.5  # the cosine moves < 0.05/s within 0.1 s: a safe bound between samples
            t, end = float(a), min(a + 1.0, self.duration_s)
            while True:
                t += rng.expovariate(hi)
                if t >= end:
                    break
                if rng.random() * hi < rate(t):
                    out.append(t)
        return out

    def idle_gaps(self, min_s: float = 10.0) -> int:
        """Spells of at least ``min_s`` without traffic (a trailing one included)."""
        gaps, run = 0, 0.0
        steps = math.ceil(self.duration_s)
        for a in range(steps):
            if self.rate(a + 0.5) > 0:
                gaps, run = gaps + (run >= min_s), 0.0
            else:
                run += 1.0
        return gaps + (run >= min_s)


def _bisect_count(xs: Sequence[float], lo: float, hi: float) -> int:
    import bisect

    return bisect.bisect_left(xs, hi) - bisect.bisect_left(xs, lo)


def parse_shape(spec: str | Shape) -> Shape:
    """``step``, ``saw``, ``diurnal``, or the path to a CSV of arrival timestamps in seconds (one
    per line, first column; a header line is allowed)."""
    if isinstance(spec, Shape):
        return spec
    name = spec.strip()
    if name.lower() in SHAPES:
        return {"step": Shape.step, "saw": Shape.saw, "diurnal": Shape.diurnal}[name.lower()]()
    path = Path(name)
    if path.suffix.lower() != ".csv" and not path.exists():
        raise ConfigError(f"unknown shape {spec!r}: use step, saw, diurnal or the path to a .csv "
                          f"of arrival timestamps")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read shape {name}: {why}") from exc
    times: list[float] = []
    first = True
    for n, line in enumerate(text.splitlines(), 1):
        cell = line.split(",")[0].strip()
        if not cell:
            continue
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
            if first:  # a header
                first = False
                continue
        first = False
        if not math.isfinite(value):
            raise ConfigError(f"{name}:{n}: {cell!r} is not a timestamp in seconds")
        times.append(value)
    if not times:
        raise ConfigError(f"{name} holds no arrival timestamps")
    return Shape.replay(times, name=path.stem)


# -- downstream -------------------------------------------------------------------------------
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


# -- results ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Metrics:
    """BENCH-SCALING.md's metrics of one run (or their medians over seeds). ``None``: never
    happened (never drained, never back to zero)."""

    messages: float
    unserved: float
    """Messages not completed when the run ended."""
    p50_wait_s: float
    """Queue wait: arrival -> first pickup."""
    p99_wait_s: float
    p99_e2e_s: float
    """Arrival -> successful completion, retries included."""
    peak_backlog: float
    """Most messages waiting (ready + delayed) at once."""
    drain_s: float | None
    """From the peak backlog to <= 10 waiting."""
    instance_s: float
    """Instance-seconds, counted from the moment each instance is asked for."""
    busy_s: float
    over_provisioning: float | None
    """instance-seconds / busy-seconds."""
    cold_starts: float
    throttle_rate: float
    """429s / downstream calls."""
    error_rate: float
    """Failed calls / downstream calls."""
    reversals: float
    """Changes of sign of the instance target's movement (holds ignored)."""
    to_zero_s: float | None
    """From the last completion to zero instances."""

    @property
    def served(self) -> bool:
        return self.unserved == 0


@dataclass(frozen=True, slots=True)
class Series:
    """Per second: arrivals, backlog (ready + delayed), instances (all, starting included), the
    target, and downstream calls that got a token."""

    arrivals: tuple[int, ...]
    backlog: tuple[int, ...]
    instances: tuple[int, ...]
    target: tuple[int, ...]
    calls_ok: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SimResult:
    shape: str
    controller: str
    seed: int
    metrics: Metrics
    series: Series


@dataclass(frozen=True, slots=True)
class Summary:
    """One controller on one shape: medians over seeds, and the first seed's series."""

    shape: str
    controller: str
    runs: int
    served_runs: int
    median: Metrics
    series: Series
    runs_metrics: tuple[Metrics, ...] = field(default=(), repr=False)


# -- the model --------------------------------------------------------------------------------
_READY, _CALL, _DONE, _FAIL, _REQUEUE = range(5)


class _Model:
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


def reversals(targets: Sequence[int]) -> int:
    """How often the direction of movement changes, holds ignored: 0,4,4,2,5,5,0 -> 2."""
    count, last = 0, 0
    for a, b in itertools.pairwise(targets):
        if b != a:
            sign = 1 if b > a else -1
            count += last != 0 and sign != last
            last = sign
    return count


# -- API --------------------------------------------------------------------------------------
ControllerSpec = str | Callable[[], Controller]


def simulate(shape: Shape | str, controller: ControllerSpec, seed: int = 0,
             params: SimParams | None = None) -> SimResult:
    """One run of ``controller`` (a name for ``parse_controller``, or a factory of a fresh one) on
    ``shape`` (a ``Shape`` or a name for ``parse_shape``) with ``seed``."""
    p = params or SimParams()
    sh = parse_shape(shape)
    if isinstance(controller, str):
        ctl, label = parse_controller(controller, p.max_instances), controller
    else:
        ctl = controller()
        label = repr(ctl)
    metrics, series = _Model(sh, ctl, seed, p).run()
    return SimResult(sh.name, label, seed, metrics, series)


def _run_task(task: tuple[Shape, str, int, SimParams]) -> SimResult:
    return simulate(*task)


def _median(values: Sequence[float | None]) -> float | None:
    xs = [math.inf if v is None else v for v in values]
    m = statistics.median(xs)
    return None if math.isinf(m) else m


def summarize(results: Sequence[SimResult]) -> Summary:
    """Medians over the runs of one controller on one shape."""
    ms = [r.metrics for r in results]
    # a field that can be None only is None when most runs never got there (never drained ...)
    med: dict[str, Any] = {f.name: _median([getattr(m, f.name) for m in ms]) for f in fields(Metrics)}
    first = min(results, key=lambda r: r.seed)
    return Summary(first.shape, first.controller, len(ms), sum(m.served for m in ms),
                   Metrics(**med), first.series, tuple(ms))


def compare(shapes: Sequence[Shape | str], controllers: Sequence[str], seeds: int | Sequence[int] = 10,
            params: SimParams | None = None, processes: int | None = None,
            on_result: Callable[[SimResult], None] | None = None) -> dict[str, dict[str, Summary]]:
    """Every controller on every shape for every seed; medians per shape and controller, in the
    order given. ``processes``: worker processes (default: one per CPU; 1 runs here).
    ``on_result`` is called as each run finishes (a progress bar)."""
    p = params or SimParams()
    resolved = [parse_shape(s) for s in shapes]
    names = [s.name for s in resolved]
    if len(set(names)) != len(names):
        raise ConfigError(f"shapes with the same name: {', '.join(names)}")
    for spec in controllers:
        parse_controller(spec, p.max_instances)  # a bad name fails here, not in a worker
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    tasks = [(sh, spec, seed, p) for sh in resolved for seed in seed_list for spec in controllers]
    results: dict[tuple[str, str], list[SimResult]] = {}

    def collect(r: SimResult) -> None:
        results.setdefault((r.shape, r.controller), []).append(r)
        if on_result is not None:
            on_result(r)

    workers = processes or multiprocessing.cpu_count()
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            collect(_run_task(task))
    else:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else None)
        with ctx.Pool(min(workers, len(tasks))) as pool:
            for r in pool.imap_unordered(_run_task, tasks):
                collect(r)
    return {sh.name: {spec: summarize(results[sh.name, spec]) for spec in controllers}
            for sh in resolved}


# -- floors -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Floor:
    """What no controller can beat: the fluid model of a queue served at the downstream quota by
    instances that are there at once. ``busy_s``: the expected work (CPU + unloaded latency)."""

    messages: float
    peak_backlog: float
    drain_s: float
    p50_wait_s: float
    p99_wait_s: float
    busy_s: float
    min_reversals: int
    """2 x idle gaps - 1: a controller that scales down in every gap reverses at least this often."""


def fluid_floor(shape: Shape | str, params: SimParams | None = None, dt: float = 0.01) -> Floor:
    p = params or SimParams()
    sh = parse_shape(shape)
    mu = p.quota_rps
    backlog = peak = 0.0
    peak_at = 0
    masses: list[tuple[float, float]] = []  # (wait, messages)
    trace: list[float] = []
    for j in range(math.ceil(sh.duration_s / dt)):
        lam = sh.rate((j + 0.5) * dt)
        if lam > 0:
            masses.append((backlog / mu, lam * dt))
        backlog = max(0.0, backlog + (lam - mu) * dt)
        trace.append(backlog)
        if backlog > peak:
            peak, peak_at = backlog, j
    drain = next(((j - peak_at) * dt for j in range(peak_at, len(trace)) if trace[j] <= DRAINED), 0.0)
    total = sum(m for _, m in masses)
    masses.sort()

    def pct(q: float) -> float:
        acc = 0.0
        for wait, m in masses:
            acc += m
            if acc >= q * total:
                return wait
        return masses[-1][0] if masses else 0.0

    unloaded = p.cpu_s + p.latency_base_s * math.exp(p.latency_sigma ** 2 / 2)
    gaps = sh.idle_gaps()
    return Floor(messages=total, peak_backlog=peak, drain_s=drain if peak > DRAINED else 0.0,
                 p50_wait_s=pct(0.5), p99_wait_s=pct(0.99), busy_s=total * unloaded,
                 min_reversals=max(0, 2 * gaps - 1))
