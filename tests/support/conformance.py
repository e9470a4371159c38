"""The types of the broker conformance suite's fixtures (``tests/brokers/conftest.py``), which its
test files annotate with: ``timing`` (how a test moves time on one backend) and ``declare``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from swell.brokers.base import QueueSpec
from swell.core.clock import Clock, ManualClock

#: ``await declare("jobs", visibility_timeout_s=10)``: declares a queue and returns its spec
Declare = Callable[..., Awaitable[QueueSpec]]


@dataclass(frozen=True)
class Timing:
    """How a test moves time on one backend."""

    clock: Clock
    unit_s: float  # seconds in one test time unit
    eps_s: float  # how far a timestamp may be from the value the test expects
    grace_s: float  # how long a receive waits for what the server makes due (0: not at all)

    def s(self, units: float) -> float:
        """``units`` of test time, in seconds."""
        return units * self.unit_s

    def now(self) -> float:
        return self.clock.time()

    async def advance(self, units: float) -> None:
        """Let ``units`` of test time pass: move the manual clock, or sleep for real."""
        if isinstance(self.clock, ManualClock):
            self.clock.advance(units * self.unit_s)
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(units * self.unit_s)
