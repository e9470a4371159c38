"""Retry policy: exponential backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

from swell.core.config import Duration, seconds, whole
from swell.core.errors import ConfigError

DEFAULT_ATTEMPTS = 5
"""``Retry(attempts=None)`` where no queue's ``max_receives`` applies (a consumer group, a replay,
a saga step): the same as a queue's default ``max_receives``."""

THROTTLE_RETRY_AFTER_S = 1.0
"""How long a throttled event waits when no ``retry_after`` was given (``Throttled()``'s
default); an explicit ``retry_after=0`` means at once, everywhere."""


def throttle_delay_s(retry_after_s: float | None) -> float:
    """How long a throttled event waits before it is tried again (not counted as an attempt)."""
    return THROTTLE_RETRY_AFTER_S if retry_after_s is None else max(0.0, retry_after_s)


@dataclass(frozen=True, slots=True, init=False)
class Retry:
    """How often and how soon a failed event is tried again.

    ``attempts`` counts every try, the first included. ``None`` means the limit of where the
    event comes from: a queue's ``max_receives`` (``max_receives=0``: no limit), and
    ``DEFAULT_ATTEMPTS`` (5) where there is none: a consumer group, a replay, a saga step.
    The n-th retry waits ``backoff * 2**(n-1)``, capped at ``max_backoff``; with ``jitter`` a random
    point in its upper half, so a burst of failures does not come back as a burst.
    """

    attempts: int | None
    backoff_s: float
    max_backoff_s: float
    jitter: bool

    def __init__(self, attempts: int | None = None, backoff: Duration = 1.0,
                 max_backoff: Duration = 300.0, jitter: bool = True) -> None:
        if attempts is not None:
            whole(attempts, name="Retry(attempts=...)", low=1)
        if not isinstance(jitter, bool):
            raise ConfigError(f"Retry(jitter=...) must be True or False, not {jitter!r}")
        object.__setattr__(self, "attempts", attempts)
        object.__setattr__(self, "backoff_s", seconds(backoff, name="backoff"))
        object.__setattr__(self, "max_backoff_s", seconds(max_backoff, name="max_backoff"))
        object.__setattr__(self, "jitter", jitter)

    def delay_s(self, attempt: int) -> float:
        """How long to wait after failed attempt number ``attempt`` (1-based)."""
        # the doubling stops at 2**64: 2.0 ** n overflows for n over 1023, and a queue that
        # never dead-letters (max_receives=0) can retry that often
        delay = min(self.max_backoff_s, self.backoff_s * 2.0 ** min(max(attempt - 1, 0), 64))
        return random.uniform(delay / 2, delay) if self.jitter else delay

    def allowed(self, max_receives: int | None = None) -> int:
        """The number of attempts in force on a queue that dead-letters after ``max_receives``,
        or (``None``) where no queue does: a consumer group, a replay, a saga step."""
        if max_receives is None:
            return self.attempts or DEFAULT_ATTEMPTS
        caps = [n for n in (self.attempts, max_receives) if n]
        return min(caps) if caps else 2**31
