"""A saga: ordered steps, each an action and a compensation, run by the normal runtime.

``app.saga("checkout")`` declares a queue ``saga.checkout`` and a function of the same name that
moves a saga on by one step per message (``runner.py``). Each move is a compare-and-set on the
saga's log (``log.py``): *claim* (the step is marked started and leased to this runner) → run the
action or compensation → *record* how it went, with the id of the next message (the *wake*), which
is sent before the current one is acknowledged. So at every moment one message is responsible for
a saga that is still active, and a crash anywhere leaves either that message or its predecessor,
which finds the log ahead of it and sends the expected one again (the broker's dedup drops a copy).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from swell.core.codec import decode_json, encode_json
from swell.core.config import Duration, seconds
from swell.core.describe import describe_validation
from swell.core.errors import AppError, PayloadError, Throttled
from swell.core.event import new_id
from swell.core.retry import Retry
from swell.patterns.sagas.log import SagaError, SagaLog, actor_here, decode, encode, key_of, new_log, queue_of
from swell.patterns.sagas.runner import MAX_MOVES, Runner, send_wake
from swell.patterns.sagas.steps import Call, Publisher, SagaContext, Step, check_part

if TYPE_CHECKING:
    from swell.brokers.producer import Producer

__all__ = ["Saga", "SagaContext"]

F = TypeVar("F", bound=Callable[..., Any])
Connect = Callable[[str | None], Awaitable["Producer"]]
"""A broker URL (or ``None``: the default) -> the producer to start and read sagas through."""
log = logging.getLogger("swell.saga")


class Saga:
    """A declared saga: ``checkout = app.saga("checkout", step_timeout="10s")``.

    Steps run in the order they are declared (``@checkout.step()``); each may have a compensation
    (``@checkout.compensation("reserve")``). A step's action is retried after an exception or a
    timeout (``retry``, by default 3 attempts in all); once its attempts are used up, the steps
    whose actions may have run — the failed one included, with result ``None`` — are compensated
    in reverse order, each compensation retried (``compensation_retry``, by default 5 attempts)
    before the saga is left ``needs_attention``. Actions and compensations must be idempotent:
    either may run again after a crash (use ``ctx.idempotency_key``). A saga that ended is kept for
    ``retention``; one that needs attention is kept until someone sees to it.
    """

    def __init__(self, name: str, *, connect: Connect, step_timeout: Duration = "30s",
                 retry: Retry | None = None, compensation_retry: Retry | None = None,
                 retention: Duration = "7d") -> None:
        """Made by ``app.saga``, which declares its queue and function (``connect`` gives the
        producer that ``start`` and ``get`` go through: a running Runtime's, or the app's own)."""
        check_part("saga name", name)
        self.name = name
        self.queue_name = queue_of(name)
        self._connect = connect
        self.step_timeout_s = seconds(step_timeout, name="step_timeout")
        self.retry = retry or Retry(attempts=3, backoff=1.0, max_backoff=60.0)
        self.compensation_retry = compensation_retry or Retry(attempts=5, backoff=1.0,
                                                              max_backoff=60.0)
        self.retention_s = seconds(retention, name="retention")
        self.steps: dict[str, Step] = {}

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, steps={list(self.steps)})"

    # -- declaring -------------------------------------------------------------------------------
    def step(self, name: str | None = None, *, timeout: Duration | None = None,
             retry: Retry | None = None, compensate: Callable[..., Any] | None = None,
             compensation_retry: Retry | None = None) -> Callable[[F], F]:
        """Declare the next step: ``async def reserve(data: Order, ctx: SagaContext) -> dict``; what
        it returns (JSON) is its result, given to its compensation. ``timeout`` overrides the
        saga's ``step_timeout``; ``compensate`` names its compensation (or use ``compensation``)."""
        timeout_s = self.step_timeout_s if timeout is None else seconds(timeout, name="timeout")

        def register(fn: F) -> F:
            sname: str = name or getattr(fn, "__name__", None) or ""
            check_part("step name", sname)
            if sname in self.steps:
                raise AppError(f"saga {self.name!r}: step {sname!r} is declared twice")
            self.steps[sname] = Step(sname, Call.inspect(fn, compensation=False), timeout_s,
                                     retry or self.retry, compensation_retry or self.compensation_retry)
            if compensate is not None:
                self.compensation(sname)(compensate)
            return fn

        return register

    def compensation(self, step: str) -> Callable[[F], F]:
        """Declare the compensation of ``step``: ``async def release(data: Order, result: dict |
        None, ctx: SagaContext) -> None``. ``result`` is what the action returned, or ``None`` if
        it never recorded one (it failed, or its runner stopped mid-step): the compensation must
        then undo whatever the action may have done, or nothing. It may run more than once."""
        def register(fn: F) -> F:
            st = self.steps.get(step)
            if st is None:
                raise AppError(f"saga {self.name!r}: no step {step!r} (declare it before its "
                               "compensation)")
            if st.compensation is not None:
                raise AppError(f"saga {self.name!r}: step {step!r} has a compensation already")
            st.compensation = Call.inspect(fn, compensation=True)
            return fn

        return register

    # -- starting and reading --------------------------------------------------------------------
    async def start(self, data: Any, *, id: str | None = None, broker: str | None = None) -> str:
        """Start a saga with ``data`` (validated against every step's annotation first: a
        ``PayloadError`` says which); returns its id. From a handler, a script, anywhere: through
        the app's running Runtime, or a broker of the app's own (``broker``, else ``SWELL_BROKER``
        or the embedded default, as ``app.publish``). Starting again with the same ``id`` and data
        starts nothing new; with other data it is a ``SagaError``."""
        if not self.steps:
            raise AppError(f"saga {self.name!r} has no steps")
        sid = id or new_id()
        check_part("saga id", sid)
        raw = self._validate(data)
        producer = await self._connect(broker)
        kv = producer.broker.kv
        key = key_of(self.name, sid)
        entry = await kv.get(key)
        if entry is None:
            lg = new_log(self.name, sid, raw, list(self.steps), producer.clock.time(),
                         f"start {actor_here()}")
            # the first message before the log: if this process stops in between, the runner
            # writes the log from the message, so no saga is ever left without one
            await send_wake(producer, lg, init=True)
            if await kv.put_if_absent(key, encode(lg)) is not None:
                return sid
            entry = await kv.get(key)
        if entry is not None and decode(entry.value).data != raw:
            raise SagaError(f"saga {self.name}/{sid} exists already, with other data")
        return sid

    def _validate(self, data: Any) -> Any:
        raw = decode_json(encode_json(data))
        for st in self.steps.values():
            for call in (st.action, st.compensation):
                if call is None or call.data_adapter is None:
                    continue
                try:
                    call.data_adapter.validate_python(raw)
                except pydantic.ValidationError as exc:
                    raise PayloadError(f"saga {self.name!r}, step {st.name!r}: "
                                       f"{describe_validation(exc)}") from exc
        return raw

    async def get(self, saga_id: str, *, broker: str | None = None) -> SagaLog | None:
        """The log of one saga, or ``None``."""
        producer = await self._connect(broker)
        entry = await producer.broker.kv.get(key_of(self.name, saga_id))
        return None if entry is None else decode(entry.value)

    # -- running ---------------------------------------------------------------------------------
    async def run(self, message: dict[str, Any], ctx: Publisher, *, producer: Producer,
                  wake: str) -> None:
        """Move the saga of ``message`` on (the handler of the saga's function calls this, with
        its Context, the producer it publishes through, and the message's event id)."""
        sid = message.get("id")
        if not isinstance(sid, str):
            log.error("saga %s: a message without a saga id: %r", self.name, message)
            return
        runner = Runner(self, ctx, sid, producer=producer, wake=wake)
        for _ in range(MAX_MOVES):
            if not await runner.move(message):
                return
        raise Throttled(0.2, f"saga {self.name}/{sid} keeps changing; looking again")
