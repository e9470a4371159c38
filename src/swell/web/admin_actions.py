"""The admin API's changes (each behind the bearer token, checked before this is reached):
dead letters redriven, sagas overridden (audited in their logs, as ``swell saga`` does), a
function's intake paused and resumed (``swell.runtime.pause``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from swell.core.errors import ConfigError, UnknownQueue
from swell.patterns.sagas import admin as saga_admin
from swell.patterns.sagas.log import SagaError, SagaLog
from swell.runtime import pause
from swell.runtime.redrive import redrive
from swell.runtime.status import read_saga
from swell.web.admin_base import Admin, ApiError, Call
from swell.web.admin_reads import saga_json

__all__ = ["SAGA_ACTIONS", "dlq_redrive", "function_pause", "function_resume", "saga_action"]

J = dict[str, Any]
#: who a change is by when the body does not say
ANONYMOUS = "admin api"


async def dlq_redrive(a: Admin, c: Call) -> J:
    """``{"ids": [...]}``: those dead letters (an empty list moves none); ``{"max": n}``: at most
    n; neither: all."""
    queue, ids = c.path["queue"], c.body.get("ids")
    if ids is not None and c.body.get("max") is not None:
        raise ApiError(400, "bad_request", "give ids or max, not both: ids names what moves")
    if ids == []:
        return {"moved": 0, "missing": [], "queue": queue}
    try:
        moved, missing, name = await redrive(a.runtime.broker, queue, ids=ids or (),
                                             max_messages=c.body.get("max"))
    except UnknownQueue:
        raise ApiError(404, "unknown_queue", f"no queue {queue!r}") from None
    except ConfigError as exc:
        raise ApiError(409, "cannot_redrive", str(exc)) from None
    return {"moved": moved, "missing": missing, "queue": name}


Override = Callable[..., Awaitable[SagaLog]]
SAGA_ACTIONS: dict[str, Override] = {
    "pause": saga_admin.pause, "resume": saga_admin.resume, "retry": saga_admin.retry,
    "skip": saga_admin.skip, "abort": saga_admin.abort,
}
"""Each override of ``swell.patterns.sagas.admin``, by the name its path ends with."""


def saga_action(action: str) -> Callable[[Admin, Call], Awaitable[J]]:
    change = SAGA_ACTIONS[action]

    async def act(a: Admin, c: Call) -> J:
        ref, b = c.path["ref"], c.body
        try:
            await read_saga(a.runtime.broker, ref)
        except SagaError as exc:
            raise ApiError(404, "unknown_saga", str(exc)) from None
        kwargs: J = {"by": b["by"], "reason": b.get("reason"), "clock": a.runtime.clock}
        if action == "skip" and b.get("step"):
            kwargs["step"] = b["step"]
        try:
            lg = await change(a.runtime.broker, ref, **kwargs)
        except SagaError as exc:
            raise ApiError(409, "saga_conflict", str(exc)) from None
        return saga_json(lg)

    act.__name__ = f"saga_{action}"
    return act


def _function(a: Admin, c: Call) -> str:
    name = c.path["name"]
    if name not in a.runtime.app.functions:
        raise ApiError(404, "unknown_function", f"no function {name!r} in app "
                       f"{a.runtime.app.name!r}")
    return name


async def function_pause(a: Admin, c: Call) -> J:
    """Intake stops on every node (within a second and a tick); what is in flight finishes."""
    name, rt = _function(a, c), a.runtime
    await pause.pause(rt.broker.kv, rt.app.name, name, by=c.body.get("by") or ANONYMOUS,
                      at=rt.clock.time(), reason=c.body.get("reason") or None)
    await pause.refresh(rt, force=True)  # this node: from its next tick
    return {"function": name, "paused": True}


async def function_resume(a: Admin, c: Call) -> J:
    name, rt = _function(a, c), a.runtime
    await pause.resume(rt.broker.kv, rt.app.name, name)
    await pause.refresh(rt, force=True)
    return {"function": name, "paused": False}
