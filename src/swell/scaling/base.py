"""The controller protocol: signals in, desired concurrency out.

A controller keeps whatever state it needs (windows, limits) but does no I/O and reads time only
from ``Signals.t``, so the runtime and the simulator run the same code and get the same answers.
It may be asked more often than it wants to act: then it returns its last decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from swell.scaling.signals import Signals


@dataclass(frozen=True, slots=True)
class Decision:
    """How many units (async slots or instances) to run, and why, in words for ``swell status``."""

    desired: int
    reason: str


@runtime_checkable
class Controller(Protocol):
    """Turns signals into a desired concurrency, within ``[min_units, max_units]``."""

    min_units: int
    max_units: int

    def decide(self, s: Signals) -> Decision: ...
