"""Per-function counters the runtime keeps and the CLI shows. (Prometheus export comes later.)"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class FunctionMetrics:
    """Running totals for one function, plus recent service times (bounded)."""

    received: int = 0
    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    in_flight: int = 0
    service_times_s: deque[float] = field(default_factory=lambda: deque(maxlen=2048))

    def percentile_s(self, q: float) -> float | None:
        if not self.service_times_s:
            return None
        xs = sorted(self.service_times_s)
        return xs[min(len(xs) - 1, int(q * len(xs)))]
