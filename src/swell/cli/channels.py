"""``swell queues``, ``swell topics`` and ``swell streams``: what waits where."""

from __future__ import annotations

import click
from rich.table import Table

from swell.cli.base import broker_option, command, console, show, with_broker
from swell.render import age, hot_keys, stats_table
from swell.runtime.status import StreamView, read_queues, read_streams, read_topics


@click.command()
@broker_option
@command
async def queues(broker_url: str | None) -> None:
    """Depth, in flight, delayed and age of oldest, per queue."""
    rows = await with_broker(broker_url, read_queues)
    if not rows:
        console.print("no queues yet: run an app (swell run APP) or the demo (swell demo)")
        return
    show(stats_table(rows))


@click.command()
@broker_option
@command
async def topics(broker_url: str | None) -> None:
    """Topics, their subscriptions with subject and filter, depth, matched and filtered out."""
    rows = await with_broker(broker_url, read_topics)
    if not rows:
        console.print("no topics yet: declare one with app.topic(NAME) and run the app")
        return
    table = Table(title="topics", title_justify="left", header_style="bold")
    for col in ("topic", "sent", "subscription", "subject", "ready", "in flight", "matched",
                "filtered"):
        table.add_column(col, justify="left" if col in ("topic", "subscription", "subject")
                         else "right")
    filters = []
    for view in rows:
        t = view.topic
        if not view.subscriptions:
            table.add_row(t.spec.name, f"{t.published:,}", "[dim](none)[/]", "", "", "", "", "")
        for i, (sub, st) in enumerate(view.subscriptions):
            first = i == 0
            table.add_row(t.spec.name if first else "", f"{t.published:,}" if first else "",
                          sub.spec.name, sub.spec.subject or "[dim]all[/]", f"{st.depth:,}",
                          f"{st.in_flight:,}", f"{sub.matched:,}", f"{sub.filtered:,}")
            if sub.spec.filter:
                filters.append(f"[bold]{t.spec.name}.{sub.spec.name}[/] filter: {sub.spec.filter}")
    show(table)
    for line in filters:
        console.print(line, highlight=False, soft_wrap=True)


@click.command()
@broker_option
@command
async def streams(broker_url: str | None) -> None:
    """Streams, their partitions and groups: lag per partition, who works it, and hot keys."""
    rows = await with_broker(broker_url, read_streams)
    if not rows:
        console.print("no streams yet: declare one with app.stream(NAME) and run the app")
        return
    for view in rows:
        show(_stream_table(view))
        if view.hot_keys:
            console.print("hot keys (recent rate): " + hot_keys(view.hot_keys[:5]),
                          highlight=False)


def _stream_table(view: StreamView) -> Table:
    spec = view.spec
    table = Table(title=f"{spec.name}: {spec.partitions} partitions, {sum(view.kept):,} events "
                        f"kept, retention {age(spec.retention_s)}", title_justify="left",
                  header_style="bold")
    table.add_column("partition", justify="right")
    table.add_column("kept", justify="right")
    for g in view.groups:
        table.add_column(f"{g.group} lag", justify="right")
        table.add_column(f"{g.group} node", justify="left")
    for p in range(spec.partitions):
        cells = [str(p), f"{view.kept[p]:,}"]
        for g in view.groups:
            cells += [f"{g.lags[p]:,}", g.nodes[p] or "-"]
        table.add_row(*cells)
    return table
