"""``swell cost``: what each running function and workload ran and what it cost, summed over the
nodes' status records (each node prices what it ran since it started)."""

from __future__ import annotations

import math

import click
from rich.table import Table

from swell.cli.base import broker_option, command, console, show, with_broker
from swell.core.cost import Cost
from swell.runtime.status import FunctionView, read_functions

__all__ = ["cost", "cost_tables", "dollars"]


def dollars(x: float | None) -> str:
    """Dollars to three significant digits: ``$1,234``, ``$12.35``, ``$0.0123``, ``$0.0000460``."""
    if x is None:
        return "-"
    if x >= 100:
        return f"${x:,.0f}"
    if x >= 1:
        return f"${x:,.2f}"
    if x < 1e-9:
        return "$0"
    decimals = 2 - math.floor(math.log10(x))
    return f"${x:.{decimals}f}"


def _units(s: float) -> str:
    return f"{s:,.0f}" if s >= 100 else f"{s:,.1f}"


def _costs(rows: list[FunctionView]) -> list[tuple[FunctionView, Cost]]:
    """Each function's cost over its nodes (those whose records carry one)."""
    out = []
    for f in rows:
        parts = [n.cost for n in f.nodes if n.cost is not None]
        if parts:
            total = parts[0]
            for c in parts[1:]:
                total = total + c
            out.append((f, total))
    return out


def _row(c: Cost) -> list[str]:
    return [_units(c.unit_s), f"{c.invocations:,}", dollars(c.dollars),
            dollars(c.per_1000_events()), dollars(c.dollars_per_h)]


_COLUMNS = ("unit-s", "calls", "cost", "per 1k", "per hour")


def cost_tables(rows: list[FunctionView]) -> tuple[Table, Table, list[str]] | None:
    """The functions' and the workloads' tables, and a line per budget; ``None`` if no record
    carries a cost."""
    costs = _costs(rows)
    if not costs:
        return None
    apps = {f.app for f, _ in costs}
    one = len(apps) == 1  # then a function's name alone, the app's in the title
    functions = Table(title=f"cost per function{f' of {next(iter(apps))}' if one else ''} (since "
                      "each node started)", title_justify="left", header_style="bold")
    workloads = Table(title="cost per workload", title_justify="left", header_style="bold")
    for table, first in ((functions, ("function", "workload")), (workloads, ("workload", "fns"))):
        for col in (*first, *_COLUMNS):
            table.add_column(col, justify="left" if col in ("function", "workload") else "right")
    by_workload: dict[str, list[Cost]] = {}
    budgets = []
    for f, c in costs:
        name = f.function if one else f.name
        functions.add_row(name, c.workload, *_row(c))
        by_workload.setdefault(c.workload, []).append(c)
        if c.budget_per_h is not None:
            capped = "capped at " if "by budget" in f.reason else ""
            budgets.append(f"{name}: budget {dollars(c.budget_per_h)}/h, spending "
                           f"{dollars(c.dollars_per_h)}/h, {capped}{f.desired} unit(s)")
    for name, parts in sorted(by_workload.items()):
        total = parts[0]
        for c in parts[1:]:
            total = total + c
        workloads.add_row(name, f"{len(parts)}", *_row(total))
    return functions, workloads, budgets


@click.command()
@broker_option
@command
async def cost(broker_url: str | None) -> None:
    """Per running function and per workload: unit-seconds held (inline slots, process
    instances from start to reap), invocations, cost so far, per 1,000 events finished and per
    hour at the recent rate; priced by [tool.swell.cost] (see the README)."""
    tables = cost_tables(await with_broker(broker_url, read_functions))
    if tables is None:
        console.print("no function is running on this broker (start one with: swell run APP)")
        return
    functions, workloads, budgets = tables
    show(functions)
    for line in budgets:
        console.print(f"  {line}", highlight=False)
    show(workloads)
