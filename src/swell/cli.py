"""The ``swell`` command: thin — parse, call, render."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

import click
import msgspec
from rich.console import Console
from rich.table import Table

from swell.brokers.base import H_ATTEMPTS, H_ERROR, H_REASON, Broker, QueueStats, TopicInfo
from swell.brokers.url import default_broker_url, open_broker
from swell.core.codec import decode_json
from swell.core.config import seconds
from swell.core.errors import ConfigError, PayloadError, SwellError, UnknownQueue
from swell.core.event import Event
from swell.runtime.loader import load_app
from swell.runtime.producer import Producer

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)

broker_option = click.option(
    "--broker", "broker_url", envvar="SWELL_BROKER", default=None, metavar="URL",
    help="Broker URL (env SWELL_BROKER; default sqlite:///.swell/swell.db).")


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def command(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async command; a user's mistake (a SwellError) prints one line, not a traceback."""
    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            asyncio.run(fn(*args, **kwargs))
        except PayloadError as exc:
            _fail(str(exc), 2)
        except SwellError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            sys.exit(130)
    return run


async def _with_broker(url: str | None, use: Callable[[Broker], Awaitable[T]]) -> T:
    broker = open_broker(url)
    try:
        return await use(broker)
    finally:
        await broker.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swell")
def main() -> None:
    """swell: event-driven functions that scale on signals."""


# -- run --------------------------------------------------------------------------------------
@main.command()
@click.argument("app_path", metavar="APP")
@broker_option
@click.option("--grace", default="30s", show_default=True,
              help="How long in-flight work may finish after SIGINT/SIGTERM.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--metrics", "metrics_at", default="127.0.0.1:9464", show_default=True,
              envvar="SWELL_METRICS", metavar="HOST:PORT",
              help="Serve Prometheus /metrics here ('off' to disable).")
@command
async def run(app_path: str, broker_url: str | None, grace: str, log_level: str,
              metrics_at: str) -> None:
    """Run APP (a file.py or a pkg.module[:attribute]) until Ctrl-C."""
    from swell.runtime.runtime import Runtime

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = load_app(app_path)
    grace_s = seconds(grace, name="--grace")
    metrics = _host_port(metrics_at)
    url = broker_url or default_broker_url()
    runtime = Runtime(app, url)
    if metrics is not None:
        from swell.observe.prometheus import serve_metrics

        serve_metrics(runtime, *metrics)

    def started() -> None:
        # what is alive now (modules, the app, the runtime) stays: keep the collector off it, so
        # a full collection does not walk it again and again under load
        gc.freeze()
        err_console.print(f"swell: running [bold]{app.name}[/] ({len(app.functions)} function(s)) "
                          f"on {url} as node {runtime.node}", highlight=False)

    await runtime.serve(grace_s, on_started=started)


def _host_port(value: str) -> tuple[str, int] | None:
    if value.strip().lower() in ("off", "none", "0", ""):
        return None
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics {value!r}: use HOST:PORT (like 127.0.0.1:9464) or 'off'")
    return host or "127.0.0.1", int(port)


# -- send -------------------------------------------------------------------------------------
def _read_payloads(data: str) -> list[Any]:
    """JSON from the argument, from ``@file``, or JSON lines from stdin (``-``); all or nothing."""
    if data == "-":
        lines = [(n, line) for n, line in enumerate(sys.stdin, 1) if line.strip()]
        out = []
        for n, line in lines:
            try:
                out.append(decode_json(line))
            except PayloadError as exc:
                raise PayloadError(f"stdin line {n}: {exc}; nothing was sent") from exc
        return out
    if data.startswith("@"):
        try:
            with open(data[1:], "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {data[1:]}: {exc.strerror}") from exc
    else:
        raw = data.encode()
    try:
        return [decode_json(raw)]
    except PayloadError as exc:
        raise PayloadError(f"{exc}; nothing was sent") from exc


def _attributes(pairs: tuple[str, ...]) -> dict[str, str] | None:
    out = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq:
            raise ConfigError(f"--attr {pair!r}: use NAME=VALUE")
        out[name] = value
    return out or None


@main.command()
@click.argument("target", metavar="QUEUE|TOPIC")
@click.argument("data")
@click.option("--key", help="Ordering/partition key of the event.")
@click.option("--id", "event_id", help="Event id; a second send of the same id is a duplicate.")
@click.option("--delay", default="0", help="Deliver after this long (e.g. 30s, 5m).")
@click.option("--type", "event_type", help="CloudEvents type (default swell.QUEUE).")
@click.option("--subject", help="CloudEvents subject: a topic's routing key (orders.eu.created).")
@click.option("--attr", "attrs", multiple=True, metavar="NAME=VALUE",
              help="An extension attribute, for topic filters (repeatable).")
@click.option("--app", "app_path", metavar="APP", help="Declare APP's queues and topics first.")
@broker_option
@command
async def send(target: str, data: str, key: str | None, event_id: str | None, delay: str,
               event_type: str | None, subject: str | None, attrs: tuple[str, ...],
               app_path: str | None, broker_url: str | None) -> None:
    """Send DATA to QUEUE, or publish it to TOPIC: JSON, @file, or - for JSON lines on stdin."""
    delay_s = seconds(delay, name="--delay")
    payloads = _read_payloads(data)
    if event_id is not None and len(payloads) > 1:
        raise ConfigError("--id names one event; with several lines on stdin leave it out")
    attributes = _attributes(attrs)

    async def go(broker: Broker) -> tuple[list[bool], bool]:
        if app_path:
            from swell.runtime.app import declare
            await declare(load_app(app_path), broker)
        producer = Producer(broker, source="/swell/cli")
        is_topic = await producer.is_topic(target)
        if not is_topic:
            await broker.queue_spec(target)
        events = [producer.event(target, p, key=key, id=event_id, type=event_type, subject=subject,
                                 attributes=attributes) for p in payloads]
        put = producer.publish_events if is_topic else producer.send_events
        stored: list[bool] = []
        for i in range(0, len(events), 500):
            stored += await put(target, events[i:i + 500], delay_s=delay_s, dedup=event_id is not None)
        return stored, is_topic

    try:
        stored, is_topic = await _with_broker(broker_url, go)
    except UnknownQueue as exc:
        raise SwellError(f"{exc}; no topic has that name either; run the app once, or pass "
                         "--app APP") from None
    n = sum(stored)
    dup = len(stored) - n
    msg = (f"{'published' if is_topic else 'sent'} {n} event(s) to {target}"
           + (f" ({dup} duplicate(s) ignored)" if dup else ""))
    err_console.print(msg, highlight=False)


# -- queues -----------------------------------------------------------------------------------
def _age(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms" if s else "-"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def stats_table(rows: list[QueueStats], title: str = "queues") -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("queue")
    for col in ("ready", "in flight", "delayed", "oldest"):
        table.add_column(col, justify="right")
    for s in rows:
        table.add_row(s.queue, f"{s.depth:,}", f"{s.in_flight:,}", f"{s.delayed:,}",
                      _age(s.oldest_age_s))
    return table


@main.command()
@broker_option
@command
async def queues(broker_url: str | None) -> None:
    """Depth, in flight, delayed and age of oldest, per queue."""
    async def go(broker: Broker) -> list[QueueStats]:
        return [await broker.stats(s.name) for s in await broker.queues()]

    rows = await _with_broker(broker_url, go)
    if not rows:
        console.print("no queues yet: run an app (swell run APP) or the demo (swell demo)")
        return
    console.print(stats_table(rows))


@main.command()
@broker_option
@command
async def topics(broker_url: str | None) -> None:
    """Topics, their subscriptions with subject and filter, depth, matched and filtered out."""
    async def go(broker: Broker) -> list[tuple[TopicInfo, list[QueueStats]]]:
        return [(t, [await broker.stats(s.spec.queue.name) for s in t.subscriptions])
                for t in await broker.topics()]

    rows = await _with_broker(broker_url, go)
    if not rows:
        console.print("no topics yet: declare one with app.topic(NAME) and run the app")
        return
    table = Table(title="topics", title_justify="left", header_style="bold")
    for col in ("topic", "sent", "subscription", "subject", "ready", "in flight", "matched",
                "filtered"):
        table.add_column(col, justify="left" if col in ("topic", "subscription", "subject")
                         else "right")
    filters = []
    for t, stats in rows:
        if not t.subscriptions:
            table.add_row(t.spec.name, f"{t.published:,}", "[dim](none)[/]", "", "", "", "", "")
        for i, (sub, st) in enumerate(zip(t.subscriptions, stats, strict=True)):
            first = i == 0
            table.add_row(t.spec.name if first else "", f"{t.published:,}" if first else "",
                          sub.spec.name, sub.spec.subject or "[dim]all[/]", f"{st.depth:,}",
                          f"{st.in_flight:,}", f"{sub.matched:,}", f"{sub.filtered:,}")
            if sub.spec.filter:
                filters.append(f"[bold]{t.spec.name}.{sub.spec.name}[/] filter: {sub.spec.filter}")
    console.print(table)
    for line in filters:
        console.print(line, highlight=False, soft_wrap=True)


@main.command()
@broker_option
@command
async def streams(broker_url: str | None) -> None:
    """Streams, their partitions and groups: lag per partition, who works it, and hot keys."""
    from swell.brokers.logs import CHECKPOINTS, committed
    from swell.runtime.cluster import STATUS_PREFIX
    from swell.runtime.runtime import FunctionStatus

    async def go(broker: Broker) -> tuple[list[Any], list[FunctionStatus]]:
        out = []
        for spec in await broker.streams():
            heads = await broker.lag(spec.name, [0] * spec.partitions)
            prefix = f"{CHECKPOINTS}{spec.name}/"
            groups = sorted({e.key[len(prefix):].split("/", 1)[0]
                             for e in await broker.kv.scan(prefix)})
            lags = {}
            for g in groups:
                done = await committed(broker.kv, spec.name, g)
                lags[g] = await broker.lag(spec.name, [done.get(p, 0) for p in range(spec.partitions)])
            out.append((spec, heads, lags))
        statuses = [msgspec.json.decode(e.value, type=FunctionStatus)
                    for e in await broker.kv.scan(STATUS_PREFIX)]
        return out, [s for s in statuses if s.group]

    rows, statuses = await _with_broker(broker_url, go)
    if not rows:
        console.print("no streams yet: declare one with app.stream(NAME) and run the app")
        return
    for spec, kept, lags in rows:
        table = Table(title=f"{spec.name}: {spec.partitions} partitions, {sum(kept):,} events kept, "
                            f"retention {_age(spec.retention_s)}", title_justify="left",
                      header_style="bold")
        table.add_column("partition", justify="right")
        table.add_column("kept", justify="right")
        for g in lags:
            table.add_column(f"{g} lag", justify="right")
            table.add_column(f"{g} node", justify="left")
        owners = {(s.group, p): s.node for s in statuses for p in s.partitions}
        for p in range(spec.partitions):
            cells = [str(p), f"{kept[p]:,}"]
            for g, lag in lags.items():
                cells += [f"{lag[p]:,}", owners.get((f"{spec.name}/{g}", p), "-")]
            table.add_row(*cells)
        console.print(table)
        hot = [k for s in statuses if s.group and s.group.startswith(f"{spec.name}/") for k in s.hot_keys]
        if hot:
            console.print("hot keys (recent rate): " + ", ".join(
                f"{k.key} {k.rate_per_s:,.1f}/s ({k.share:.0%} of partition {k.partition})"
                for k in sorted(hot, key=lambda k: -k.rate_per_s)[:5]), highlight=False)


@main.command()
@click.argument("stream")
@click.option("--group", required=True, help="The consumer group whose handler is replayed.")
@click.option("--from", "start", required=True, metavar="TIME",
              help="ISO 8601 (UTC unless it says otherwise), epoch seconds, or a duration ago (2h).")
@click.option("--to", "end", default="0s", show_default=True, metavar="TIME", help="End of the range.")
@click.option("--slice", "slice_", default="1h", show_default=True, help="Length of a time slice.")
@click.option("--concurrency", default=2, show_default=True, help="Slices run at once.")
@click.option("--sink", metavar="TOPIC", help="Publish the handler's output to this staging topic.")
@click.option("--app", "app_path", metavar="APP", envvar="SWELL_APP", required=True,
              help="The app with the group's function (env SWELL_APP).")
@click.option("--restart", is_flag=True, help="Forget this command's earlier progress; start over.")
@broker_option
@command
async def replay(stream: str, group: str, start: str, end: str, slice_: str, concurrency: int,
                 sink: str | None, app_path: str, restart: bool, broker_url: str | None) -> None:
    """Run GROUP's handler again over a time range of STREAM, slice by slice. Ctrl-C pauses; the
    same command resumes. The live group's offsets are never moved."""
    import time as _time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from swell.replay import Replay
    from swell.runtime.app import declare

    app = load_app(app_path)
    broker = open_broker(broker_url)
    try:
        await declare(app, broker)
        job = Replay(app, broker, stream, group, start, end, seconds(slice_, name="--slice"),
                     concurrency, sink, now=_time.time())
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
            started, done = _time.monotonic(), 0

            def tick(n: int) -> None:
                nonlocal done
                done += n
                rate = done / max(_time.monotonic() - started, 1e-9)
                bar.update(task, advance=n, rate=f"{rate:,.0f}/s")

            results = await job.run(plan, tick)
    finally:
        await broker.close()
    table = Table(title=f"replay {plan.id} of {stream} / {group}", title_justify="left",
                  header_style="bold")
    for col in ("slice", "from", "to", "events", "failures", "duplicates suppressed", "state"):
        table.add_column(col, justify="right" if col in ("events", "failures",
                                                         "duplicates suppressed") else "left")

    def at(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")

    for r in results:
        table.add_row(str(r.index), at(r.start), at(r.end), f"{r.events:,}", f"{r.failures:,}",
                      f"{r.duplicates:,}", "done" if r.done else "[yellow]paused[/]")
    console.print(table)
    if not all(r.done for r in results):
        err_console.print("paused: run the same command again to resume", highlight=False)
        sys.exit(130)


# -- status -----------------------------------------------------------------------------------
def _f(x: float | None, fmt: str = "{:,.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:,.1f} ms"


@main.command()
@broker_option
@command
async def status(broker_url: str | None) -> None:
    """Per running function: its signals and its controller's decision, and why."""
    from swell.runtime.cluster import STATUS_PREFIX
    from swell.runtime.runtime import FunctionStatus

    async def go(broker: Broker) -> list[FunctionStatus]:
        entries = await broker.kv.scan(STATUS_PREFIX)
        return [msgspec.json.decode(e.value, type=FunctionStatus) for e in entries]

    rows = await _with_broker(broker_url, go)
    if not rows:
        console.print("no function is running on this broker (start one with: swell run APP)")
        return
    by_fn: dict[tuple[str, str], list[FunctionStatus]] = {}
    for r in rows:
        by_fn.setdefault((r.app, r.function), []).append(r)
    table = Table(title="functions", title_justify="left", header_style="bold")
    for col in ("function", "ready", "in flight", "oldest", "in/s", "out/s", "p99", "errors",
                "throttled", "units", "nodes"):
        table.add_column(col, justify="left" if col == "function" else "right")
    for (app, fn), nodes in by_fn.items():
        s = max(nodes, key=lambda r: r.at).signals  # every node holds the global signals
        ready = _f(s.get("depth"), "{:,}") + (f" +{s['delayed']:,}" if s.get("delayed") else "")
        units = f"{s.get('ready', 0)}" + (f"+{s['starting']}" if s.get("starting") else "")
        table.add_row(
            f"{app}.{fn}", ready, f"{s.get('in_flight', 0):,}", _age(s.get("oldest_age_s") or 0.0),
            _f(s.get("arrival_rate")), _f(s.get("completion_rate")), _ms(s.get("service_p99_s")),
            f"{s.get('error_rate', 0.0):.1%}", f"{s.get('throttle_rate', 0.0):.1%}", units,
            f"{len(nodes)}")
    console.print(table)
    for (app, fn), nodes in by_fn.items():
        r = max(nodes, key=lambda r: r.at)
        cold = r.signals.get("cold_starts", 0)
        split = ", ".join(f"{n.node} {n.share}" + (" (leads)" if n.node == n.leader else "")
                          for n in nodes)
        console.print(f"[bold]{app}.{fn}[/] ({r.mode}, {r.controller}"
                      f"{f', {cold} cold starts' if cold else ''}): {r.desired} unit(s) — "
                      f"{r.reason}\n  [dim]on {len(nodes)} node(s): {split}[/]", highlight=False)
        if r.group:
            parts = "; ".join(f"{n.node} {n.partitions}" for n in nodes)
            console.print(f"  group {r.group}: lag per partition {r.lags}; partitions: {parts}",
                          highlight=False)
            hot = sorted((k for n in nodes for k in n.hot_keys), key=lambda k: -k.rate_per_s)[:5]
            if hot:
                console.print("  hot keys: " + ", ".join(
                    f"{k.key} {k.rate_per_s:,.1f}/s ({k.share:.0%} of partition {k.partition})"
                    for k in hot), highlight=False)


@main.command()
@broker_option
@command
async def nodes(broker_url: str | None) -> None:
    """The live runtime nodes on this broker: their heartbeats and their share of each function."""
    from swell.runtime.cluster import NODES_PREFIX, NodeInfo

    async def go(broker: Broker) -> list[NodeInfo]:
        entries = await broker.kv.scan(NODES_PREFIX)
        return [msgspec.json.decode(e.value, type=NodeInfo) for e in entries]

    rows = await _with_broker(broker_url, go)
    if not rows:
        console.print("no node is running on this broker (start one with: swell run APP)")
        return
    now = datetime.now(UTC).timestamp()
    table = Table(title=f"nodes: {len(rows)}", title_justify="left", header_style="bold")
    for col in ("node", "app", "host", "pid", "up", "last beat", "in flight", "units"):
        table.add_column(col, justify="left" if col in ("node", "app", "host", "units") else "right")
    for n in rows:
        units = ", ".join(f"{fn} {k}" for fn, k in n.functions.items())
        table.add_row(n.node, n.app, n.host, str(n.pid), _age(now - n.started),
                      f"{max(0.0, now - n.seen):.1f}s ago", f"{n.in_flight:,}", units)
    console.print(table)


# -- dlq --------------------------------------------------------------------------------------
@main.group()
def dlq() -> None:
    """Dead-letter queues: list, show, redrive."""


async def _dlq_name(broker: Broker, queue: str) -> str:
    """The dead-letter queue of ``queue``; or ``queue`` itself if it is one (a consumer group's,
    ``<stream>.<group>.dlq``, belongs to no queue)."""
    spec = await broker.queue_spec(queue)
    if spec.is_dead_letter:
        return spec.name
    if spec.dead_letter_queue is None:
        raise ConfigError(f"queue {queue!r} has no dead-letter queue")
    return spec.dead_letter_queue


@dlq.command("list")
@broker_option
@command
async def dlq_list(broker_url: str | None) -> None:
    """Every queue's dead-letter queue and how many messages wait in it."""
    async def go(broker: Broker) -> list[QueueStats]:
        specs = await broker.queues()
        names = [s.dead_letter_queue for s in specs if s.dead_letter_queue]
        names += [s.name for s in specs if s.is_dead_letter and s.name not in names]
        return [await broker.stats(n) for n in names if n in {s.name for s in specs}]

    rows = await _with_broker(broker_url, go)
    console.print(stats_table(rows, "dead-letter queues") if rows else "no dead-letter queues")


@dlq.command("show")
@click.argument("queue")
@click.option("--limit", default=20, show_default=True)
@broker_option
@command
async def dlq_show(queue: str, limit: int, broker_url: str | None) -> None:
    """The dead-lettered messages of QUEUE, with reason, attempts and error."""
    async def go(broker: Broker) -> tuple[str, Any]:
        name = await _dlq_name(broker, queue)
        return name, await broker.peek(name, limit)

    name, rows = await _with_broker(broker_url, go)
    table = Table(title=f"{name}: {len(rows)} shown", title_justify="left", header_style="bold")
    for col in ("event id", "dead-lettered", "attempts", "reason", "error"):
        table.add_column(col, overflow="fold")
    for d in rows:
        try:
            eid = Event.from_json(d.body).id
        except PayloadError:
            eid = "(not an event)"
        at = float(d.headers.get("swell-dlq-at", "0"))
        table.add_row(eid, datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                      d.headers.get(H_ATTEMPTS, ""), d.headers.get(H_REASON, ""),
                      d.headers.get(H_ERROR, ""))
    console.print(table)


@dlq.command("redrive")
@click.argument("queue")
@click.option("--max", "max_messages", type=int, default=None, help="Move at most this many.")
@broker_option
@command
async def dlq_redrive(queue: str, max_messages: int | None, broker_url: str | None) -> None:
    """Move QUEUE's dead-lettered messages back to QUEUE, receive counts reset."""
    async def go(broker: Broker) -> int:
        if await _dlq_name(broker, queue) == queue:
            raise ConfigError(f"{queue!r} is a consumer group's dead-letter queue: there is no "
                              "queue to move its events back to (look at them with swell dlq show, "
                              "and run them again with swell replay)")
        return await broker.redrive(queue, max_messages)

    moved = await _with_broker(broker_url, go)
    console.print(f"redrove {moved:,} message(s) to {queue}")


# -- saga -------------------------------------------------------------------------------------
def _saga_states() -> list[str]:
    from swell.sagas.log import SAGA_STATES

    return list(SAGA_STATES)


def _when(t: float, ms: bool = False) -> str:
    out = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f" if ms else "%Y-%m-%d %H:%M:%S")
    return out[:-3] if ms else out


_STATE_STYLE = {"completed": "green", "compensated": "cyan", "needs_attention": "bold red",
                "paused": "yellow", "compensating": "magenta", "failed": "red"}


def _styled(state: str) -> str:
    style = _STATE_STYLE.get(state)
    return f"[{style}]{state}[/]" if style else state


_by_option = click.option("--by", envvar="USER", default="unknown", show_default="$USER",
                          help="Who does this (recorded in the saga's log).")


@main.group()
def saga() -> None:
    """Sagas: list and show their logs; pause, resume, retry, skip or abort one (recorded)."""


@saga.command("list")
@click.option("--saga", "name", metavar="NAME", help="Only the sagas of this name.")
@click.option("--state", type=click.Choice(_saga_states()), help="Only sagas in this state.")
@click.option("--limit", default=50, show_default=True, help="Show at most this many rows.")
@broker_option
@command
async def saga_list(name: str | None, state: str | None, limit: int, broker_url: str | None) -> None:
    """Sagas, the most recently changed first: id, saga, state, step, updated."""
    from collections import Counter

    from swell.sagas import admin

    rows = await _with_broker(broker_url, lambda b: admin.sagas(b.kv, saga=name, state=state))
    if not rows:
        console.print("no sagas" + (" match" if name or state else " yet: start one with "
                                     "saga.start(...) in an app"))
        return
    counts = Counter(lg.state for lg in rows)
    table = Table(title=f"sagas: {len(rows):,} (" + ", ".join(f"{n:,} {s}" for s, n in
                                                            counts.most_common()) + ")",
                  title_justify="left", header_style="bold")
    for col in ("id", "saga", "state", "step", "updated"):
        table.add_column(col, overflow="fold")
    for lg in rows[:limit]:
        table.add_row(lg.id, lg.saga, _styled(lg.state), lg.current_name() or "-", _when(lg.updated))
    console.print(table)
    if len(rows) > limit:
        console.print(f"... and {len(rows) - limit:,} more (--limit)")


@saga.command("show")
@click.argument("ref", metavar="ID")
@broker_option
@command
async def saga_show(ref: str, broker_url: str | None) -> None:
    """One saga: its data, its steps and its whole log. ID is NAME/ID, or an ID only one saga has."""
    import json

    from swell.sagas import admin

    lg = await _with_broker(broker_url, lambda b: admin.find(b.kv, ref))
    console.print(f"[bold]saga {lg.saga}/{lg.id}[/]: {_styled(lg.state)}"
                  + (f" at step {lg.current_name()}" if lg.current_name() else "")
                  + (f" (paused while {lg.paused_from})" if lg.paused_from else "")
                  + f"; started {_when(lg.created)}, updated {_when(lg.updated)}", highlight=False)
    console.print(f"data: {json.dumps(lg.data)}", highlight=False, soft_wrap=True)
    steps = Table(title="steps", title_justify="left", header_style="bold")
    for col in ("step", "state", "runs", "failures", "lost", "result", "error", "compensation"):
        steps.add_column(col, overflow="fold")
    for st in lg.steps:
        comp = (f"{st.comp_runs} run(s), {st.comp_failures} failure(s)" if st.comp_runs else "-") \
            + (f": {st.comp_error}" if st.comp_error else "")
        steps.add_row(st.name, _styled(st.state), str(st.runs), str(st.failures), str(st.lost),
                      json.dumps(st.result) if st.has_result else "-", st.error or "", comp)
    console.print(steps)
    history = Table(title="log" + (f" ({lg.dropped:,} earlier entries dropped)" if lg.dropped else ""),
                    title_justify="left", header_style="bold")
    for col in ("time", "actor", "event", "step", "state", "reason"):
        history.add_column(col, overflow="fold")
    for e in lg.history:
        history.add_row(_when(e.at, ms=True), e.actor, e.event, e.step or "", _styled(e.state),
                        e.reason or "")
    console.print(history)


def _overridden(what: str, lg: Any) -> None:
    step = lg.current_name()
    console.print(f"{what} saga {lg.saga}/{lg.id}: now {lg.state}"
                  + (f", at step {step}" if step else ""), highlight=False)


def _saga_override(verb: str, done: str, doc: str) -> None:
    """``swell saga VERB ID [--by] [--reason]``: an operator's override of one kind."""
    @saga.command(verb, help=doc)
    @click.argument("ref", metavar="ID")
    @_by_option
    @click.option("--reason", help="Why (recorded in the saga's log).")
    @broker_option
    @command
    async def override(ref: str, by: str, reason: str | None, broker_url: str | None) -> None:
        from swell.sagas import admin

        act = getattr(admin, verb)
        _overridden(done, await _with_broker(
            broker_url, lambda b: act(b, ref, by=by, reason=reason)))


_saga_override("pause", "paused",
               "Run no further step of saga ID until it is resumed (a step being run finishes).")
_saga_override("resume", "resumed",
               "Go on with a paused saga (on an active one: send its next message again).")
_saga_override("retry", "retrying", "Run the step (or compensation) where saga ID stands again "
               "now, its attempts from zero.")


@saga.command("skip")
@click.argument("ref", metavar="ID")
@_by_option
@click.option("--reason", required=True, help="Why (recorded in the saga's log).")
@click.option("--step", help="The step (default: where the saga stands).")
@click.option("--result", "result_json", metavar="JSON",
              help="Going forward: the step's result, for its compensation.")
@broker_option
@command
async def saga_skip(ref: str, by: str, reason: str, step: str | None, result_json: str | None,
                    broker_url: str | None) -> None:
    """Mark a step of saga ID done (going forward) or compensated (compensating) by hand."""
    from swell.sagas import admin

    result = None if result_json is None else decode_json(result_json)
    _overridden("skipped a step of", await _with_broker(
        broker_url, lambda b: admin.skip(b, ref, by=by, reason=reason, step=step, result=result)))


@saga.command("abort")
@click.argument("ref", metavar="ID")
@_by_option
@click.option("--reason", required=True, help="Why (recorded in the saga's log).")
@broker_option
@command
async def saga_abort(ref: str, by: str, reason: str, broker_url: str | None) -> None:
    """Stop saga ID going forward and compensate what may have run, in reverse order."""
    from swell.sagas import admin

    _overridden("aborted", await _with_broker(
        broker_url, lambda b: admin.abort(b, ref, by=by, reason=reason)))


# -- demo -------------------------------------------------------------------------------------
@main.command()
@click.option("--events", default=10_000, show_default=True, help="Size of the burst.")
@broker_option
@command
async def demo(events: int, broker_url: str | None) -> None:
    """A burst of orders absorbed and drained, with live counts."""
    from swell.demo import run_demo

    await run_demo(broker_url or default_broker_url(), events, console)


def _register_sim() -> None:
    from swell.scaling.report import sim

    main.add_command(sim)


_register_sim()
