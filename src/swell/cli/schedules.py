"""``swell schedules``: an app's schedules, their next fire times, and their last fire as the kv
store records it."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo

import click
from rich.markup import escape
from rich.table import Table

from swell.brokers.base import KV, Broker
from swell.cli.base import broker_option, command, console, show, with_broker
from swell.core import keys
from swell.core.errors import ConfigError
from swell.runtime.loader import NO_APP, find_app, load_app
from swell.triggers.schedule import LastFire, ScheduleSource, read_last

_STYLE = {"stored": "green", "duplicate": "cyan"}


@dataclass(frozen=True)
class ScheduleView:
    """A schedule as ``swell schedules`` shows it."""

    source: ScheduleSource
    next: list[float]
    last: LastFire | None


async def read_schedules(kv: KV, app: str, sources: Iterable[ScheduleSource],
                         now: float) -> list[ScheduleView]:
    """Each schedule, its next three fire times after ``now`` and its ``last`` record."""
    return [ScheduleView(s, s.next_fires(now, 3), await read_last(kv, keys.schedule(app, s.name)))
            for s in sorted(sources, key=lambda s: s.name)]


def _at(t: float, zone: tzinfo) -> str:
    return datetime.fromtimestamp(t, zone).strftime("%Y-%m-%d %H:%M:%S")


def _spec(s: ScheduleSource) -> str:
    d = s.spec.describe()
    what = f"cron {d['cron']}" if "cron" in d else f"every {d['every']}"
    jitter = f"\njitter {s.jitter_s:g}s" if s.jitter_s else ""
    return escape(f"{what}{jitter}\n{s.zone}\nmissed: {s.missed}")


def _last(last: LastFire | None, zone: tzinfo) -> str:
    if last is None:
        return "[dim]never[/]"
    outcome = last.outcome
    style = _STYLE.get(outcome, "red")
    late = max(0.0, last.fired_at - last.fire_time)
    return (f"{_at(last.fire_time, zone)}\n[{style}]{escape(outcome)}[/]\n"
            f"[dim]by {escape(last.node)}, {late:.1f}s late[/]")


def schedules_table(views: list[ScheduleView], app: str) -> Table:
    """A row per schedule: name and channel, spec, next three fire times, last fire (in the
    schedule's zone)."""
    table = Table(title=f"schedules of {escape(app)}: {len(views)}", title_justify="left",
                  header_style="bold")
    for col in ("schedule", "when", "next", "last fire"):
        table.add_column(col, overflow="fold", no_wrap=col == "next",
                         min_width=19 if col in ("next", "last fire") else None)
    for v in views:
        s = v.source
        table.add_row(escape(f"{s.name}\n→ {s.target}"), _spec(s),
                      "\n".join(_at(t, s.zone) for t in v.next), _last(v.last, s.zone))
    return table


@click.command()
@click.argument("app_path", metavar="APP", required=False)
@broker_option
@command
async def schedules(app_path: str | None, broker_url: str | None) -> None:
    """APP's schedules: spec, next three fire times, and the last fire and its outcome (APP:
    else SWELL_APP, else app in pyproject.toml's [tool.swell])."""
    target = find_app(app_path)
    if target is None:
        raise ConfigError(f"which app? {NO_APP}")
    app = load_app(target)
    found = [s for s in getattr(app, "sources", {}).values() if isinstance(s, ScheduleSource)]
    if not found:
        console.print(f"{app.name} has no schedules (declare one with app.schedule(...))",
                      highlight=False)
        return

    async def read(broker: Broker) -> list[ScheduleView]:
        return await read_schedules(broker.kv, app.name, found, time.time())

    show(schedules_table(await with_broker(broker_url, read), app.name))
