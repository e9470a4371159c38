"""``swell status`` and ``swell nodes``: the running functions and the nodes that run them."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.console import Group
from rich.table import Table

from swell.brokers.base import Broker
from swell.cli.base import broker_option, command, console, show, with_broker
from swell.render import age, hot_keys, natural_width, row_lines
from swell.runtime.sources import read_sources
from swell.runtime.status import FunctionView, read_functions, read_nodes
from swell.triggers.base import SourceStatus


def _f(x: float | None, fmt: str = "{:,.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:,.1f} ms"


@click.command()
@broker_option
@command
async def status(broker_url: str | None) -> None:
    """Per running function: its signals and its controller's decision, and why; per trigger
    source: what it received, stored and refused, and how far behind it is."""
    rows, sources = await with_broker(broker_url, _read)
    if sources:
        show(_sources(sources))
        for st in sources:
            for said in (_state(st), st.last_error):
                if said:
                    console.print(f"  [dim]{st.source} on {st.node}:[/] {said}", highlight=False)
    if not rows:
        if not sources:
            console.print("no function is running on this broker (start one with: swell run APP)")
        return
    table = _table(rows)
    wide = natural_width(table) <= console.width  # else each function's signals in its block
    if wide:
        show(table)
    for i, f in enumerate(rows):
        cold = f.signals.cold_starts
        split = ", ".join(f"{n.node} {n.share}" + (" (leads)" if n.leads else "") for n in f.nodes)
        console.print(f"[bold]{f.name}[/] ({f.mode}, {f.controller}"
                      f"{f', {cold} cold starts' if cold else ''}): {f.desired} unit(s) — "
                      f"{f.reason}", highlight=False)
        if not wide:
            console.print(Group(*row_lines(table, i, console.width)), highlight=False)
        console.print(f"  [dim]on {len(f.nodes)} node(s): {split}[/]", highlight=False)
        if f.group:
            parts = "; ".join(f"{n.node} {list(n.partitions)}" for n in f.nodes)
            console.print(f"  group {f.group}: lag per partition {list(f.lags)}; partitions: "
                          f"{parts}", highlight=False)
            hot = f.hot_keys()
            if hot:
                console.print("  hot keys: " + hot_keys(hot), highlight=False)
        if f.window:
            w = f.window
            mark = "-" if w["watermark"] is None else datetime.fromtimestamp(
                w["watermark"], UTC).strftime("%H:%M:%S.%f")[:-3]
            console.print(f"  windows: watermark {mark} (behind by {age(w['delay_s'] or 0.0)}), "
                          f"{w['open_windows']:,} open, late {w['late_accepted']:,} accepted / "
                          f"{w['late_dropped']:,} dropped, state {w['state_bytes']:,} B",
                          highlight=False)


async def _read(broker: Broker) -> tuple[list[FunctionView], list[SourceStatus]]:
    return await read_functions(broker), await read_sources(broker)


def _state(st: SourceStatus) -> str | None:
    """What a source's node says of its connection and backlog, when there is something to say:
    a broker out of reach, a node standing by, a change stream behind, events held."""
    d, parts = st.detail, []
    if d.get("connected") is False:
        parts.append("disconnected")
    if d.get("standby") is True or d.get("state") == "standby":
        parts.append("standing by (another node reads)")
    adopted = d.get("adopted")
    if isinstance(adopted, list) and adopted:
        parts.append("also draining " + ", ".join(str(a.get("client_id")) for a in adopted
                                                  if isinstance(a, dict))
                     + " (adopted: their node is gone)")
    behind = d.get("lag_bytes")
    if isinstance(behind, int) and behind > 0:
        parts.append(f"{behind:,} B of log behind")
    if st.pending:
        parts.append(f"{st.pending:,} waiting to be stored")
    return ", ".join(parts) or None


def _sources(statuses: list[SourceStatus]) -> Table:
    """One row per source, its nodes' counts summed (its lag the worst of theirs)."""
    merged: dict[tuple[str, str], list[SourceStatus]] = {}
    for st in statuses:
        merged.setdefault((st.app, st.source), []).append(st)
    table = Table(title="sources", title_justify="left", header_style="bold")
    for col in ("source", "kind", "to", "seen", "stored", "dup", "refused", "errors", "lag",
                "nodes"):
        table.add_column(col, justify="left" if col in ("source", "kind", "to") else "right")
    for (_, name), on in sorted(merged.items()):
        refused: dict[str, int] = {}
        for st in on:
            for reason, n in st.rejected.items():
                refused[reason] = refused.get(reason, 0) + n
        lags = [st.lag_s for st in on if st.lag_s is not None]
        table.add_row(name, on[0].kind, on[0].target, f"{sum(st.received for st in on):,}",
                      f"{sum(st.emitted for st in on):,}", f"{sum(st.duplicates for st in on):,}",
                      " ".join(f"{r} {n}" for r, n in sorted(refused.items())) or "0",
                      f"{sum(st.errors for st in on):,}", _ms(max(lags)) if lags else "-",
                      f"{len(on)}")
    return table


def _table(rows: list[FunctionView]) -> Table:
    table = Table(title="functions", title_justify="left", header_style="bold")
    for col in ("function", "ready", "in flight", "oldest", "in/s", "out/s", "p99", "errors",
                "throttled", "units", "nodes"):
        table.add_column(col, justify="left" if col == "function" else "right")
    for f in rows:
        s = f.signals
        ready = _f(s.depth, "{:,}") + (f" +{s.delayed:,}" if s.delayed else "")
        units = f"{s.ready}" + (f"+{s.starting}" if s.starting else "")
        table.add_row(
            f.name, ready, f"{s.in_flight:,}", age(s.oldest_age_s or 0.0), _f(s.arrival_rate),
            _f(s.completion_rate), _ms(s.service_p99_s), f"{s.error_rate:.1%}",
            f"{s.throttle_rate:.1%}", units, f"{len(f.nodes)}")
    return table


@click.command()
@broker_option
@command
async def nodes(broker_url: str | None) -> None:
    """The live runtime nodes on this broker: their heartbeats and their share of each function."""
    rows = await with_broker(broker_url, read_nodes)
    if not rows:
        console.print("no node is running on this broker (start one with: swell run APP)")
        return
    now = datetime.now(UTC).timestamp()
    table = Table(title=f"nodes: {len(rows)}", title_justify="left", header_style="bold")
    for col in ("node", "app", "host", "pid", "up", "last beat", "in flight", "units"):
        table.add_column(col, justify="left" if col in ("node", "app", "host", "units") else "right")
    for n in rows:
        units = ", ".join(f"{fn} {k}" for fn, k in n.functions.items())
        table.add_row(n.node, n.app, n.host, str(n.pid), age(now - n.started),
                      f"{max(0.0, now - n.seen):.1f}s ago", f"{n.in_flight:,}", units)
    show(table)
