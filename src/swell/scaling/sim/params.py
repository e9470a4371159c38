"""The simulator's knobs (BENCH-SCALING.md's defaults) and the sampling step of its metrics."""

from __future__ import annotations

from dataclasses import dataclass

from swell.core.config import number, whole
from swell.core.errors import ConfigError

DT_S = 0.1          # the sampling step of the metrics
DRAINED = 10        # "drained" = no more than this many waiting


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
