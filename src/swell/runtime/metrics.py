"""Per-function counters the runtime keeps; the scaler, ``swell status`` and /metrics read them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class FunctionMetrics:
    """Running totals for one function (counters only grow), plus recent service times."""

    received: int = 0
    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    attempts: int = 0
    """Handler runs that ended: ok, failed, timed out, crashed or throttled."""
    errors: int = 0
    """Failed, timed-out and crashed attempts."""
    throttles: int = 0
    duplicates: int = 0
    """Events acked without running: their idempotency key was done already."""
    in_flight: int = 0
    service_times_s: deque[float] = field(default_factory=lambda: deque(maxlen=2048))
    _tick_times: list[float] = field(default_factory=list)

    @property
    def finished(self) -> int:
        """Events done for good: acked or dead-lettered."""
        return self.succeeded + self.dead_lettered

    def service(self, seconds: float) -> None:
        self.service_times_s.append(seconds)
        self._tick_times.append(seconds)

    def take_tick_times(self) -> tuple[float, ...]:
        """Service times recorded since the last call."""
        out, self._tick_times = tuple(self._tick_times), []
        return out

    def percentile_s(self, q: float) -> float | None:
        if not self.service_times_s:
            return None
        xs = sorted(self.service_times_s)
        return xs[min(len(xs) - 1, int(q * len(xs)))]
