"""What a saga's step is made of: its action and compensation, how they are called, and the
``SagaContext`` they get."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pydantic

from swell.core.errors import AppError
from swell.core.retry import Retry
from swell.core.signature import name_of, parameters, validator
from swell.patterns.sagas.log import Phase

log = logging.getLogger("swell.saga")


class Publisher(Protocol):
    """What a ``SagaContext`` needs of the Context of the message that runs its step."""

    def publish(self, target: str, data: Any, *, delay_s: float = 0.0,
                **attrs: Any) -> Awaitable[str]: ...


def is_handler_context(ann: object) -> bool:
    """Whether ``ann`` is a handler's ``Context`` (or ``SyncContext``), which a step must not ask
    for (patterns sit below the runtime, so the class is known by its name and package)."""
    return (isinstance(ann, type) and ann.__name__ in ("Context", "SyncContext")
            and ann.__module__.startswith("swell.runtime"))


class SagaContext:
    """Given to a step's action or compensation that asks for it (annotate a parameter with it).

    ``idempotency_key`` is stable for this step of this saga and phase (one key for the action, one
    for its compensation), over every retry and every runner: store it with the effect
    (``INSERT ... ON CONFLICT DO NOTHING``, an API's idempotency header) so that a run repeated
    after a crash has no second effect. ``action_key`` is the action's key, for a compensation to
    find what its action did."""

    __slots__ = ("_ctx", "attempt", "deadline", "phase", "saga", "saga_id", "step")

    def __init__(self, *, saga: str, saga_id: str, step: str, phase: Phase, attempt: int,
                 deadline: float, ctx: Publisher) -> None:
        self.saga = saga
        self.saga_id = saga_id
        self.step = step
        self.phase: Phase = phase
        #: 1 on this step's (or compensation's) first run, 2 on the next, ...
        self.attempt = attempt
        #: the loop time (``loop.time()``) by which the step must finish: its timeout
        self.deadline = deadline
        self._ctx = ctx

    @property
    def correlationid(self) -> str:
        """The saga's id: every step's message carries it, and so does what a step publishes."""
        return self.saga_id

    @property
    def action_key(self) -> str:
        return f"{self.saga}:{self.saga_id}:{self.step}"

    @property
    def idempotency_key(self) -> str:
        return self.action_key if self.phase == "action" else f"{self.action_key}:compensation"

    @property
    def remaining_s(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        return logging.LoggerAdapter(log, {"saga": self.saga, "saga_id": self.saga_id,
                                           "step": self.step, "phase": self.phase,
                                           "attempt": self.attempt})

    async def publish(self, target: str, data: Any, *, delay_s: float = 0.0, **attrs: Any) -> str:
        """Send to a queue or publish to a topic, with the saga's id as correlation id."""
        return await self._ctx.publish(target, data, delay_s=delay_s, **attrs)


@dataclass(frozen=True, slots=True)
class Call:
    """An action or compensation and how to call it: ``(data[, result], ctx)`` by annotation."""

    fn: Callable[..., Awaitable[Any]]
    data: str | None
    data_adapter: pydantic.TypeAdapter[Any] | None
    result: str | None
    result_adapter: pydantic.TypeAdapter[Any] | None
    context: str | None

    @classmethod
    def inspect(cls, fn: Callable[..., Any], *, compensation: bool) -> Call:
        name = name_of(fn)
        if not inspect.iscoroutinefunction(fn):
            raise AppError(f"{name}: a saga's actions and compensations are 'async def'")
        wanted = ["data", "result"] if compensation else ["data"]
        got: dict[str, tuple[str, pydantic.TypeAdapter[Any] | None]] = {}
        context = None
        for p, ann in parameters(fn):
            if ann is SagaContext:
                context = p.name
            elif is_handler_context(ann):
                raise AppError(f"{name}: a saga step's context is a SagaContext "
                               "(from swell.patterns.sagas import SagaContext), not a Context")
            elif wanted:
                got[wanted.pop(0)] = (p.name, validator(name, ann))
            elif p.default is inspect.Parameter.empty:
                raise AppError(f"{name}: parameter {p.name!r} has no value to receive; a step takes "
                               f"(data, ctx){' and a compensation (data, result, ctx)' * compensation}")
        data, data_adapter = got.get("data", (None, None))
        result, result_adapter = got.get("result", (None, None))
        return cls(fn, data, data_adapter, result, result_adapter, context)

    def arguments(self, data: Any, result: Any, ctx: SagaContext) -> dict[str, Any]:
        """Keyword arguments; raises ``pydantic.ValidationError``. A result never recorded is
        given as ``None`` without validation."""
        kwargs: dict[str, Any] = {}
        if self.data is not None:
            kwargs[self.data] = data if self.data_adapter is None else self.data_adapter.validate_python(data)
        if self.result is not None:
            kwargs[self.result] = (result if result is None or self.result_adapter is None
                                   else self.result_adapter.validate_python(result))
        if self.context is not None:
            kwargs[self.context] = ctx
        return kwargs


@dataclass(slots=True)
class Step:
    name: str
    action: Call
    timeout_s: float
    retry: Retry
    compensation_retry: Retry
    compensation: Call | None = None


def check_part(kind: str, value: str) -> None:
    if not value or len(value) > 200 or "/" in value or any(c.isspace() for c in value):
        raise AppError(f"bad {kind} {value!r}: 1-200 characters, no '/' and no spaces")
