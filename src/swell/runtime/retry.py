"""Retry policy: exponential backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

from swell.core.config import Duration, seconds
from swell.core.errors import ConfigError


@dataclass(frozen=True, slots=True, init=False)
class Retry:
    """How often and how soon a failed event is tried again.

    ``attempts`` counts every try, the first included (``None``: the queue's ``max_receives``).
    The n-th retry waits ``backoff * 2**(n-1)``, capped at ``max_backoff``; with ``jitter`` a random
    point in its upper half, so a burst of failures does not come back as a burst.
    """

    attempts: int | None
    backoff_s: float
    max_backoff_s: float
    jitter: bool

    def __init__(self, attempts: int | None = None, backoff: Duration = 1.0,
                 max_backoff: Duration = 300.0, jitter: bool = True) -> None:
        if attempts is not None and attempts < 1:
            raise ConfigError(f"Retry(attempts=...) must be at least 1, got {attempts}")
        object.__setattr__(self, "attempts", attempts)
        object.__setattr__(self, "backoff_s", seconds(backoff, name="backoff"))
        object.__setattr__(self, "max_backoff_s", seconds(max_backoff, name="max_backoff"))
        object.__setattr__(self, "jitter", jitter)

    def delay_s(self, attempt: int) -> float:
        """How long to wait after failed attempt number ``attempt`` (1-based)."""
        delay = min(self.max_backoff_s, self.backoff_s * 2.0 ** max(attempt - 1, 0))
        return random.uniform(delay / 2, delay) if self.jitter else delay

    def allowed(self, max_receives: int) -> int:
        """The number of attempts in force on a queue that dead-letters after ``max_receives``."""
        caps = [n for n in (self.attempts, max_receives) if n]
        return min(caps) if caps else 2**31
