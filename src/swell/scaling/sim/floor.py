"""The floor no controller can beat: the fluid model of a queue served at the downstream quota."""

from __future__ import annotations

import math
from dataclasses import dataclass

from swell.scaling.sim.params import DRAINED, SimParams
from swell.scaling.sim.shapes import Shape, parse_shape


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
