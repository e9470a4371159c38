"""The JSON schemas of the admin API's bodies (OpenAPI 3.1 takes JSON Schema as it is): what the
handlers of ``admin_reads`` and ``admin_actions`` answer, held to them by the tests."""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMAS", "ref"]

S = dict[str, Any]


def ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: dict[str, S], optional: dict[str, S] | None = None) -> S:
    """An object with these properties (more may come: a client ignores what it does not know)."""
    return {"type": "object", "required": list(required),
            "properties": {**required, **(optional or {})}}


def arr(items: S) -> S:
    return {"type": "array", "items": items}


def maybe(schema: S) -> S:
    """``schema`` or null."""
    t = schema.get("type")
    if isinstance(t, str):
        return {**schema, "type": [t, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


STR: S = {"type": "string"}
INT: S = {"type": "integer"}
NUM: S = {"type": "number"}
BOOL: S = {"type": "boolean"}
ANY: S = {}
TIME: S = {"type": "number", "description": "epoch seconds"}

_SIGNALS = ("depth", "delayed", "oldest_age_s", "in_flight", "arrival_rate", "completion_rate",
            "service_p50_s", "service_p99_s", "error_rate", "throttle_rate", "starting", "ready",
            "busy", "cold_starts", "lag")

QUEUE_STATS = obj({"queue": STR, "depth": INT, "in_flight": INT, "delayed": INT,
                   "oldest_age_s": NUM, "total": INT})
HOT_KEY = obj({"partition": maybe(INT), "key": STR, "rate_per_s": NUM, "share": NUM})

SCHEMAS: dict[str, S] = {
    "Error": obj({"error": STR, "detail": STR}),
    "Signals": obj({k: maybe(NUM) for k in _SIGNALS}),
    "Slo": obj({"objectives": arr(obj({
        "objective": STR, "target": NUM, "sli": maybe(NUM), "budget_left": maybe(NUM),
        "burn_rates": {"type": "object", "additionalProperties": maybe(NUM)},
        "firing": arr(STR)}))}),
    "Cost": obj({"dollars": NUM, "dollars_per_h": NUM, "budget_per_h": maybe(NUM),
                 "events": INT, "unit_s": NUM, "per_1000_events": maybe(NUM)}),
    "Function": obj({
        "name": STR, "queue": STR, "mode": STR, "controller": STR, "desired": INT, "reason": STR,
        "paused": BOOL, "paused_by": maybe(STR), "signals": ref("Signals"),
        "slo": maybe(ref("Slo")), "cost": maybe(ref("Cost")),
        "nodes": arr(obj({"node": STR, "share": INT})), "group": maybe(STR), "lags": arr(INT),
        "hot_keys": arr(HOT_KEY), "window": maybe({"type": "object"})}),
    "Node": obj({"app": STR, "node": STR, "host": STR, "pid": INT, "started": TIME,
                 "seen": TIME, "functions": {"type": "object", "additionalProperties": INT},
                 "in_flight": INT}),
    "Overview": obj({"app": STR, "node": STR, "time": TIME, "token_required": BOOL,
                     "functions": arr(ref("Function")), "nodes": arr(ref("Node"))}),
    "History": obj({"t": arr(NUM), "series": {
        "type": "object", "additionalProperties": arr(maybe(NUM))}}),
    "Scale": obj({"desiredUnits": INT, "depth": INT, "lag": INT}),
    "QueueStats": QUEUE_STATS,
    "Topic": obj({"topic": STR, "published": INT, "retention_s": NUM, "subscriptions": arr(obj({
        "name": STR, "queue": STR, "subject": maybe(STR), "filter": maybe(STR), "matched": INT,
        "filtered": INT, "stats": QUEUE_STATS}))}),
    "Stream": obj({"stream": STR, "partitions": INT, "retention_s": NUM, "kept": arr(INT),
                   "groups": arr(obj({"group": STR, "lags": arr(INT),
                                      "nodes": arr(maybe(STR))})),
                   "hot_keys": arr(HOT_KEY)}),
    "Source": obj({"app": STR, "source": STR, "kind": STR, "node": STR, "target": STR,
                   "received": INT, "emitted": INT, "duplicates": INT, "errors": INT,
                   "rejected": {"type": "object", "additionalProperties": INT},
                   "lag_s": maybe(NUM), "pending": INT, "last_error": maybe(STR),
                   "detail": {"type": "object"}, "at": TIME}),
    "Schedule": obj({"name": STR, "to": STR, "detail": {"type": "object"},
                     "last": maybe(obj({"fire_time": TIME, "fired_at": TIME, "event_id": STR,
                                        "node": STR, "outcome": STR}))}),
    "DeadLetterQueue": obj({**QUEUE_STATS["properties"], "source_queue": maybe(STR)}),
    "DeadLetters": obj({"queue": STR, "total": INT, "letters": arr(obj({
        "id": maybe(STR), "reason": maybe(STR), "error": maybe(STR), "attempts": maybe(INT),
        "dead_lettered_at": maybe(NUM), "source_queue": maybe(STR), "payload": ANY}))}),
    "Redriven": obj({"moved": INT, "missing": arr(STR), "queue": STR}),
    "SagaSummary": obj({"ref": STR, "saga": STR, "id": STR, "state": STR, "created": TIME,
                        "updated": TIME, "step": maybe(STR), "steps": INT}),
    "Saga": obj({"ref": STR, "saga": STR, "id": STR, "state": STR, "data": ANY,
                 "steps": arr(obj({"name": STR, "state": STR})), "created": TIME,
                 "updated": TIME, "history": arr(obj({"at": TIME, "actor": STR, "event": STR,
                                                      "state": STR}))}),
    "Replay": obj({"stream": STR, "group": STR, "id": STR, "start": maybe(TIME),
                   "end": maybe(TIME), "positions": INT}),
    "Paused": obj({"function": STR, "paused": BOOL}),
    "SagaChange": obj({"by": {"type": "string", "minLength": 1, "maxLength": 200}},
                      {"reason": {"type": "string", "maxLength": 2000},
                       "step": {"type": "string", "maxLength": 200}}),
    "SagaChangeWhy": obj({"by": {"type": "string", "minLength": 1, "maxLength": 200},
                          "reason": {"type": "string", "minLength": 1, "maxLength": 2000}},
                         {"step": {"type": "string", "maxLength": 200}}),
    "Redrive": obj({}, {"ids": {"type": "array", "items": STR, "maxItems": 1000},
                        "max": {"type": "integer", "minimum": 1}}),
    "Pause": obj({}, {"by": {"type": "string", "maxLength": 200},
                      "reason": {"type": "string", "maxLength": 2000}}),
}
