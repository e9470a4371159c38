"""The admin API of ``swell run`` under ``/api/v1`` (see docs in README "Operating it: admin
API"), and the dashboard's static page at ``/``.

One table, ``ROUTES``, makes both the routes and the OpenAPI document (``swell.web.openapi``).
Reads need no token: the server binds 127.0.0.1 unless told otherwise. Every POST needs
``Authorization: Bearer <token>``, compared in constant time; without it: 401, and nothing is
read or changed. A user's mistake is one JSON error ``{"error", "detail"}`` with a 4xx, never a
500. No CORS headers: a page of another origin cannot read the answers."""

from __future__ import annotations

import hmac
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from swell.core.errors import MissingDependency, SwellError
from swell.web import admin_actions as act
from swell.web import admin_reads as read
from swell.web.admin_base import Admin, ApiError, Call, Op, Param, redact
from swell.web.admin_schemas import ref
from swell.web.history import History
from swell.web.openapi import check, document

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from swell.runtime.runtime import Runtime
    from swell.web.server import HttpServer

__all__ = ["ROUTES", "STATIC", "Admin", "admin_routes", "openapi", "runtime_server"]

log = logging.getLogger("swell.http")

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 64 * 1024
V1 = "/api/v1"


def _arr(name: str) -> dict[str, Any]:
    return {"type": "array", "items": ref(name)}


FN = Param("name", "path", {"type": "string"}, "The function's name (as the app declares it).")
QUEUE = Param("queue", "path", {"type": "string"},
              "A queue (its dead-letter queue is meant) or a dead-letter queue.")
SAGA = Param("ref", "path", {"type": "string"},
             "NAME/ID (URL-encoded or not), or an ID only one saga has.", slashes=True)
SECONDS = Param("seconds", "query", {"type": "number", "minimum": 1, "maximum": 3600,
                                     "default": 3600}, "How far back.")
SINCE = Param("since", "query", {"type": "number"},
              "Only points after this (epoch seconds): a poll fetches only what is new.")
LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000,
                                 "default": 50}, "Show at most this many.")
SAGA_NAME = Param("saga", "query", {"type": "string"}, "Only the sagas of this name.")
STATE = Param("state", "query", {"type": "string"}, "Only the sagas in this state.")


async def _openapi(a: Admin, c: Call) -> dict[str, Any]:
    return openapi()


ROUTES: tuple[Op, ...] = (
    Op("GET", f"{V1}/openapi.json", _openapi, "openapi", "This document", "meta",
       {"type": "object"}),
    Op("GET", f"{V1}/overview", read.overview, "overview",
       "The app, its functions and nodes: one poll for the dashboard", "functions",
       ref("Overview")),
    Op("GET", f"{V1}/functions", read.functions, "functions",
       "Every function: signals, units, decision and why, SLO, cost", "functions",
       _arr("Function")),
    Op("GET", f"{V1}/functions/{{name}}", read.function, "function", "One function",
       "functions", ref("Function"), (FN,), errors=(404,)),
    Op("GET", f"{V1}/functions/{{name}}/history", read.function_history, "function_history",
       "A function's series over the last hour (a point every second)", "functions",
       ref("History"), (FN, SECONDS, SINCE), errors=(404,)),
    Op("GET", f"{V1}/functions/{{name}}/scale", read.function_scale, "function_scale",
       "The desired units, for KEDA's metrics-api scaler (valueLocation: desiredUnits)",
       "functions", ref("Scale"), (FN,), errors=(404,)),
    Op("POST", f"{V1}/functions/{{name}}/pause", act.function_pause, "function_pause",
       "Stop the function's intake on every node (in-flight work finishes)", "functions",
       ref("Paused"), (FN,), ref("Pause"), errors=(404,)),
    Op("POST", f"{V1}/functions/{{name}}/resume", act.function_resume, "function_resume",
       "Resume the function's intake", "functions", ref("Paused"), (FN,), ref("Pause"),
       errors=(404,)),
    Op("GET", f"{V1}/nodes", read.nodes, "nodes", "The live nodes: heartbeats and shares",
       "cluster", _arr("Node")),
    Op("GET", f"{V1}/queues", read.queues, "queues", "Every queue's stats", "cluster",
       _arr("QueueStats")),
    Op("GET", f"{V1}/topics", read.topics, "topics", "Topics and their subscriptions", "cluster",
       _arr("Topic")),
    Op("GET", f"{V1}/streams", read.streams, "streams",
       "Streams, consumer groups' lag per partition, hot keys", "cluster", _arr("Stream")),
    Op("GET", f"{V1}/sources", read.sources, "sources", "Trigger sources, per node", "cluster",
       _arr("Source")),
    Op("GET", f"{V1}/schedules", read.schedules, "schedules",
       "Schedules: next fire times and the last fire", "cluster", _arr("Schedule")),
    Op("GET", f"{V1}/replays", read.replays, "replays",
       "Replays (swell replay): their range and recorded progress", "cluster", _arr("Replay")),
    Op("GET", f"{V1}/dlq", read.dlq, "dlq", "Every dead-letter queue and its depth", "dlq",
       _arr("DeadLetterQueue")),
    Op("GET", f"{V1}/dlq/{{queue}}", read.dlq_letters, "dlq_letters",
       "A dead-letter queue's first letters: reason, error, attempts, payload", "dlq",
       ref("DeadLetters"), (QUEUE, LIMIT), errors=(404,)),
    Op("POST", f"{V1}/dlq/{{queue}}/redrive", act.dlq_redrive, "dlq_redrive",
       "Move dead letters back to their queue: ids (else at most max, else all)", "dlq",
       ref("Redriven"), (QUEUE,), ref("Redrive"), errors=(404, 409)),
    Op("GET", f"{V1}/sagas", read.sagas, "sagas", "Sagas, the most recently changed first",
       "sagas", _arr("SagaSummary"), (SAGA_NAME, STATE)),
    Op("GET", f"{V1}/sagas/{{ref}}", read.saga, "saga", "A saga's log: steps and audit entries",
       "sagas", ref("Saga"), (SAGA,), errors=(404,)),
    *(Op("POST", f"{V1}/sagas/{{ref}}/{action}", act.saga_action(action), f"saga_{action}",
         f"{action.capitalize()} a saga, with who and why (audited in its log)", "sagas",
         ref("Saga"), (SAGA,), ref("SagaChangeWhy" if action in ("skip", "abort")
                                   else "SagaChange"), errors=(404, 409))
      for action in act.SAGA_ACTIONS),
)


_DOCUMENT: dict[str, Any] = {}


def openapi() -> dict[str, Any]:
    if not _DOCUMENT:
        from swell import __version__

        _DOCUMENT.update(document(ROUTES, version=__version__))
    return _DOCUMENT


# -- serving ---------------------------------------------------------------------------------------
def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    from starlette.responses import Response

    return Response(msgspec.json.encode(body), status, headers, media_type="application/json")


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": code, "detail": detail}, status, headers)


def _authorized(admin: Admin, request: Request) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return (scheme.lower() == "bearer" and bool(admin.token)
            and hmac.compare_digest(given.strip().encode(), admin.token.encode()))


def _query(op: Op, request: Request) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in op.params:
        raw = request.query_params.get(p.name) if p.where == "query" else None
        if raw is None:
            continue
        kind = p.schema.get("type")
        try:
            value: Any = int(raw) if kind == "integer" else float(raw) if kind == "number" else raw
        except ValueError:
            raise ApiError(400, "bad_request", f"{p.name} must be {kind}, not {raw!r}") from None
        if value != value:  # NaN
            raise ApiError(400, "bad_request", f"{p.name} must be a number, not {raw!r}")
        if why := check(p.schema, value, p.name):
            raise ApiError(400, "bad_request", why)
        hi = p.schema.get("maximum")
        if hi is not None and value > hi:
            raise ApiError(400, "bad_request", f"{p.name} must be at most {hi}")
        out[p.name] = value
    return out


async def _body(op: Op, request: Request) -> dict[str, Any]:
    if op.body is None:
        return {}
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise ApiError(400, "bad_request", f"the body is over {MAX_BODY:,} bytes")
    try:
        body = msgspec.json.decode(raw) if raw.strip() else {}
    except msgspec.DecodeError:
        raise ApiError(400, "bad_request", "the body is not JSON") from None
    if why := check(op.body, body):
        raise ApiError(400, "bad_request", why)
    return body


def _endpoint(admin: Admin, op: Op) -> Callable[[Request], Any]:
    async def handle(request: Request) -> Response:
        if not admin.host_allowed(request.headers.get("host", "")):
            return error(403, "forbidden_host", "this server answers only requests to a loopback "
                         "host (127.0.0.1, localhost, [::1]); serve it on another address with "
                         "--http HOST:PORT")
        if op.changes and not _authorized(admin, request):
            return error(401, "unauthorized", "this needs the admin token: Authorization: Bearer "
                         "<SWELL_ADMIN_TOKEN, or the token swell run printed at start>",
                         {"WWW-Authenticate": "Bearer"})
        try:
            call = Call(dict(request.path_params), _query(op, request), await _body(op, request))
            return _json(await op.handler(admin, call))
        except ApiError as exc:
            return error(exc.status, exc.code, exc.detail)
        except SwellError as exc:  # the broker out of reach: not the caller's fault, nor ours
            why = redact(str(exc))  # (a broker's error may name its URL, password and all)
            log.warning("%s %s: %s", op.method, request.url.path, why)
            return error(503, "unavailable", why)
        except Exception:  # swell's own fault: said plainly, its traceback in the log
            log.exception("%s %s failed", op.method, request.url.path)
            return error(500, "internal", "the server failed to answer; its log says why")

    handle.__name__ = op.op_id
    return handle


def admin_routes(admin: Admin) -> list[Any]:
    """The API's routes, and the dashboard's page and files."""
    try:
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles
    except ImportError:
        raise MissingDependency("starlette", "http") from None

    async def page(request: Request) -> Response:
        from starlette.responses import HTMLResponse

        if not admin.host_allowed(request.headers.get("host", "")):
            return error(403, "forbidden_host", "this server answers only a loopback host")

        index = STATIC / "index.html"
        if not index.is_file():
            return error(404, "not_found", "no dashboard in this installation of swell")
        return HTMLResponse(index.read_text(), headers={"X-Content-Type-Options": "nosniff",
                                                        "Cache-Control": "no-cache"})

    routes: list[Any] = [Route(op.route, _endpoint(admin, op), methods=[op.method],
                               name=op.op_id) for op in ROUTES]
    routes.append(Route("/", page, methods=["GET"]))
    if STATIC.is_dir():  # (else /static/... is the app's JSON 404, not a StaticFiles error)
        routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    return routes


def runtime_server(runtime: Runtime, sock: socket.socket, token: str) -> HttpServer:
    """The HTTP server of a runtime: its webhooks, metrics, health, the admin API and the
    dashboard (what ``swell run`` serves)."""
    from swell.runtime.status import snapshot_of
    from swell.triggers.webhook import Webhook
    from swell.web.server import HttpServer, routes_app

    def snapshot() -> Any:
        return snapshot_of(runtime)

    history = History(snapshot, runtime.clock)
    host = sock.getsockname()[0]
    admin = Admin(runtime, history, token, local_only=host == "::1" or host.startswith("127."))
    hooks = [s for s in runtime.app.sources.values() if isinstance(s, Webhook)]
    app = routes_app(hooks, snapshot, lambda: runtime.running, extra=admin_routes(admin))
    return HttpServer(app, sock, services=[history])
