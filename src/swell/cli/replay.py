"""``swell replay``: a consumer group's handler run again over a time range of its stream."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from swell.brokers.url import open_broker
from swell.cli.base import broker_option, command, err_console, show
from swell.core.config import seconds
from swell.core.errors import ConfigError
from swell.render import when
from swell.runtime.loader import NO_APP, find_app, load_app


@click.command()
@click.argument("stream")
@click.option("--group", required=True, help="The consumer group whose handler is replayed.")
@click.option("--from", "start", required=True, metavar="TIME",
              help="ISO 8601 (UTC unless it says otherwise), epoch seconds, or a duration ago (2h).")
@click.option("--to", "end", default="0s", show_default=True, metavar="TIME", help="End of the range.")
@click.option("--slice", "slice_", default="1h", show_default=True, help="Length of a time slice.")
@click.option("--concurrency", default=2, show_default=True, help="Slices run at once.")
@click.option("--sink", metavar="TOPIC", help="Publish the handler's output to this staging topic.")
@click.option("--app", "app_path", metavar="APP",
              help="The app with the group's function (else SWELL_APP, else app in "
                   "pyproject.toml's [tool.swell]).")
@click.option("--restart", is_flag=True, help="Forget this command's earlier progress; start over.")
@broker_option
@command
async def replay(stream: str, group: str, start: str, end: str, slice_: str, concurrency: int,
                 sink: str | None, app_path: str | None, restart: bool,
                 broker_url: str | None) -> None:
    """Run GROUP's handler again over a time range of STREAM, slice by slice. Ctrl-C pauses; the
    same command resumes. The live group's offsets are never moved."""
    from swell.runtime.app import declare
    from swell.runtime.replay import Replay

    target = find_app(app_path)
    if target is None:
        raise ConfigError(f"which app has group {group!r}? {NO_APP}")
    app = load_app(target)
    broker = open_broker(broker_url)
    try:
        await declare(app, broker)
        job = Replay(app, broker, stream, group, start, end, seconds(slice_, name="--slice"),
                     concurrency, sink, now=time.time())
        await job.restore(restart)
        plan = await job.plan()
        err_console.print(f"replay {plan.id}: {len(plan.slices)} slice(s), {plan.total:,} event(s) "
                          f"in range{f', {plan.resumed:,} done before (resuming)' if plan.resumed else ''}"
                          f"{f'; output to staging topic {sink!r}' if sink else ''}", highlight=False)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, job.stop.set)
        loop.add_signal_handler(signal.SIGTERM, job.stop.set)
        columns = (TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=False) as bar:
            task = bar.add_task("replay", total=plan.total, completed=plan.resumed, rate="")
            started, done = time.monotonic(), 0

            def tick(n: int) -> None:
                nonlocal done
                done += n
                rate = done / max(time.monotonic() - started, 1e-9)
                bar.update(task, advance=n, rate=f"{rate:,.0f}/s")

            results = await job.run(plan, tick)
    finally:
        await broker.close()
    table = Table(title=f"replay {plan.id} of {stream} / {group}", title_justify="left",
                  header_style="bold")
    for col in ("slice", "from", "to", "events", "failures", "duplicates suppressed", "state"):
        table.add_column(col, justify="right" if col in ("events", "failures",
                                                         "duplicates suppressed") else "left")
    for r in results:
        table.add_row(str(r.index), when(r.start), when(r.end), f"{r.events:,}", f"{r.failures:,}",
                      f"{r.duplicates:,}", "done" if r.done else "[yellow]paused[/]")
    show(table)
    if not all(r.done for r in results):
        err_console.print("paused: run the same command again to resume", highlight=False)
        sys.exit(130)

