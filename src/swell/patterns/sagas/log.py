"""The saga log: one kv entry per saga, changed only by compare-and-set.

A saga's log holds its input, the state of each step (with its result), the run in progress (who
runs which step, and until when their lease holds), the id of the message that is to move it on
next (its *wake*), and every transition with its time, actor and reason.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from swell.brokers.base import KV
from swell.core import keys
from swell.core.errors import BrokerError, SwellError

KEY_PREFIX = keys.SAGAS
MAX_HISTORY = 500
"""Entries kept per saga; older ones are dropped (and counted) so a log stays bounded."""
CAS_TRIES = 20

SagaState = Literal["running", "compensating", "completed", "compensated", "needs_attention", "paused"]
StepState = Literal["pending", "started", "done", "failed", "compensated"]
Phase = Literal["action", "compensation"]

SAGA_STATES: tuple[SagaState, ...] = ("running", "compensating", "completed", "compensated",
                                      "needs_attention", "paused")
ACTIVE: tuple[SagaState, ...] = ("running", "compensating")
TERMINAL: tuple[SagaState, ...] = ("completed", "compensated")
MAY_HAVE_RUN: tuple[StepState, ...] = ("started", "done", "failed")
"""Step states whose action may have had an effect: these are compensated."""


class SagaError(SwellError):
    """A saga that does not exist, or an override its state does not allow."""


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One transition: when, who (a runner, the starter, or an operator), what, and why."""

    at: float
    actor: str
    event: str
    state: SagaState
    """The saga's state after the transition."""
    step: str | None = None
    reason: str | None = None


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """A step's action or compensation being run: by ``token``'s runner, its lease until ``until``
    (a runner that finds the lease expired takes over and counts this run as lost)."""

    token: str
    step: int
    phase: Phase
    until: float
    actor: str


class StepLog(msgspec.Struct, kw_only=True):
    name: str
    state: StepState = "pending"
    runs: int = 0
    failures: int = 0
    lost: int = 0
    """Runs whose runner stopped (crashed, killed) before it recorded how they went."""
    result: Any = None
    has_result: bool = False
    error: str | None = None
    comp_runs: int = 0
    comp_failures: int = 0
    comp_lost: int = 0
    comp_error: str | None = None


class SagaLog(msgspec.Struct, kw_only=True):
    saga: str
    id: str
    state: SagaState
    data: Any
    steps: list[StepLog]
    created: float
    updated: float
    paused_from: SagaState | None = None
    """The state ``resume`` goes back to."""
    attention_phase: SagaState | None = None
    """``running`` or ``compensating``: the phase a saga that needs attention stopped in, where
    ``retry`` and ``skip`` take it on."""
    run: Run | None = None
    seq: int = 0
    wake: str | None = None
    """The id of the message that is to move the saga on; any other is stale."""
    wake_at: float = 0.0
    history: list[Entry] = []
    dropped: int = 0

    # -- reading -----------------------------------------------------------------------------------
    def next_step(self) -> int | None:
        """The first step not done (the forward phase's next), or ``None`` when all are."""
        return next((i for i, s in enumerate(self.steps) if s.state != "done"), None)

    def to_compensate(self) -> int | None:
        """The last step whose action may have run and that is not compensated yet."""
        return next((i for i in reversed(range(len(self.steps)))
                     if self.steps[i].state in MAY_HAVE_RUN), None)

    @property
    def phase(self) -> SagaState:
        """``running`` or ``compensating``: where the saga stands, paused or stuck or not."""
        state = self.paused_from if self.state == "paused" else self.state
        if state == "needs_attention":
            return self.attention_phase or "compensating"
        return state or "running"

    def current(self) -> int | None:
        """The step the saga stands at: the next to run, or the next to compensate."""
        if self.state in TERMINAL:
            return None
        if self.run is not None:
            return self.run.step
        return self.to_compensate() if self.phase == "compensating" else self.next_step()

    def current_name(self) -> str | None:
        i = self.current()
        return None if i is None else self.steps[i].name

    @property
    def key(self) -> str:
        return key_of(self.saga, self.id)

    # -- changing (on a freshly read copy, inside ``update``) --------------------------------------
    def note(self, at: float, actor: str, event: str, *, step: str | None = None,
             reason: str | None = None) -> None:
        self.updated = at
        self.history.append(Entry(at=at, actor=actor, event=event, state=self.state, step=step,
                                  reason=reason))
        if len(self.history) > MAX_HISTORY:
            cut = len(self.history) - MAX_HISTORY
            del self.history[:cut]
            self.dropped += cut

    def move(self, to: SagaState) -> None:
        """Change state; a paused saga stays paused and remembers where to go back to (a saga that
        would end while paused ends after its resume: the runner finds nothing left to do)."""
        if to == "needs_attention":
            self.attention_phase = self.phase
        if self.state == "paused":
            if to in ("running", "compensating", "needs_attention"):
                self.paused_from = to
            return
        self.state = to
        if to in TERMINAL:
            self.wake = None

    def rewake(self, at: float, delay_s: float = 0.0) -> None:
        """A new wake: the message sent after this transition is the one to move the saga on."""
        self.seq += 1
        self.wake = f"{self.id}.{self.seq}"
        self.wake_at = at + delay_s


def key_of(saga: str, saga_id: str) -> str:
    return keys.saga(saga, saga_id)


def queue_of(saga: str) -> str:
    return f"saga.{saga}"


def new_log(saga: str, saga_id: str, data: Any, steps: list[str], at: float, actor: str,
            reason: str | None = None) -> SagaLog:
    """A saga's first log; its first wake is ``<id>.0``, the start message's id."""
    lg = SagaLog(saga=saga, id=saga_id, state="running", data=data,
                 steps=[StepLog(name=s) for s in steps], created=at, updated=at,
                 wake=f"{saga_id}.0", wake_at=at)
    lg.note(at, actor, "started", reason=reason)
    return lg


def encode(lg: SagaLog) -> bytes:
    return msgspec.json.encode(lg)


def decode(raw: bytes) -> SagaLog:
    return msgspec.json.decode(raw, type=SagaLog)


def actor_here() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def update(kv: KV, key: str, change: Callable[[SagaLog], bool], *,
                 retention_s: float | None = None) -> SagaLog | None:
    """Apply ``change`` to the latest log and write it with compare-and-set, again on a fresh copy
    while someone else wrote in between. ``change`` returns whether it changed anything (``False``:
    nothing is written). The log as it now stands, or ``None`` if there is none. A saga that ends
    is kept for ``retention_s``."""
    for _ in range(CAS_TRIES):
        entry = await kv.get(key)
        if entry is None:
            return None
        lg = decode(entry.value)
        if not change(lg):
            return lg
        ttl = retention_s if lg.state in TERMINAL else None
        if await kv.compare_and_set(key, encode(lg), entry.revision, ttl_s=ttl) is not None:
            return lg
    raise BrokerError(f"saga log {key}: still changing under us after {CAS_TRIES} tries")
