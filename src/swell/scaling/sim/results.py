"""What a run yields (its metrics and per-second series) and the medians over seeds."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any


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


def reversals(targets: Sequence[int]) -> int:
    """How often the direction of movement changes, holds ignored: 0,4,4,2,5,5,0 -> 2."""
    count, last = 0, 0
    for a, b in itertools.pairwise(targets):
        if b != a:
            sign = 1 if b > a else -1
            count += last != 0 and sign != last
            last = sign
    return count


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

