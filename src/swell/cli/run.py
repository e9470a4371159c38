"""``swell run APP`` and ``swell demo``: an app run until Ctrl-C, and the bundled burst."""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Literal

import click
from click.core import ParameterSource

from swell.brokers.url import default_broker_url
from swell.cli.base import broker_option, command, console, err_console
from swell.core import logs
from swell.core.config import seconds
from swell.core.errors import ConfigError, MissingDependency
from swell.core.logs import FORMATS
from swell.observe.tracing import EXPORTERS
from swell.runtime.loader import load_app
from swell.web.server import DEFAULT_HTTP, bind, host_port

if TYPE_CHECKING:
    from swell.runtime.runtime import Runtime
    from swell.web.server import HttpServer


GC_THRESHOLDS = (10_000, 20, 20)


@click.command()
@click.argument("app_path", metavar="APP")
@broker_option
@click.option("--grace", default="30s", show_default=True,
              help="How long in-flight work may finish after SIGINT/SIGTERM.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True,
              envvar="SWELL_LOG_FORMAT",
              help="json: one object a line, with the function, event id, attempt, correlation "
                   "id and trace id of the attempt it is about.")
@click.option("--trace", type=click.Choice(EXPORTERS), default=None, envvar="SWELL_TRACE",
              help="Export OpenTelemetry traces: over OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT, "
                   "localhost:4318 by default) or to the console. Without it, swell traces only "
                   "when the process has a TracerProvider set up.")
@click.option("--http", "http_at", default=DEFAULT_HTTP, show_default=True, envvar="SWELL_HTTP",
              metavar="HOST:PORT",
              help="Serve webhooks, /metrics, /healthz and /readyz here ('off' to disable); a "
                   "port that is taken is an error.")
@click.option("--metrics", "metrics_at", default=None, envvar="SWELL_METRICS", metavar="HOST:PORT",
              hidden=True, help="The old name of --http.")
@click.option("--http-best-effort", "--metrics-best-effort", "best_effort", is_flag=True,
              envvar="SWELL_HTTP_BEST_EFFORT",
              help="If the HTTP port is taken, warn and run without the server (refused when "
                   "the app has webhooks).")
@command
async def run(app_path: str, broker_url: str | None, grace: str, log_level: str,
              log_format: Literal["text", "json"], trace: str | None, http_at: str,
              metrics_at: str | None, best_effort: bool) -> None:
    """Run APP (a file.py or a pkg.module[:attribute]) until Ctrl-C."""
    from swell.runtime.runtime import Runtime

    logs.configure(log_level, log_format)
    app = load_app(app_path)
    if trace is not None:
        from swell.observe.tracing import setup

        setup(trace, app.name)
    grace_s = seconds(grace, name="--grace")
    # the old name counts only when said more loudly than --http (the command line over the
    # environment over the default)
    old = metrics_at is not None and _said("metrics_at") > _said("http_at")
    option = "--metrics" if old else "--http"
    address = host_port(metrics_at if old and metrics_at else http_at, option=option)
    hooks = [s.name for s in app.sources.values() if s.kind == "webhook"]
    if address is None and hooks:
        raise ConfigError(f"{app.name!r} has webhooks ({', '.join(hooks)}): they need the HTTP "
                          f"server; give {option} HOST:PORT rather than 'off'")
    if address is not None and not http_installed():
        if hooks:
            raise MissingDependency("starlette and uvicorn (for its webhooks)", "http")
        logging.getLogger("swell.http").warning(
            "no HTTP server (no /metrics, /healthz, /readyz): pip install 'swell[http]'")
        address = None
    sock = None
    if address is not None:
        try:
            sock = bind(*address, option=option)
        except ConfigError as exc:
            if not best_effort or hooks:
                raise
            logging.getLogger("swell.http").warning("%s (best effort: running without it)", exc)
    url = broker_url or default_broker_url()
    runtime = Runtime(app, url)
    server = None if sock is None else web_server(runtime, sock)

    async def started() -> None:
        if server is not None:
            await server.start()
        # what is alive now (modules, the app, the runtime) stays: keep the collector off it, so
        # a full collection does not walk it again and again under load; and collect the young
        # less often (each request or event allocates a few hundred objects, nearly all freed by
        # reference counting): webhooks at 1,000/s had a p99 of 15-20 ms with the default
        # thresholds (700, 10, 10), 7-11 ms with these (bench/webhooks.py)
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        http = "" if server is None else f", HTTP on {server.url}"
        err_console.print(f"swell: running [bold]{app.name}[/] ({len(app.functions)} function(s)) "
                          f"on {url} as node {runtime.node}{http}", highlight=False)

    async def stopping() -> None:
        if server is not None:
            await server.stop()  # no request is answered 202 once the broker may be closing

    await runtime.serve(grace_s, on_started=started, on_stopping=stopping)


def _said(param: str) -> int:
    """How loudly an option was given: 2 on the command line, 1 in the environment, else 0."""
    source = click.get_current_context().get_parameter_source(param)
    return {ParameterSource.COMMANDLINE: 2, ParameterSource.ENVIRONMENT: 1}.get(source, 0) \
        if source is not None else 0


def http_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("starlette", "uvicorn"))


def web_server(runtime: Runtime, sock: socket.socket) -> HttpServer:
    """The HTTP server of a runtime: its webhooks, its metrics, its health, the admin API and
    the dashboard. The admin token is ``SWELL_ADMIN_TOKEN``, else one made now and said once."""
    from swell.web.admin import runtime_server

    token = os.environ.get("SWELL_ADMIN_TOKEN", "").strip()
    if not token:
        token = secrets.token_urlsafe(24)
        err_console.print(f"swell: admin token {token}", highlight=False, soft_wrap=True)
    return runtime_server(runtime, sock, token)


@click.command()
@click.option("--events", default=10_000, show_default=True, help="Size of the burst.")
@broker_option
@command
async def demo(events: int, broker_url: str | None) -> None:
    """A burst of orders absorbed and drained, with live counts."""
    from swell.demo import run_demo

    await run_demo(broker_url or default_broker_url(), events, console)
