"""``swell dlq``: dead-letter queues listed, shown, purged and redriven."""

from __future__ import annotations

import click
import msgspec
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from swell.brokers.base import H_AT, H_ATTEMPTS, H_ERROR, H_REASON, Broker
from swell.cli.base import broker_option, command, confirm, console, show, with_broker
from swell.core.errors import ConfigError, SwellError
from swell.core.event import Event
from swell.render import stats_table, when
from swell.runtime.redrive import redrive
from swell.runtime.status import dead_letter_queue, read_dead_letter_queues, read_dead_letters


@click.group()
def dlq() -> None:
    """Dead-letter queues: list, show, purge, redrive."""


@dlq.command("list")
@click.argument("queues", nargs=-1, metavar="[QUEUE]...")
@broker_option
@command
async def dlq_list(queues: tuple[str, ...], broker_url: str | None) -> None:
    """Every queue's dead-letter queue (or those of QUEUE...) and how many messages wait in it."""
    rows = await with_broker(broker_url, lambda b: read_dead_letter_queues(b, queues))
    show(stats_table(rows, "dead-letter queues") if rows else "no dead-letter queues")


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
    found = await with_broker(broker_url, lambda b: read_dead_letters(b, queue, limit))
    name, rows, total = found.queue, found.letters, found.total
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
    show(table)


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
        return when(float(at))
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
        name = await dead_letter_queue(broker, queue)
        total = (await broker.stats(name)).total
        if total and not yes:
            confirm(f"delete {total:,} dead-lettered message(s) of {name} for good?")
        return name, await broker.purge(name) if total else 0

    name, gone = await with_broker(broker_url, go)
    console.print(f"purged {gone:,} message(s) from {name}")


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

    moved, missing, name = await with_broker(
        broker_url, lambda b: redrive(b, queue, ids=ids, max_messages=max_messages))
    console.print(f"redrove {moved:,} message(s) to {queue}")
    if missing:
        raise SwellError(f"no dead letter with event id {', '.join(map(repr, missing))} in "
                         f"{name} (swell dlq show {queue} lists them)")
