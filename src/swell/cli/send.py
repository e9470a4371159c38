"""``swell send``: events to a queue, a topic or a stream, all of the input or none of it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import click
import msgspec

from swell.brokers.base import Broker, Message
from swell.brokers.producer import Kind, Producer
from swell.brokers.url import default_broker_url, scheme_of
from swell.cli.base import broker_option, command, err_console, with_broker
from swell.cli.payloads import Line, attributes_of, read_payloads, utf8_option
from swell.core.config import seconds
from swell.core.errors import ConfigError, MessageTooLarge, PayloadError, SwellError, UnknownQueue
from swell.runtime.loader import find_app, load_app

SEND_BATCH = 500  # events per call to a broker whose calls are not one transaction (NATS)


def _line_id(command: list[Any], line: Line) -> str:
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


def _oversize(target: str, lines: list[Line], bodies: list[bytes], limit: int) -> None:
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


@click.command()
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
        utf8_option(option, value)
    delay_s = seconds(delay, name="--delay")
    lines = read_payloads(data)
    if event_id is not None and len(lines) > 1:
        raise ConfigError("--id names one event; with several lines on stdin leave it out")
    attributes = attributes_of(attrs)
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
            stored, kind = await with_broker(url, go)
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

