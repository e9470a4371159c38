"""One HTTP server for ``swell run`` (Starlette on uvicorn, the ``swell[http]`` extra), on the
runtime's own event loop: webhook routes, ``/metrics`` (prometheus-client's ASGI app),
``/healthz`` (the process answers) and ``/readyz`` (the runtime runs and takes work).

The socket is bound before anything starts, so a taken port is one clear error, not a server that
half-starts; signals stay the runtime's (uvicorn's own handlers are not installed)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from swell.core.errors import ConfigError, MissingDependency
from swell.observe.prometheus import Latest, metrics_app
from swell.triggers.webhook import Reply, Request, Webhook

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request as HttpRequest
    from starlette.responses import Response

__all__ = ["HttpServer", "Service", "bind", "host_port", "routes_app"]

log = logging.getLogger("swell.http")

DEFAULT_HTTP = "127.0.0.1:9464"
MAX_CONNECTIONS = 1024


def host_port(value: str, *, option: str = "--http") -> tuple[str, int] | None:
    """``HOST:PORT`` (``off``: ``None``); a bare ``:PORT`` binds 127.0.0.1."""
    if value.strip().lower() in ("off", "none", "0", ""):
        return None
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{option} {value!r}: use HOST:PORT (like 127.0.0.1:9464) or 'off'")
    return host.strip("[]") or "127.0.0.1", int(port)


def bind(host: str, port: int, *, option: str = "--http") -> socket.socket:
    """A listening socket on ``host:port``; a taken port (or an address not here) is a
    ``ConfigError``: a sender or scraper pointed at it would reach another process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said outright: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say
    # it, and with Nagle a reply's body waits ~40 ms for the ACK of its headers
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why += " (another process has the port)"
        raise ConfigError(f"cannot serve HTTP on {host}:{port}: {why}; choose another address "
                          f"with {option} HOST:PORT, or turn the server off with {option} off"
                          ) from None
    sock.setblocking(False)
    return sock


def routes_app(webhooks: Sequence[Webhook], latest: Latest,
               ready: Callable[[], bool], extra: Sequence[Any] = ()) -> Starlette:
    """The ASGI app: every webhook's route, ``/metrics``, ``/healthz``, ``/readyz``, and the
    ``extra`` routes (the admin API and dashboard: ``swell.web.admin``)."""
    try:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse
        from starlette.routing import Route
    except ImportError:
        raise MissingDependency("starlette", "http") from None

    def endpoint(hook: Webhook) -> Callable[[HttpRequest], Any]:
        async def receive(request: HttpRequest) -> Response:
            reply = hook.admit()  # (over the rate: refused before a byte of the body is read)
            if reply is None:
                body = await _read(request, hook.max_body)
                reply = await hook.accept(Request(
                    {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]},
                    body))
            return _json(reply)

        return receive

    async def healthz(_: HttpRequest) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(_: HttpRequest) -> Response:
        ok = ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    def _json(reply: Reply) -> Response:
        return JSONResponse(reply.body, reply.status, headers=reply.headers)

    routes: list[Any] = [Route(h.path, endpoint(h), methods=["POST"], name=h.name)
                         for h in webhooks]
    routes += [Route("/healthz", healthz), Route("/readyz", readyz),
               Route("/metrics", _Asgi(metrics_app(latest)), methods=["GET"]), *extra]

    async def http_error(_: HttpRequest, exc: Exception) -> Response:
        """A path or method not served: JSON like every other error."""
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        return JSONResponse({"error": "not_found" if code == 404 else "method_not_allowed"
                             if code == 405 else "error", "detail": f"{exc}"}, code,
                            headers=getattr(exc, "headers", None))

    return Starlette(routes=routes, exception_handlers={404: http_error, 405: http_error})


async def _read(request: HttpRequest, limit: int) -> bytes:
    """The body, but never more than ``limit + 1`` bytes of it (over the limit: a 413, so the
    rest is not worth reading)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return b"\0" * (limit + 1)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


class _Asgi:
    """An ASGI app as a route's endpoint (a plain function would be taken for a request handler;
    a mount would answer ``/metrics`` with a redirect to ``/metrics/``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class Service(Protocol):
    """Work on the loop that lives as long as the server."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class HttpServer:
    """uvicorn serving ``app`` on an already bound socket, as a task on the running loop."""

    def __init__(self, app: Starlette, sock: socket.socket,
                 services: Sequence[Service] = ()) -> None:
        try:
            import uvicorn
        except ImportError:
            raise MissingDependency("uvicorn", "http") from None

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:  # the runtime owns SIGINT/SIGTERM
                yield

        # limit_concurrency: past it, 503 at once (a body is read up to its route's max_body,
        # so this bounds the memory requests can take)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                server_header=False, timeout_graceful_shutdown=5,
                                limit_concurrency=MAX_CONNECTIONS)
        self._server = _Server(config)
        self._sock = sock
        self._services = services  # (started and stopped with it: the dashboard's history)
        self._task: asyncio.Task[None] | None = None
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]),
                                         name="swell:http")
        # uvicorn has a flag, not an event, for "serving"; the socket is bound: a few ms
        while not self._server.started and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        if self._task.done():
            self._task.result()  # (raises what stopped it)
        for service in self._services:
            service.start()
        log.info("HTTP on %s (/metrics, /healthz, /readyz)", self.url)

    async def stop(self) -> None:
        """Stop taking requests; those being answered finish (a few seconds at most)."""
        if self._task is None:
            return
        self._server.should_exit = True
        for service in self._services:
            await service.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._sock.close()
