"""What the runtime keeps of one running function between ticks."""

from __future__ import annotations

from dataclasses import dataclass, field

from swell.runtime.app import Function
from swell.runtime.cluster import ClusterView
from swell.runtime.dispatcher import Dispatcher
from swell.runtime.groups import GroupDispatcher
from swell.scaling.base import Controller, Decision
from swell.scaling.signals import Observation, Sampler, SignalHistory, Signals

__all__ = ["FunctionState"]


@dataclass
class FunctionState:
    """What the runtime knows of one running function."""

    fn: Function
    dispatcher: Dispatcher | GroupDispatcher
    controller: Controller
    sampler: Sampler = field(default_factory=Sampler)
    history: SignalHistory = field(default_factory=SignalHistory)
    view: ClusterView = field(default_factory=ClusterView)
    decision: Decision = field(default_factory=lambda: Decision(0, "start"))
    """The controller's decision for the function as a whole."""
    share: int = 0
    """This node's part of it."""
    nodes: int = 1
    members: list[str] = field(default_factory=list)
    """The nodes the decision is split over (the leader's view)."""
    leader: str = ""
    decided_at: float = 0.0
    applied: int = -1
    own: Observation | None = None
    """This node's readings at the last sample."""
    reading: tuple[object, ...] | None = None
    """What the last sample said (see ``_reading``)."""
    resting: bool = False
    """The last two samples said the same, at a decision of zero."""

    @property
    def signals(self) -> Signals | None:
        return self.history.latest()
