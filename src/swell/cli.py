"""The ``swell`` command: thin — parse, call, render."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

import click
import msgspec
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from swell.brokers.base import (
    H_AT,
    H_ATTEMPTS,
    H_ERROR,
    H_REASON,
    Broker,
    Delivery,
    Message,
    QueueStats,
    TopicInfo,
    redrive_headers,
)
from swell.brokers.url import default_broker_url, open_broker, scheme_of
from swell.core.codec import decode_json
from swell.core.config import seconds
from swell.core.errors import (
    ConfigError,
    MessageTooLarge,
    PayloadError,
    SwellError,
    UnknownQueue,
)
from swell.core.event import Event
from swell.render import fit, natural_width, row_lines
from swell.runtime.loader import NO_APP, find_app, find_broker, load_app
from swell.runtime.producer import Kind, Producer

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)

broker_option = click.option(
    "--broker", "broker_url", envvar="SWELL_BROKER", default=None, metavar="URL",
    help="Broker URL (env SWELL_BROKER; else broker in pyproject.toml's [tool.swell]; default "
         "sqlite:///.swell/swell.db).")


def _print(what: RenderableType) -> None:
    """Print to stdout; a table as a table if it fits the terminal, else one block per row."""
    console.print(fit(what, console.width) if isinstance(what, Table) else what)


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def command(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async command; a user's mistake (a SwellError) prints one line, not a traceback."""
    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            if "broker_url" in kwargs and kwargs["broker_url"] is None:  # no --broker, no env
                kwargs["broker_url"] = find_broker()
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
    metrics = _host_port(metrics_at)
    url = broker_url or default_broker_url()
    runtime = Runtime(app, url)
    if metrics is not None:
        from swell.observe.prometheus import serve_metrics

        try:
            serve_metrics(runtime, *metrics, best_effort=metrics_best_effort)
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


def _host_port(value: str) -> tuple[str, int] | None:
    if value.strip().lower() in ("off", "none", "0", ""):
        return None
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics {value!r}: use HOST:PORT (like 127.0.0.1:9464) or 'off'")
    return host or "127.0.0.1", int(port)


# -- send -------------------------------------------------------------------------------------
SEND_BATCH = 500  # events per call to a broker whose calls are not one transaction (NATS)


class _Line(msgspec.Struct, frozen=True):
    number: int  # on stdin, 1-based, counting blank lines; 0: the argument or @file
    raw: bytes
    payload: Any


def _read_payloads(data: str) -> list[_Line]:
    """JSON from the argument, from ``@file``, or JSON lines from stdin (``-``); all or nothing:
    a bad line (the first is named, the others counted) sends nothing."""
    if data == "-":
        return _read_lines(sys.stdin.buffer)
    if data.startswith("@"):
        try:
            with open(data[1:], "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {data[1:]}: {exc.strerror}") from exc
        where = f"{data}: "
    else:
        raw = os.fsencode(data)  # the argument's own bytes, even if they are not UTF-8
        where = ""
    try:
        return [_Line(0, raw, _decode(raw))]
    except PayloadError as exc:
        raise PayloadError(f"{where}{exc}; nothing was sent") from None


def _read_lines(stream: Any) -> list[_Line]:
    out, bad, first = [], 0, ""
    for n, line in enumerate(stream, 1):
        raw = line.strip()
        if not raw:
            continue
        try:
            out.append(_Line(n, raw, _decode(raw)))
        except PayloadError as exc:
            bad += 1
            first = first or f"stdin line {n}: {exc}"
    if bad:
        raise PayloadError(f"{first}{f' ({bad:,} bad lines in all)' if bad > 1 else ''}; "
                           "nothing was sent")
    return out


BOM = b"\xef\xbb\xbf"
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def _decode(raw: bytes) -> Any:
    """JSON from one input; a UTF-8 byte order mark before it (which some editors write, and
    which RFC 8259 lets a parser ignore) is ignored. A refusal says what is wrong in words."""
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        return decode_json(raw)
    except RecursionError:
        raise PayloadError(_too_deep(raw)) from None
    except PayloadError as exc:
        if isinstance(exc.__cause__, RecursionError):
            raise PayloadError(_too_deep(raw)) from None
        raise PayloadError(_why(raw) or str(exc)) from None


def _too_deep(raw: bytes) -> str:
    depth = deepest = 0
    for bracket in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        depth += 1 if bracket.group() in b"[{" else -1
        deepest = max(deepest, depth)
    return (f"JSON nested {deepest:,} levels deep (arrays and objects within each other): "
            "too deep to decode")


def _why(raw: bytes) -> str | None:
    """Why ``raw`` is no JSON, where the decoder's own words mislead: bytes that are not UTF-8,
    or an escape of half a UTF-16 surrogate pair (``"\\ud800"``), which is no character."""
    try:
        raw.decode()
    except UnicodeDecodeError as exc:
        return (f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start:,} "
                "(JSON is UTF-8; convert the input, e.g. with iconv -t UTF-8)")
    for string in _STRING.finditer(raw):
        high: re.Match[bytes] | None = None  # a high surrogate, waiting for its low half
        for esc in _ESCAPE.finditer(string.group()):
            code = int(esc.group(1), 16) if esc.group(1) else -1
            if high is not None:
                if 0xDC00 <= code <= 0xDFFF and esc.start() == high.end():
                    high = None
                    continue
                return _lone(high, string.start())
            if 0xD800 <= code <= 0xDBFF:
                high = esc
            elif 0xDC00 <= code <= 0xDFFF:
                return _lone(esc, string.start())
        if high is not None:
            return _lone(high, string.start())
    return None


def _lone(escape: re.Match[bytes], base: int) -> str:
    return (f"{escape.group().decode()} at offset {base + escape.start():,} is half of a UTF-16 "
            "surrogate pair, which is no character on its own: JSON text must be valid Unicode")


def _text(option: str, value: str | None) -> str | None:
    """An option's text, if it can be stored (UTF-8); else one clear error."""
    if value is not None:
        raw = os.fsencode(value)  # the argument's own bytes
        try:
            raw.decode()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{option} {raw!r} is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                              f"at offset {exc.start:,})") from None
    return value


def _attributes(pairs: tuple[str, ...]) -> dict[str, str] | None:
    out = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq:
            raise ConfigError(f"--attr {pair!r}: use NAME=VALUE")
        out[name] = value
    return out or None


def _line_id(command: list[Any], line: _Line) -> str:
    """An event id (and dedup id) derived from the command and one line of its input: the same
    command on the same input gives the same ids, so a repeat stores nothing twice."""
    digest = hashlib.sha256(msgspec.json.encode(command))
    digest.update(b"\0%d\0" % line.number)
    digest.update(line.raw)
    return digest.hexdigest()[:32]


async def _limits(broker: Broker, producer: Producer,
                  target: str) -> tuple[Kind, int, float | None]:
    """What ``target`` is, its size limit per event and its dedup window (``None``: a stream's
    appends are not deduplicated)."""
    kind = await producer.kind(target)
    if kind == "topic":
        (spec,) = [t.spec for t in await broker.topics() if t.spec.name == target]
        return kind, spec.max_message_bytes, spec.dedup_window_s
    if kind == "stream":
        return kind, (await broker.stream_spec(target)).max_message_bytes, None
    q = await broker.queue_spec(target)
    return kind, q.max_message_bytes, q.dedup_window_s


def _oversize(target: str, lines: list[_Line], bodies: list[bytes], limit: int) -> None:
    """Refuse the whole input if any event is over ``target``'s size limit, naming its line."""
    big = [(line, len(body)) for line, body in zip(lines, bodies, strict=True) if len(body) > limit]
    if not big:
        return
    line, size = big[0]
    where = f"stdin line {line.number}: " if line.number else ""
    more = f" ({len(big):,} lines over it in all)" if len(big) > 1 else ""
    raise PayloadError(f"{where}{MessageTooLarge(target, size, limit)}{more}; nothing was sent")


async def store_in_batches(put: Callable[[str, Sequence[Message]], Awaitable[list[bool]]],
                           target: str, messages: Sequence[Message], numbers: Sequence[int], *,
                           batch: int, dedup_window_s: float | None,
                           atomic: bool = False) -> list[bool]:
    """Store ``messages`` (from input lines ``numbers``) ``batch`` at a time (``atomic``: each
    call is one transaction); a failure, or Ctrl-C, says exactly how many were stored before it,
    and how to store the rest without duplicates. ``dedup_window_s`` is ``None`` for a stream,
    whose appends are not deduplicated: the rest is then the lines after the last stored."""
    done: list[bool] = []

    def so_far(interrupted: bool) -> str:
        last = numbers[len(done) - 1] if done else 0
        lines = f" (lines 1-{last})" if done else ""
        left = min(batch, len(messages) - len(done))
        if not atomic:
            unsure = f"; the next {left:,} may be partly stored"
        elif interrupted:  # the transaction may still commit as the command ends
            unsure = f"; the next {left:,} (one transaction) may be stored or not"
        else:
            unsure = ""
        stored = f"stored {len(done):,} of {len(messages):,} event(s){lines}{unsure}"
        if dedup_window_s is None:
            return (f"{stored}; a stream does not drop duplicates, so the same command again "
                    f"would append those again: send only the lines after line {last}")
        return (f"{stored}; run the same command again to store the rest: ids come from the "
                "input, so nothing is stored twice within the "
                f"{dedup_window_s:g} s dedup window of {target!r}")

    for i in range(0, len(messages), batch):
        try:
            done += await put(target, messages[i:i + batch])
        except asyncio.CancelledError:
            err_console.print(f"interrupted: {so_far(True)}", highlight=False, soft_wrap=True)
            raise
        except SwellError as exc:
            raise SwellError(f"{exc}; {so_far(False)}") from exc
    return done


@main.command()
@click.argument("target", metavar="QUEUE|TOPIC|STREAM")
@click.argument("data")
@click.option("--key", help="Ordering key of the event (a stream's partition key; without one, "
              "each event's id is its partition key).")
@click.option("--id", "event_id", help="Event id; a second send of the same id is a duplicate.")
@click.option("--delay", default="0", help="Deliver after this long (e.g. 30s, 5m; not to a stream).")
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
    """Send DATA to QUEUE, publish it to TOPIC or append it to STREAM: JSON, @file, or - for
    JSON lines on stdin.

    From stdin it is all or nothing: every line is checked (JSON, size) before any is stored.
    Each line's event id comes from the command and the line (its number and content), so the
    same command again (after a crash or a lost connection) stores nothing twice within the
    target's dedup window (5 minutes unless declared otherwise). A stream does not drop
    duplicates: there a failure says which lines to send again."""
    url = broker_url or default_broker_url()
    if scheme_of(url) == "memory":
        raise ConfigError("--broker memory:// lives only as long as this command: whatever it "
                          "sent would be lost; send to sqlite:///... or nats://...")
    texts = [("QUEUE|TOPIC|STREAM", target), ("--key", key), ("--id", event_id),
             ("--type", event_type), ("--subject", subject), *(("--attr", a) for a in attrs)]
    for option, value in texts:
        _text(option, value)
    delay_s = seconds(delay, name="--delay")
    lines = _read_payloads(data)
    if event_id is not None and len(lines) > 1:
        raise ConfigError("--id names one event; with several lines on stdin leave it out")
    attributes = _attributes(attrs)
    command_ = [target, key, event_type, subject, sorted((attributes or {}).items()), delay]
    ids: list[str] = []

    async def go(broker: Broker) -> tuple[list[bool], Kind]:
        if app_path:
            from swell.runtime.app import declare
            await declare(load_app(app_path), broker)
        producer = Producer(broker, source="/swell/cli")
        kind, limit, window_s = await _limits(broker, producer, target)
        derived = data == "-" and event_id is None
        events = [producer.event(target, line.payload, key=key, type=event_type, subject=subject,
                                 id=_line_id(command_, line) if derived else event_id,
                                 attributes=attributes) for line in lines]
        ids[:] = [e.id for e in events]
        bodies = [e.to_json() for e in events]
        _oversize(target, lines, bodies, limit)
        messages = producer.messages(kind, events, delay_s=delay_s,
                                     dedup=derived or event_id is not None, bodies=bodies)
        # SQLite stores one call in one transaction: the whole input, or (killed, disk full)
        # nothing; elsewhere batches, each event with its dedup id (on NATS a stream's batch of
        # up to 1,000 is appended all or nothing too)
        atomic = scheme_of(url) == "sqlite"
        return await store_in_batches(producer.put(kind), target, messages,
                                      [line.number for line in lines],
                                      batch=max(len(messages), 1) if atomic else SEND_BATCH,
                                      dedup_window_s=window_s,
                                      atomic=atomic or kind == "stream"), kind

    while True:
        try:
            stored, kind = await _with_broker(url, go)
            break
        except UnknownQueue as exc:
            # not declared yet: declare the project's app (SWELL_APP, pyproject.toml), if it has
            # one, and send again; nothing was stored
            if app_path or (app_path := find_app()) is None:
                hint = "" if app_path else "; run the app once, or pass --app APP"
                raise SwellError(f"{exc}{hint}") from None
    n = sum(stored)
    dup = len(stored) - n
    verb = {"queue": "sent", "topic": "published", "stream": "appended"}[kind]
    msg = (f"{verb} {n} event(s) to {target}" + (f" ({dup} duplicate(s) ignored)" if dup else ""))
    err_console.print(msg + _ids_note(ids), highlight=False, soft_wrap=True)


def _ids_note(ids: list[str]) -> str:
    """The event ids of a send: every one of a few, the first and last of many."""
    if len(ids) <= SEND_IDS_LISTED:
        return f": {'id' if len(ids) == 1 else 'ids'} {', '.join(ids)}" if ids else ""
    return f": ids {ids[0]} (first) ... {ids[-1]} (last)"


SEND_IDS_LISTED = 5  # event ids a send prints in full


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
    _print(stats_table(rows))


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
    _print(table)
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
        _print(table)
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
    import time as _time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from swell.patterns.replay import Replay
    from swell.runtime.app import declare

    target = find_app(app_path)
    if target is None:
        raise ConfigError(f"which app has group {group!r}? {NO_APP}")
    app = load_app(target)
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
    _print(table)
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
    wide = natural_width(table) <= console.width  # else each function's signals in its block
    if wide:
        _print(table)
    for i, ((app, fn), nodes) in enumerate(by_fn.items()):
        r = max(nodes, key=lambda r: r.at)
        cold = r.signals.get("cold_starts", 0)
        split = ", ".join(f"{n.node} {n.share}" + (" (leads)" if n.node == n.leader else "")
                          for n in nodes)
        console.print(f"[bold]{app}.{fn}[/] ({r.mode}, {r.controller}"
                      f"{f', {cold} cold starts' if cold else ''}): {r.desired} unit(s) — "
                      f"{r.reason}", highlight=False)
        if not wide:
            console.print(Group(*row_lines(table, i, console.width)), highlight=False)
        console.print(f"  [dim]on {len(nodes)} node(s): {split}[/]", highlight=False)
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
    _print(table)


# -- dlq --------------------------------------------------------------------------------------
@main.group()
def dlq() -> None:
    """Dead-letter queues: list, show, purge, redrive."""


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
@click.argument("queues", nargs=-1, metavar="[QUEUE]...")
@broker_option
@command
async def dlq_list(queues: tuple[str, ...], broker_url: str | None) -> None:
    """Every queue's dead-letter queue (or those of QUEUE...) and how many messages wait in it."""
    async def go(broker: Broker) -> list[QueueStats]:
        if queues:
            names = list(dict.fromkeys([await _dlq_name(broker, q) for q in queues]))
            return [await broker.stats(n) for n in names]
        specs = await broker.queues()
        names = [s.dead_letter_queue for s in specs if s.dead_letter_queue]
        names += [s.name for s in specs if s.is_dead_letter and s.name not in names]
        return [await broker.stats(n) for n in names if n in {s.name for s in specs}]

    rows = await _with_broker(broker_url, go)
    _print(stats_table(rows, "dead-letter queues") if rows else "no dead-letter queues")


DLQ_PAYLOAD_CHARS = 120  # of a payload shown by ``swell dlq show`` (``--full``: all of it)


@dlq.command("show")
@click.argument("queue")
@click.option("--limit", default=20, show_default=True, help="Show at most this many messages.")
@click.option("--full", is_flag=True, help=f"Whole payloads (else the first {DLQ_PAYLOAD_CHARS} "
              "characters).")
@broker_option
@command
async def dlq_show(queue: str, limit: int, full: bool, broker_url: str | None) -> None:
    """The dead-lettered messages of QUEUE: event id, when, attempts, reason, error and payload."""
    async def go(broker: Broker) -> tuple[str, list[Delivery], int]:
        name = await _dlq_name(broker, queue)
        return name, await broker.peek(name, limit), (await broker.stats(name)).total

    name, rows, total = await _with_broker(broker_url, go)
    if not rows:
        console.print(f"{name} is empty")
        return
    more = f" of {total:,} (--limit)" if total > len(rows) else ""
    table = Table(title=f"{name}: {len(rows)} shown{more}", title_justify="left",
                  header_style="bold")
    for col in ("event id", "dead-lettered", "attempts", "reason", "error", "payload"):
        table.add_column(col, overflow="fold")
    for d in rows:
        eid, payload = _dead_letter(d.body, None if full else DLQ_PAYLOAD_CHARS)
        table.add_row(Text(eid), _dlq_time(d.headers.get(H_AT, "")),
                      Text(d.headers.get(H_ATTEMPTS, "")), Text(d.headers.get(H_REASON, "")),
                      Text(d.headers.get(H_ERROR, "")), Text(payload))
    _print(table)


def _dead_letter(body: bytes, limit: int | None) -> tuple[str, str]:
    """A dead letter's event id and payload (its data as JSON; the raw body if it is not an
    event), cut to ``limit`` characters, saying how long it is if it is cut."""
    try:
        event = Event.from_json(body)
        eid, text = event.id, msgspec.json.encode(event.data).decode()
    except Exception:  # whatever is stored is shown, as its raw body
        eid, text = "(not an event)", body.decode("utf-8", errors="backslashreplace")
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}... ({len(text):,} characters; --full shows all)"
    return eid, text


def _dlq_time(at: str) -> str:
    try:
        return datetime.fromtimestamp(float(at), UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return escape(at) or "-"


@dlq.command("purge")
@click.argument("queue")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@broker_option
@command
async def dlq_purge(queue: str, yes: bool, broker_url: str | None) -> None:
    """Delete every dead-lettered message of QUEUE, for good (asks first)."""
    async def go(broker: Broker) -> tuple[str, int]:
        name = await _dlq_name(broker, queue)
        total = (await broker.stats(name)).total
        if total and not yes:
            _confirm(f"delete {total:,} dead-lettered message(s) of {name} for good?")
        return name, await broker.purge(name) if total else 0

    name, gone = await _with_broker(broker_url, go)
    console.print(f"purged {gone:,} message(s) from {name}")


def _confirm(question: str) -> None:
    """Ask on a terminal; elsewhere (a script, a pipe) refuse: ``--yes`` says it."""
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} Not asked: stdin is not a terminal; pass --yes")
    if not click.confirm(question, default=False, err=True):
        raise SwellError("nothing was deleted")


@dlq.command("redrive")
@click.argument("queue")
@click.option("--max", "max_messages", type=int, default=None, help="Move at most this many.")
@click.option("--id", "ids", multiple=True, metavar="ID",
              help="Move only the dead letter with this event id (repeatable).")
@broker_option
@command
async def dlq_redrive(queue: str, max_messages: int | None, ids: tuple[str, ...],
                      broker_url: str | None) -> None:
    """Move QUEUE's dead-lettered messages (or those with event id ID) back to QUEUE, receive
    counts reset."""
    if ids and max_messages is not None:
        raise ConfigError("--id and --max do not go together: --id names what moves")

    async def go(broker: Broker) -> tuple[int, list[str], str]:
        name = await _dlq_name(broker, queue)
        if name == queue:
            raise ConfigError(f"{queue!r} is a consumer group's dead-letter queue: there is no "
                              "queue to move its events back to (look at them with swell dlq show, "
                              "and run them again with swell replay)")
        if ids:
            return *await redrive_ids(broker, queue, name, ids), name
        return await broker.redrive(queue, max_messages), [], name

    moved, missing, name = await _with_broker(broker_url, go)
    console.print(f"redrove {moved:,} message(s) to {queue}")
    if missing:
        raise SwellError(f"no dead letter with event id {', '.join(map(repr, missing))} in "
                         f"{name} (swell dlq show {queue} lists them)")


REDRIVE_LEASE_S = 60.0  # the dead letters looked through are held this long, if this dies


async def redrive_ids(broker: Broker, queue: str, dlq_name: str, ids: Sequence[str]
                      ) -> tuple[int, list[str]]:
    """Move the dead letters of ``dlq_name`` whose event ids are ``ids`` back to ``queue``; (how
    many moved, the ids not found). The dead-letter queue is leased through until they are
    found; what is not moved is given back at once (its receive count untouched). A message is
    sent before its dead letter is deleted: one that dies in between leaves a copy, not a loss."""
    wanted, held = set(ids), []
    moved = 0
    try:
        while wanted:
            batch = await broker.receive(dlq_name, 100, REDRIVE_LEASE_S)
            if not batch:
                break
            hits = [d for d in batch if _event_id(d.body) in wanted]
            hit = {d.receipt for d in hits}
            held += [d.receipt for d in batch if d.receipt not in hit]
            if hits:
                await broker.send(queue, [Message(body=d.body, headers=redrive_headers(d.headers))
                                          for d in hits])
                await broker.ack([d.receipt for d in hits])
                moved += len(hits)
                wanted -= {_event_id(d.body) for d in hits}
    finally:
        if held:
            await broker.release(held, count=False)
    return moved, [i for i in ids if i in wanted]


def _event_id(body: bytes) -> str | None:
    try:
        return Event.from_json(body).id
    except Exception:  # not an event: it has no id to be named by
        return None


# -- saga -------------------------------------------------------------------------------------
def _saga_states() -> list[str]:
    from swell.patterns.sagas.log import SAGA_STATES

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
_saga_app_option = click.option(
    "--app", "app_path", metavar="APP",
    help="The app that declares the saga, should its queue be undeclared on this broker (else "
         "SWELL_APP, else app in pyproject.toml's [tool.swell]).")


async def _on_saga(broker_url: str | None, app_path: str | None, ref: str,
                   act: Callable[[Broker], Awaitable[Any]]) -> Any:
    """Run an override of saga ``ref``; if its queue (where the message that moves it on goes) is
    not declared on the broker, declare the app first (``--app``, SWELL_APP, pyproject.toml)."""
    from swell.patterns.sagas import admin
    from swell.patterns.sagas.log import queue_of
    from swell.runtime.app import declare

    async def go(broker: Broker) -> Any:
        queue = queue_of((await admin.find(broker.kv, ref)).saga)
        try:
            await broker.queue_spec(queue)
        except UnknownQueue as exc:
            target = find_app(app_path)
            if target is None:
                raise SwellError(f"{exc}: the saga's queue is not declared on this broker; "
                                 f"{NO_APP}") from None
            await declare(load_app(target), broker)
        return await act(broker)

    return await _with_broker(broker_url, go)


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

    from swell.patterns.sagas import admin

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
    _print(table)
    if len(rows) > limit:
        console.print(f"... and {len(rows) - limit:,} more (--limit)")


@saga.command("show")
@click.argument("ref", metavar="ID")
@broker_option
@command
async def saga_show(ref: str, broker_url: str | None) -> None:
    """One saga: its data, its steps and its whole log. ID is NAME/ID, or an ID only one saga has."""
    import json

    from swell.patterns.sagas import admin

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
    _print(steps)
    history = Table(title="log" + (f" ({lg.dropped:,} earlier entries dropped)" if lg.dropped else ""),
                    title_justify="left", header_style="bold")
    for col in ("time", "actor", "event", "step", "state", "reason"):
        history.add_column(col, overflow="fold")
    for e in lg.history:
        history.add_row(_when(e.at, ms=True), e.actor, e.event, e.step or "", _styled(e.state),
                        e.reason or "")
    _print(history)


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
    @_saga_app_option
    @broker_option
    @command
    async def override(ref: str, by: str, reason: str | None, app_path: str | None,
                       broker_url: str | None) -> None:
        from swell.patterns.sagas import admin

        act = getattr(admin, verb)
        _overridden(done, await _on_saga(
            broker_url, app_path, ref, lambda b: act(b, ref, by=by, reason=reason)))


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
@_saga_app_option
@broker_option
@command
async def saga_skip(ref: str, by: str, reason: str, step: str | None, result_json: str | None,
                    app_path: str | None, broker_url: str | None) -> None:
    """Mark a step of saga ID done (going forward) or compensated (compensating) by hand."""
    from swell.patterns.sagas import admin

    result = None if result_json is None else decode_json(result_json)
    _overridden("skipped a step of", await _on_saga(
        broker_url, app_path, ref,
        lambda b: admin.skip(b, ref, by=by, reason=reason, step=step, result=result)))


@saga.command("abort")
@click.argument("ref", metavar="ID")
@_by_option
@click.option("--reason", required=True, help="Why (recorded in the saga's log).")
@_saga_app_option
@broker_option
@command
async def saga_abort(ref: str, by: str, reason: str, app_path: str | None,
                     broker_url: str | None) -> None:
    """Stop saga ID going forward and compensate what may have run, in reverse order."""
    from swell.patterns.sagas import admin

    _overridden("aborted", await _on_saga(
        broker_url, app_path, ref, lambda b: admin.abort(b, ref, by=by, reason=reason)))


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
