"""``swell slo``: each function's objectives, error budget left, burn rates and alerts, from the
counts the runtime nodes keep in the broker; ``swell slo rules``: the same alerts as Prometheus
alerting rules."""

from __future__ import annotations

import sys
import time

import click
from rich.table import Table

from swell.cli.base import broker_option, command, console, show, with_broker
from swell.core.errors import ConfigError
from swell.core.slo import SLO, WINDOWS_S, ObjectiveReport, window_label
from swell.observe.slo import rules_yaml
from swell.runtime.loader import find_app, load_app
from swell.runtime.slo import FunctionSlo, read_slos

NONE_YET = ("no function with an SLO has counted events on this broker (declare one with "
            "@app.function(..., slo=SLO(...)) and run it: swell run APP)")


@click.group(invoke_without_command=True)
@broker_option
@click.pass_context
def slo(ctx: click.Context, broker_url: str | None) -> None:
    """Per function with an SLO: each objective and its target, the SLI over the SLO's window,
    the error budget left, the burn rate over each alert window and the alerts firing."""
    if ctx.invoked_subcommand is None:
        _show(broker_url=broker_url)


@command
async def _show(broker_url: str | None) -> None:
    rows = await with_broker(broker_url, lambda b: read_slos(b, now=time.time()))
    if not rows:
        console.print(NONE_YET)
        return
    show(objectives_table(rows))
    show(burn_table(rows))


def objectives_table(rows: list[FunctionSlo]) -> Table:
    table = Table(title="SLOs: SLI and error budget left over each one's window; alerts firing "
                  "(page: 1h/5m, 6h/30m; ticket: 3d/6h)", title_justify="left",
                  header_style="bold")
    for col in ("function", "objective", "target", "SLI", "budget", "firing"):
        table.add_column(col, justify="left" if col in ("function", "objective", "firing")
                         else "right", overflow="fold" if col == "firing" else "ellipsis")
    for f in rows:
        for r in f.objectives:
            table.add_row(f"{f.app}.{f.function}", _objective(r, f.slo),
                          f"{_pct(r.target)} {window_label(f.slo.window_s)}",
                          "-" if r.sli is None else _pct(r.sli), _pct(r.budget_left),
                          " ".join(a.name for a in r.firing) or "-")
    return table


def burn_table(rows: list[FunctionSlo]) -> Table:
    table = Table(title="burn rates (error ratio / budget; an alert fires when both of its "
                  "windows exceed its factor: 1h+5m 14.4x, 6h+30m 6x, 3d+6h 1x)",
                  title_justify="left", header_style="bold")
    table.add_column("function")
    table.add_column("objective")
    for w in WINDOWS_S:
        table.add_column(window_label(w), justify="right")
    for f in rows:
        for r in f.objectives:
            table.add_row(f"{f.app}.{f.function}", r.objective,
                          *(f"{rate:,.1f}x" for _, rate in r.burn_rates))
    return table


def _objective(r: ObjectiveReport, s: SLO) -> str:
    if r.objective == "success":
        return "success"
    return f"latency {s.latency_s:g}s" + (" (event time)" if s.measure_from == "event_time"
                                          else "")


def _pct(x: float) -> str:
    return f"{x * 100:.5g}%"


@slo.command()
@click.argument("app_path", metavar="[APP]", required=False)
@broker_option
@command
async def rules(app_path: str | None, broker_url: str | None) -> None:
    """The burn-rate alerts as Prometheus rules.

    Prints YAML for Prometheus's rule_files, over the metric swell_slo_events_total, for the SLOs
    of APP (a file.py or pkg.module[:attribute]; else SWELL_APP or pyproject's [tool.swell] app;
    else those the broker's records keep): swell slo rules APP > alerts.yaml"""
    target = find_app(app_path)
    if target is not None:
        app = load_app(target)
        slos = [(app.name, f.name, f.slo) for f in app.functions.values() if f.slo is not None]
        if not slos:
            raise ConfigError(f"no function of app {app.name!r} declares an SLO "
                              f"(@app.function(..., slo=SLO(...)))")
    else:
        found = await with_broker(broker_url, lambda b: read_slos(b, now=time.time()))
        if not found:
            raise ConfigError(f"no APP given, and {NONE_YET}")
        slos = [(f.app, f.function, f.slo) for f in found]
    sys.stdout.write(rules_yaml(slos))
