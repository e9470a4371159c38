"""``swell run APP`` and ``swell demo``: an app run until Ctrl-C, and the bundled burst."""

from __future__ import annotations

import gc
import logging

import click

from swell.brokers.url import default_broker_url
from swell.cli.base import broker_option, command, console, err_console
from swell.core.config import seconds
from swell.core.errors import ConfigError
from swell.runtime.loader import load_app


@click.command()
@click.argument("app_path", metavar="APP")
@broker_option
@click.option("--grace", default="30s", show_default=True,
              help="How long in-flight work may finish after SIGINT/SIGTERM.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--metrics", "metrics_at", default="127.0.0.1:9464", show_default=True,
              envvar="SWELL_METRICS", metavar="HOST:PORT",
              help="Serve Prometheus /metrics here ('off' to disable); a port that is taken is "
                   "an error.")
@click.option("--metrics-best-effort", is_flag=True, envvar="SWELL_METRICS_BEST_EFFORT",
              help="If the metrics port is taken, warn and run without metrics.")
@command
async def run(app_path: str, broker_url: str | None, grace: str, log_level: str,
              metrics_at: str, metrics_best_effort: bool) -> None:
    """Run APP (a file.py or a pkg.module[:attribute]) until Ctrl-C."""
    from swell.runtime.runtime import Runtime

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = load_app(app_path)
    grace_s = seconds(grace, name="--grace")
    metrics = host_port(metrics_at)
    url = broker_url or default_broker_url()
    runtime = Runtime(app, url)
    if metrics is not None:
        from swell.observe.prometheus import serve_metrics
        from swell.runtime.status import Snapshots

        try:
            serve_metrics(Snapshots(runtime).latest, *metrics, best_effort=metrics_best_effort)
        except ConfigError:
            await runtime.broker.close()  # nothing else was started
            raise

    def started() -> None:
        # what is alive now (modules, the app, the runtime) stays: keep the collector off it, so
        # a full collection does not walk it again and again under load
        gc.freeze()
        err_console.print(f"swell: running [bold]{app.name}[/] ({len(app.functions)} function(s)) "
                          f"on {url} as node {runtime.node}", highlight=False)

    await runtime.serve(grace_s, on_started=started)


def host_port(value: str) -> tuple[str, int] | None:
    """``--metrics HOST:PORT`` (``off``: ``None``)."""
    if value.strip().lower() in ("off", "none", "0", ""):
        return None
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics {value!r}: use HOST:PORT (like 127.0.0.1:9464) or 'off'")
    return host or "127.0.0.1", int(port)


@click.command()
@click.option("--events", default=10_000, show_default=True, help="Size of the burst.")
@broker_option
@command
async def demo(events: int, broker_url: str | None) -> None:
    """A burst of orders absorbed and drained, with live counts."""
    from swell.demo import run_demo

    await run_demo(broker_url or default_broker_url(), events, console)
