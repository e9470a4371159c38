"""The admin API's reads, as JSON: through the same read side as the CLI
(``swell.runtime.status``), the local runtime's snapshot where it knows better (SLO, series) or
answers without a broker trip (the KEDA endpoint)."""

from __future__ import annotations

import math
from typing import Any

import msgspec

from swell.brokers.base import H_AT, H_ATTEMPTS, H_ERROR, H_REASON, H_SOURCE, Delivery, QueueStats
from swell.core.cost import Cost
from swell.core.errors import ConfigError, UnknownQueue
from swell.core.event import Event
from swell.patterns.sagas.log import SagaError, SagaLog
from swell.runtime.pause import Paused, read_paused
from swell.runtime.slo import SloSnapshot
from swell.runtime.sources import read_sources
from swell.runtime.status import (
    FunctionSnapshot,
    FunctionView,
    read_dead_letter_queues,
    read_dead_letters,
    read_functions,
    read_nodes,
    read_queues,
    read_saga,
    read_sagas,
    read_streams,
    read_topics,
)
from swell.triggers.schedule import ScheduleSource, read_last
from swell.web.admin_base import Admin, ApiError, Call, redact

__all__ = [
    "dlq", "dlq_letters", "function", "function_history", "function_scale", "functions",
    "nodes", "overview", "queues", "replays", "saga", "saga_json", "sagas", "schedules",
    "sources", "streams", "topics",
]

J = dict[str, Any]
SIGNALS = ("depth", "delayed", "oldest_age_s", "in_flight", "arrival_rate", "completion_rate",
           "service_p50_s", "service_p99_s", "error_rate", "throttle_rate", "starting", "ready",
           "busy", "cold_starts", "lag")


def num(x: float | None) -> float | None:
    """A number JSON can say (``None`` for NaN and the infinities)."""
    return None if x is None or not math.isfinite(x) else x


# -- functions -------------------------------------------------------------------------------------
def _slo(s: SloSnapshot | None) -> J | None:
    if s is None:
        return None
    return {"objectives": [{"objective": r.objective, "target": r.target, "sli": num(r.sli),
                            "budget_left": num(r.budget_left),
                            "burn_rates": {w: num(b) for w, b in r.burn_rates},
                            "firing": [a.name for a in r.firing]} for r in s.objectives]}


def _cost(c: Cost | None) -> J | None:
    if c is None:
        return None
    return {"dollars": c.dollars, "dollars_per_h": c.dollars_per_h, "budget_per_h": c.budget_per_h,
            "events": c.events, "unit_s": c.unit_s, "per_1000_events": num(c.per_1000_events())}


def _function(snap: FunctionSnapshot, view: FunctionView | None, flag: Paused | None,
              node: str, controller: str) -> J:
    """One function, over every node (``view``: its status records) or, before its first
    record, as this node knows it."""
    s = view.signals if view is not None else snap.signals
    costs = [n.cost for n in view.nodes if n.cost is not None] if view is not None else []
    cost = sum(costs[1:], costs[0]) if costs else snap.cost
    return {
        "name": snap.name, "queue": snap.queue, "mode": snap.mode,
        "controller": view.controller if view is not None else controller,
        "desired": view.desired if view is not None else snap.desired,
        "reason": view.reason if view is not None else snap.reason,
        "paused": flag is not None, "paused_by": None if flag is None else flag.by,
        "signals": {k: None if s is None else num(getattr(s, k)) for k in SIGNALS},
        "slo": _slo(snap.slo), "cost": _cost(cost),
        "nodes": ([{"node": n.node, "share": n.share} for n in view.nodes] if view is not None
                  else [{"node": node, "share": snap.share}]),
        "group": None if view is None else view.group,
        "lags": [] if view is None else list(view.lags),
        "hot_keys": [] if view is None else msgspec.to_builtins(view.hot_keys()),
        "window": None if view is None else view.window,
    }


async def _functions(a: Admin) -> list[J]:
    rt = a.runtime
    views = {v.function: v for v in await read_functions(rt.broker, rt.app.name)}
    flags = await read_paused(rt.broker.kv, rt.app.name)
    snap = a.history.snapshot()
    return [_function(f, views.get(f.name), flags.get(f.name), rt.node, _controller(a, f.name))
            for f in snap.functions]


def _controller(a: Admin, name: str) -> str:
    st = a.runtime.functions.get(name)
    return "" if st is None else repr(st.controller)


def _known(a: Admin, name: str) -> None:
    if name not in a.runtime.app.functions:
        known = ", ".join(sorted(a.runtime.app.functions)) or "none"
        raise ApiError(404, "unknown_function", f"no function {name!r} in app "
                       f"{a.runtime.app.name!r} (its functions: {known})")


async def functions(a: Admin, c: Call) -> list[J]:
    return await _functions(a)


async def function(a: Admin, c: Call) -> J:
    name = c.path["name"]
    _known(a, name)
    found = [f for f in await _functions(a) if f["name"] == name]
    if not found:  # (declared, but stopped meanwhile)
        raise ApiError(404, "unknown_function", f"function {name!r} is not running")
    return found[0]


async def function_history(a: Admin, c: Call) -> J:
    _known(a, c.path["name"])
    return a.history.series(c.path["name"], c.query.get("seconds", 3600.0), c.query.get("since"))


async def function_scale(a: Admin, c: Call) -> J:
    """KEDA's metrics-api scaler reads ``desiredUnits``: the decision for all nodes together
    (0 while paused), from this node's snapshot: no broker trip per poll."""
    _known(a, c.path["name"])
    for f in a.history.snapshot().functions:
        if f.name == c.path["name"]:
            s = f.signals
            return {"desiredUnits": f.desired, "depth": (s.depth or 0) if s else 0,
                    "lag": (s.lag or 0) if s else 0}
    raise ApiError(404, "unknown_function", f"function {c.path['name']!r} is not running")


async def overview(a: Admin, c: Call) -> J:
    rt = a.runtime
    return {"app": rt.app.name, "node": rt.node, "time": rt.clock.time(), "token_required": True,
            "functions": await _functions(a), "nodes": await nodes(a, c)}


# -- the rest of the read side -----------------------------------------------------------------------
def _stats(q: QueueStats) -> J:
    return {**msgspec.to_builtins(q), "total": q.total}


async def nodes(a: Admin, c: Call) -> list[J]:
    return [msgspec.to_builtins(n) for n in await read_nodes(a.runtime.broker, a.runtime.app.name)]


async def queues(a: Admin, c: Call) -> list[J]:
    return [_stats(q) for q in await read_queues(a.runtime.broker)]


async def topics(a: Admin, c: Call) -> list[J]:
    return [{"topic": t.topic.spec.name, "published": t.topic.published,
             "retention_s": t.topic.spec.retention_s,
             "subscriptions": [{"name": s.spec.name, "queue": s.spec.queue.name,
                                "subject": s.spec.subject, "filter": s.spec.filter,
                                "matched": s.matched, "filtered": s.filtered, "stats": _stats(q)}
                               for s, q in t.subscriptions]}
            for t in await read_topics(a.runtime.broker)]


async def streams(a: Admin, c: Call) -> list[J]:
    return [{"stream": s.spec.name, "partitions": s.spec.partitions,
             "retention_s": s.spec.retention_s, "kept": list(s.kept),
             "groups": [{"group": g.group, "lags": list(g.lags), "nodes": list(g.nodes)}
                        for g in s.groups],
             "hot_keys": msgspec.to_builtins(s.hot_keys)}
            for s in await read_streams(a.runtime.broker)]


async def sources(a: Admin, c: Call) -> list[J]:
    found = await read_sources(a.runtime.broker, a.runtime.app.name)
    return [redact(msgspec.to_builtins(s)) for s in found]


async def schedules(a: Admin, c: Call) -> list[J]:
    from swell.core import keys

    app = a.runtime.app
    out = []
    for s in sorted((s for s in app.sources.values() if isinstance(s, ScheduleSource)),
                    key=lambda s: s.name):
        last = await read_last(a.runtime.broker.kv, keys.schedule(app.name, s.name))
        detail = {k: v for k, v in s.detail().items() if k != "last"}
        out.append({"name": s.name, "to": s.target, "detail": detail,
                    "last": None if last is None else msgspec.to_builtins(last)})
    return out


# -- dead letters ------------------------------------------------------------------------------------
async def dlq(a: Admin, c: Call) -> list[J]:
    broker = a.runtime.broker
    source = {q.dead_letter_queue: q.name for q in await broker.queues() if q.dead_letter_queue}
    return [{**_stats(q), "source_queue": source.get(q.queue)}
            for q in await read_dead_letter_queues(broker)]


def _letter(d: Delivery) -> J:
    h = d.headers
    try:
        event = Event.from_json(d.body)
        eid, payload = event.id, event.data
    except Exception:  # whatever is stored is shown, as its raw body
        eid, payload = None, d.body.decode("utf-8", errors="backslashreplace")
    attempts = h.get(H_ATTEMPTS, "")
    try:
        at = float(h[H_AT]) if H_AT in h else None
    except ValueError:
        at = None
    return {"id": eid, "reason": h.get(H_REASON), "error": redact(h.get(H_ERROR)),
            "attempts": int(attempts) if attempts.isdigit() else None,
            "dead_lettered_at": num(at), "source_queue": h.get(H_SOURCE), "payload": payload}


async def dlq_letters(a: Admin, c: Call) -> J:
    queue = c.path["queue"]
    try:
        found = await read_dead_letters(a.runtime.broker, queue, c.query.get("limit", 50))
    except UnknownQueue:
        raise ApiError(404, "unknown_queue", f"no queue {queue!r}") from None
    except ConfigError as exc:
        raise ApiError(404, "no_dead_letter_queue", str(exc)) from None
    return {"queue": found.queue, "total": found.total,
            "letters": [_letter(d) for d in found.letters]}


# -- sagas ---------------------------------------------------------------------------------------------
def _ref(lg: SagaLog) -> str:
    return f"{lg.saga}/{lg.id}"


async def sagas(a: Admin, c: Call) -> list[J]:
    found = await read_sagas(a.runtime.broker, c.query.get("saga") or None,
                             c.query.get("state") or None)
    return [{"ref": _ref(lg), "saga": lg.saga, "id": lg.id, "state": lg.state,
             "created": lg.created, "updated": lg.updated, "step": lg.current_name(),
             "steps": len(lg.steps)} for lg in found]


def saga_json(lg: SagaLog) -> J:
    """A saga's log, its steps and audit entries (the running step's lease token left out)."""
    out: J = {"ref": _ref(lg), **msgspec.to_builtins(lg)}
    if isinstance(out.get("run"), dict):
        out["run"].pop("token", None)
    return out


async def saga(a: Admin, c: Call) -> J:
    ref = c.path["ref"]
    try:
        return saga_json(await read_saga(a.runtime.broker, ref))
    except SagaError as exc:
        raise ApiError(404, "unknown_saga", str(exc)) from None


# -- replays -----------------------------------------------------------------------------------------
async def replays(a: Admin, c: Call) -> list[J]:
    """The replays run on this broker (``swell replay``): their range and how many slice
    positions are recorded. A replay is a process of its own: Ctrl-C pauses it, the same command
    resumes it, so there is nothing here to pause."""
    from swell.core import keys

    found: dict[tuple[str, str, str], J] = {}
    for e in await a.runtime.broker.kv.scan(keys.REPLAYS):
        parts = e.key[len(keys.REPLAYS):].split("/")
        if len(parts) < 4:
            continue
        stream, group, rid = parts[0], parts[1], parts[2]
        row = found.setdefault((stream, group, rid), {
            "stream": stream, "group": group, "id": rid, "start": None, "end": None,
            "positions": 0})
        if parts[3] == "range":
            try:
                row["start"], row["end"] = msgspec.json.decode(e.value, type=tuple[float, float])
            except msgspec.DecodeError:
                continue
        else:
            row["positions"] += 1
    return list(found.values())
