"""Moving a saga on, one message at a time: claim the next step in the log, run it, record how it
went together with the next message's id, send that message; and the sending itself."""

from __future__ import annotations

import asyncio
import logging
import typing
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic

from swell.core import tracing
from swell.core.codec import decode_json, encode_json
from swell.core.describe import describe, describe_validation
from swell.core.errors import PayloadError, Throttled
from swell.patterns.sagas.log import (
    ACTIVE,
    Phase,
    Run,
    SagaLog,
    SagaState,
    StepLog,
    actor_here,
    encode,
    key_of,
    new_log,
    queue_of,
    update,
)
from swell.patterns.sagas.steps import Call, Publisher, SagaContext, Step

if TYPE_CHECKING:
    from swell.brokers.producer import Producer
    from swell.patterns.sagas.saga import Saga

log = logging.getLogger("swell.saga")

LEASE_MARGIN_S = 1.0
"""A run's lease outlasts its step's timeout by this much (and by any clock skew between nodes)."""
MAX_LOST_RUNS = 5
"""Runs of one step lost to a runner that stopped mid-step before the step counts as failed."""
MAX_RESULT_BYTES = 64 * 1024
MAX_MOVES = 16


async def send_wake(producer: Producer, lg: SagaLog, *, init: bool = False) -> None:
    """Send the message that is to move ``lg`` on (its id is its dedup id, so a copy is dropped).
    The first one (``init``) carries the data, so a runner can write a log that is missing."""
    if lg.wake is None:
        return
    queue = queue_of(lg.saga)
    body: dict[str, Any] = {"id": lg.id}
    if init:
        body["data"] = lg.data
    event = producer.event(queue, body, id=lg.wake, correlationid=lg.id, key=lg.id,
                           type=f"swell.saga.{lg.saga}")
    delay_s = max(0.0, lg.wake_at - producer.clock.time())
    await producer.send_events(queue, [event], delay_s=delay_s, dedup=True)


@dataclass(frozen=True, slots=True)
class _Todo:
    """What a claim decided: ``run`` a step, ``again`` (look at once), ``send`` the wake,
    ``busy`` (someone else's run holds the lease for ``wait_s``), or nothing."""

    what: typing.Literal["run", "again", "send", "busy", "stale", "none"]
    index: int = 0
    step: Step | None = None
    phase: Phase = "action"
    attempt: int = 0
    token: str = ""
    data: Any = None
    result: Any = None
    wait_s: float = 0.0


@dataclass(frozen=True, slots=True)
class _Outcome:
    result: Any = None
    error: str | None = None
    fatal: bool = False
    throttled_s: float | None = None


class Runner:
    """Moves one saga on, for one message."""

    def __init__(self, saga: Saga, ctx: Publisher, saga_id: str, *, producer: Producer,
                 wake: str) -> None:
        self.saga = saga
        self.ctx = ctx
        self.producer = producer
        self.kv = self.producer.broker.kv
        self.clock = self.producer.clock
        self.id = saga_id
        self.key = key_of(saga.name, saga_id)
        self.wake = wake
        self.actor = f"runner {actor_here()}"
        self.todo = _Todo("none")

    async def move(self, message: dict[str, Any]) -> bool:
        """One move; ``True`` to look again at once."""
        lg = await update(self.kv, self.key, self._claim, retention_s=self.saga.retention_s)
        if lg is None:
            return await self._create(message)
        todo = self.todo
        if todo.what == "busy":
            raise Throttled(todo.wait_s, "a step of this saga is being run elsewhere")
        if todo.what in ("stale", "send") and lg.state in ACTIVE:
            await send_wake(self.producer, lg)
        if todo.what != "run":
            return todo.what == "again"
        outcome = await self._call(todo)
        lg = await update(self.kv, self.key, lambda lg: self._record(lg, todo, outcome),
                          retention_s=self.saga.retention_s)
        if lg is not None and lg.state in ACTIVE and lg.wake != self.wake:
            await send_wake(self.producer, lg)
        return False

    async def _create(self, message: dict[str, Any]) -> bool:
        if "data" not in message or self.wake != f"{self.id}.0":
            log.warning("saga %s/%s has no log (expired, or never written): message %s dropped",
                        self.saga.name, self.id, self.wake)
            return False
        lg = new_log(self.saga.name, self.id, message["data"], list(self.saga.steps),
                     self.clock.time(), self.actor,
                     reason="log written from the start message (its sender stopped before it)")
        await self.kv.put_if_absent(self.key, encode(lg))
        return True

    # -- claim ------------------------------------------------------------------------------------
    def _claim(self, lg: SagaLog) -> bool:
        """Decide the next move on the latest log (``self.todo``); whether the log changed."""
        self.todo = _Todo("none")
        now = self.clock.time()
        if lg.wake != self.wake:
            self.todo = _Todo("stale")
            return False
        if lg.state not in ACTIVE:
            return False
        if lg.run is not None:
            if lg.run.until > now:
                self.todo = _Todo("busy", wait_s=lg.run.until - now + 0.05)
                return False
            self._lost(lg, lg.run, now)
        forward = lg.state == "running"
        i = lg.next_step() if forward else lg.to_compensate()
        if i is None:
            end: SagaState = "completed" if forward else "compensated"
            lg.move(end)
            lg.note(now, self.actor, end)
            return True
        st = lg.steps[i]
        step = self.saga.steps.get(st.name)
        if step is None:
            lg.move("needs_attention")
            lg.note(now, self.actor, "needs attention", step=st.name,
                    reason=f"step {st.name!r} is not declared by this app (renamed or removed?)")
            return True
        if not forward and step.compensation is None:
            st.state = "compensated"
            lg.note(now, self.actor, "step compensated", step=st.name, reason="no compensation declared")
            self.todo = _Todo("again")
            return True
        if (st.lost if forward else st.comp_lost) >= MAX_LOST_RUNS:
            self._give_up(lg, st, now, forward)
            return True
        self._start(lg, i, step, now, forward)
        return True

    def _lost(self, lg: SagaLog, run: Run, now: float) -> None:
        st = lg.steps[run.step]
        if run.phase == "action":
            st.lost += 1
        else:
            st.comp_lost += 1
        lg.run = None
        what = "step" if run.phase == "action" else "compensation"
        lg.note(now, self.actor, "run lost", step=st.name,
                reason=f"{run.actor} stopped before recording its {what} run; running it again")

    def _give_up(self, lg: SagaLog, st: StepLog, now: float, forward: bool) -> None:
        reason = f"{MAX_LOST_RUNS} runs lost to runners that stopped mid-step"
        if forward:
            st.state = "failed"
            st.error = reason
            lg.note(now, self.actor, "step failed", step=st.name, reason=reason)
            lg.move("compensating")
            lg.rewake(now)
            lg.note(now, self.actor, "compensating", step=st.name, reason=f"step {st.name} failed")
            self.todo = _Todo("send")
        else:
            st.comp_error = reason
            lg.move("needs_attention")
            lg.note(now, self.actor, "needs attention", step=st.name, reason=reason)

    def _start(self, lg: SagaLog, i: int, step: Step, now: float, forward: bool) -> None:
        st = lg.steps[i]
        token = uuid.uuid4().hex
        if forward:
            st.state = "started"
            st.runs += 1
            attempt = st.runs
        else:
            st.comp_runs += 1
            attempt = st.comp_runs
        phase: Phase = "action" if forward else "compensation"
        lg.run = Run(token=token, step=i, phase=phase, until=now + step.timeout_s + LEASE_MARGIN_S,
                     actor=self.actor)
        lg.note(now, self.actor, "step started" if forward else "compensation started",
                step=st.name, reason=f"attempt {attempt}")
        self.todo = _Todo("run", i, step, phase, attempt, token, lg.data,
                          st.result if st.has_result else None)

    # -- run --------------------------------------------------------------------------------------
    async def _call(self, todo: _Todo) -> _Outcome:
        step = todo.step
        assert step is not None
        call = step.action if todo.phase == "action" else step.compensation
        assert call is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + step.timeout_s
        sctx = SagaContext(saga=self.saga.name, saga_id=self.id, step=step.name, phase=todo.phase,
                           attempt=todo.attempt, deadline=deadline, ctx=self.ctx)
        if not tracing.ON:
            return await self._run(todo, call, sctx, deadline)
        with tracing.step_span(self.saga.name, self.id, step.name, todo.phase, todo.attempt) as span:
            out = await self._run(todo, call, sctx, deadline)
            if out.error is not None:
                tracing.failed(span, "throttled" if out.throttled_s is not None else "failed",
                               out.error)
            return out

    async def _run(self, todo: _Todo, call: Call, sctx: SagaContext, deadline: float) -> _Outcome:
        step = todo.step
        assert step is not None
        loop = asyncio.get_running_loop()
        try:
            kwargs = call.arguments(todo.data, todo.result, sctx)
        except pydantic.ValidationError as exc:
            return _Outcome(error=f"invalid input: {describe_validation(exc)}", fatal=True)
        try:
            async with asyncio.timeout_at(deadline):
                value = await call.fn(**kwargs)
        except Throttled as exc:
            return _Outcome(error=str(exc), throttled_s=exc.retry_after_s)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and loop.time() >= deadline:
                return _Outcome(error=f"timed out after {step.timeout_s:g}s")
            return _Outcome(error=describe(exc))
        if todo.phase == "compensation":
            return _Outcome()
        try:
            raw = encode_json(value)
        except PayloadError as exc:
            return _Outcome(error=f"its result is not JSON: {exc}", fatal=True)
        if len(raw) > MAX_RESULT_BYTES:
            return _Outcome(error=f"its result is {len(raw):,} bytes, over {MAX_RESULT_BYTES:,}",
                            fatal=True)
        return _Outcome(result=decode_json(raw))

    # -- record -----------------------------------------------------------------------------------
    def _record(self, lg: SagaLog, todo: _Todo, out: _Outcome) -> bool:
        if lg.run is None or lg.run.token != todo.token:
            log.warning("saga %s/%s: step %s ran past its lease and was taken over; its outcome is "
                        "dropped", self.saga.name, self.id, lg.steps[todo.index].name)
            return False
        lg.run = None
        now = self.clock.time()
        st = lg.steps[todo.index]
        assert todo.step is not None
        delay = 0.0
        if out.throttled_s is not None:
            delay = out.throttled_s
            lg.note(now, self.actor, "throttled", step=st.name, reason=out.error)
        elif todo.phase == "action":
            delay = self._record_action(lg, st, todo, out, now)
        else:
            delay = self._record_compensation(lg, st, todo, out, now)
        if lg.state in ACTIVE:
            lg.rewake(now, delay)
        return True

    def _record_action(self, lg: SagaLog, st: StepLog, todo: _Todo, out: _Outcome,
                       now: float) -> float:
        assert todo.step is not None
        if out.error is None:
            st.state, st.result, st.has_result, st.error = "done", out.result, True, None
            lg.note(now, self.actor, "step done", step=st.name)
            if lg.phase == "running" and lg.next_step() is None:
                lg.move("completed")
                lg.note(now, self.actor, "completed")
            return 0.0
        st.failures += 1
        st.error = out.error
        attempts = todo.step.retry.allowed()
        if not out.fatal and st.failures < attempts:
            delay = todo.step.retry.delay_s(st.failures)
            lg.note(now, self.actor, "step attempt failed", step=st.name,
                    reason=f"{out.error} (attempt {todo.attempt}; retry in {delay:.2f}s)")
            return delay
        st.state = "failed"
        lg.note(now, self.actor, "step failed", step=st.name,
                reason=f"{out.error} ({st.failures} failure(s))")
        if lg.phase == "running":
            lg.move("compensating")
            lg.note(now, self.actor, "compensating", step=st.name, reason=f"step {st.name} failed")
        return 0.0

    def _record_compensation(self, lg: SagaLog, st: StepLog, todo: _Todo, out: _Outcome,
                             now: float) -> float:
        assert todo.step is not None
        if out.error is None:
            st.state, st.comp_error = "compensated", None
            lg.note(now, self.actor, "step compensated", step=st.name)
            if lg.phase == "compensating" and lg.to_compensate() is None:
                lg.move("compensated")
                lg.note(now, self.actor, "compensated")
            return 0.0
        st.comp_failures += 1
        st.comp_error = out.error
        attempts = todo.step.compensation_retry.allowed()
        if not out.fatal and st.comp_failures < attempts:
            delay = todo.step.compensation_retry.delay_s(st.comp_failures)
            lg.note(now, self.actor, "compensation attempt failed", step=st.name,
                    reason=f"{out.error} (attempt {todo.attempt}; retry in {delay:.2f}s)")
            return delay
        lg.move("needs_attention")
        lg.note(now, self.actor, "needs attention", step=st.name,
                reason=f"compensation failed {st.comp_failures} time(s): {out.error}")
        return 0.0
