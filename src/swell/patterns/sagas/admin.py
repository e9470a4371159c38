"""Operators' view of sagas and their overrides: list, show, pause, resume, retry, skip, abort.

Each override is a compare-and-set on the saga's log, recorded in it with who and why; one that
leaves the saga active sends the message that moves it on. Nothing here needs the app: a saga's
log names its steps, and its queue is ``saga.<name>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from swell.brokers.base import KV, Broker
from swell.brokers.producer import Producer
from swell.core import keys
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.patterns.sagas.log import (
    ACTIVE,
    KEY_PREFIX,
    MAY_HAVE_RUN,
    TERMINAL,
    SagaError,
    SagaLog,
    decode,
    key_of,
    update,
)
from swell.patterns.sagas.runner import send_wake


async def sagas(kv: KV, *, saga: str | None = None, state: str | None = None) -> list[SagaLog]:
    """Every saga's log (of one saga name, in one state), the most recently changed first."""
    entries = await kv.scan(keys.sagas(saga))
    logs = [decode(e.value) for e in entries]
    return sorted((lg for lg in logs if state is None or lg.state == state),
                  key=lambda lg: -lg.updated)


async def find(kv: KV, ref: str) -> SagaLog:
    """The saga ``ref`` names: ``NAME/ID``, or an ``ID`` that only one saga has."""
    if "/" in ref:
        name, _, sid = ref.partition("/")
        entry = await kv.get(key_of(name, sid))
        if entry is None:
            raise SagaError(f"no saga {ref!r}")
        return decode(entry.value)
    found = [e for e in await kv.scan(KEY_PREFIX) if e.key.rsplit("/", 1)[-1] == ref]
    if not found:
        raise SagaError(f"no saga with id {ref!r}")
    if len(found) > 1:
        names = ", ".join(e.key[len(KEY_PREFIX):] for e in found)
        raise SagaError(f"several sagas have id {ref!r} ({names}): name one as NAME/ID")
    return decode(found[0].value)


async def _override(broker: Broker, ref: str, change: Callable[[SagaLog, float], bool],
                    clock: Clock) -> SagaLog:
    key = (await find(broker.kv, ref)).key
    lg = await update(broker.kv, key, lambda lg: change(lg, clock.time()))
    if lg is None:
        raise SagaError(f"saga {ref!r} is gone (its retention ran out)")
    if lg.state in ACTIVE:
        await send_wake(Producer(broker, source="/swell/cli", clock=clock), lg)
    return lg


def _name(lg: SagaLog) -> str:
    return f"{lg.saga}/{lg.id}"


def _actor(by: str) -> str:
    return f"operator {by}"


def _needs(reason: str | None, what: str) -> str:
    if reason is None or not reason.strip():
        raise SagaError(f"{what} needs a reason")
    return reason.strip()


async def pause(broker: Broker, ref: str, *, by: str, reason: str | None = None,
                clock: Clock = SYSTEM_CLOCK) -> SagaLog:
    """No further steps (a step being run finishes and is recorded); survives restarts."""
    def change(lg: SagaLog, now: float) -> bool:
        if lg.state not in ACTIVE:
            raise SagaError(f"saga {_name(lg)} is {lg.state}: only a running or compensating saga "
                            "can be paused")
        lg.paused_from, lg.state = lg.state, "paused"
        lg.note(now, _actor(by), "paused", reason=reason)
        return True

    return await _override(broker, ref, change, clock)


async def resume(broker: Broker, ref: str, *, by: str, reason: str | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> SagaLog:
    """Go on where a paused saga stopped. On a saga that is not paused but active, send the
    message that moves it on again (a copy is dropped), should it have been lost."""
    def change(lg: SagaLog, now: float) -> bool:
        if lg.state == "paused":
            lg.state, lg.paused_from = lg.paused_from or "running", None
            lg.note(now, _actor(by), "resumed", reason=reason)
            if lg.state in ACTIVE:
                lg.rewake(now)
            return True
        if lg.state in ACTIVE:
            lg.note(now, _actor(by), "resumed", reason=reason or "it was not paused: its message "
                    "was sent again")
            return True
        raise SagaError(f"saga {_name(lg)} is {lg.state}, not paused")

    return await _override(broker, ref, change, clock)


async def retry(broker: Broker, ref: str, *, by: str, reason: str | None = None,
                clock: Clock = SYSTEM_CLOCK) -> SagaLog:
    """Run the step (or compensation) where the saga stands again, now, with its attempts
    counted from zero: the way out of ``needs_attention`` once the cause is fixed."""
    def change(lg: SagaLog, now: float) -> bool:
        if lg.state == "paused":
            raise SagaError(f"saga {_name(lg)} is paused: resume it first")
        if lg.state not in (*ACTIVE, "needs_attention"):
            raise SagaError(f"saga {_name(lg)} is {lg.state}: nothing to retry")
        phase = lg.phase
        i = lg.current()
        if i is None:
            raise SagaError(f"saga {_name(lg)} has no step to retry")
        st = lg.steps[i]
        if phase == "compensating":
            st.comp_failures = st.comp_lost = 0
        else:
            st.failures = st.lost = 0
        lg.state = phase
        lg.note(now, _actor(by), "retry", step=st.name, reason=reason)
        lg.rewake(now)
        return True

    return await _override(broker, ref, change, clock)


async def skip(broker: Broker, ref: str, *, by: str, reason: str, step: str | None = None,
               result: Any = None, clock: Clock = SYSTEM_CLOCK) -> SagaLog:
    """Mark a step done by hand (going forward; with ``result`` for its compensation) or
    compensated by hand (compensating): by default the step where the saga stands."""
    why = _needs(reason, "skip")

    def change(lg: SagaLog, now: float) -> bool:
        if lg.state in TERMINAL:
            raise SagaError(f"saga {_name(lg)} is {lg.state}: nothing to skip")
        if lg.run is not None and lg.run.until > now:
            raise SagaError(f"step {lg.steps[lg.run.step].name} of saga {_name(lg)} is being run "
                            f"by {lg.run.actor}; wait for it (pause the saga first to stop the next)")
        lg.run = None
        i = _step_index(lg, step)
        st = lg.steps[i]
        if lg.phase == "running":
            if st.state == "done":
                raise SagaError(f"step {st.name} of saga {_name(lg)} is done already")
            st.state, st.result, st.has_result, st.error = "done", result, result is not None, None
            lg.note(now, _actor(by), "skipped: done by hand", step=st.name, reason=why)
        else:
            if st.state not in MAY_HAVE_RUN:
                raise SagaError(f"step {st.name} of saga {_name(lg)} is {st.state}: nothing to "
                                "compensate")
            st.state = "compensated"
            lg.note(now, _actor(by), "skipped: compensated by hand", step=st.name, reason=why)
        if lg.state == "needs_attention":
            lg.state = lg.phase
        if lg.state in ACTIVE:
            lg.rewake(now)
        return True

    return await _override(broker, ref, change, clock)


def _step_index(lg: SagaLog, step: str | None) -> int:
    if step is None:
        i = lg.current()
        if i is None:
            raise SagaError(f"saga {_name(lg)} stands at no step")
        return i
    for i, st in enumerate(lg.steps):
        if st.name == step:
            return i
    raise SagaError(f"saga {_name(lg)} has no step {step!r} (its steps: "
                    f"{', '.join(s.name for s in lg.steps)})")


async def abort(broker: Broker, ref: str, *, by: str, reason: str,
                clock: Clock = SYSTEM_CLOCK) -> SagaLog:
    """Stop going forward and compensate what may have run, in reverse order (a paused saga is
    resumed for that). A step being run finishes first, and is compensated too."""
    why = _needs(reason, "abort")

    def change(lg: SagaLog, now: float) -> bool:
        if lg.state in TERMINAL or lg.phase != "running":
            raise SagaError(f"saga {_name(lg)} is {lg.state}"
                            f"{' (compensating)' if lg.state not in TERMINAL else ''}: "
                            "only a saga going forward can be aborted")
        lg.state, lg.paused_from = "compensating", None
        lg.note(now, _actor(by), "aborted", reason=why)
        lg.rewake(now)
        return True

    return await _override(broker, ref, change, clock)
