"""``swell saga``: sagas listed and shown; an operator's overrides (pause, resume, retry, skip,
abort), each recorded in the saga's log."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import click
from rich.table import Table

from swell.brokers.base import Broker
from swell.cli.base import broker_option, command, console, show, with_broker
from swell.core.codec import decode_json
from swell.core.errors import SwellError, UnknownQueue
from swell.patterns.sagas.log import SAGA_STATES, SagaLog, queue_of
from swell.render import when
from swell.runtime.loader import NO_APP, find_app, load_app
from swell.runtime.status import read_saga, read_sagas

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
    from swell.runtime.app import declare

    async def go(broker: Broker) -> Any:
        queue = queue_of((await read_saga(broker, ref)).saga)
        try:
            await broker.queue_spec(queue)
        except UnknownQueue as exc:
            target = find_app(app_path)
            if target is None:
                raise SwellError(f"{exc}: the saga's queue is not declared on this broker; "
                                 f"{NO_APP}") from None
            await declare(load_app(target), broker)
        return await act(broker)

    return await with_broker(broker_url, go)


@click.group()
def saga() -> None:
    """Sagas: list and show their logs; pause, resume, retry, skip or abort one (recorded)."""


@saga.command("list")
@click.option("--saga", "name", metavar="NAME", help="Only the sagas of this name.")
@click.option("--state", type=click.Choice(list(SAGA_STATES)), help="Only sagas in this state.")
@click.option("--limit", default=50, show_default=True, help="Show at most this many rows.")
@broker_option
@command
async def saga_list(name: str | None, state: str | None, limit: int, broker_url: str | None) -> None:
    """Sagas, the most recently changed first: id, saga, state, step, updated."""
    rows = await with_broker(broker_url, lambda b: read_sagas(b, saga=name, state=state))
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
        table.add_row(lg.id, lg.saga, _styled(lg.state), lg.current_name() or "-", when(lg.updated))
    show(table)
    if len(rows) > limit:
        console.print(f"... and {len(rows) - limit:,} more (--limit)")


@saga.command("show")
@click.argument("ref", metavar="ID")
@broker_option
@command
async def saga_show(ref: str, broker_url: str | None) -> None:
    """One saga: its data, its steps and its whole log. ID is NAME/ID, or an ID only one saga has."""
    lg = await with_broker(broker_url, lambda b: read_saga(b, ref))
    console.print(f"[bold]saga {lg.saga}/{lg.id}[/]: {_styled(lg.state)}"
                  + (f" at step {lg.current_name()}" if lg.current_name() else "")
                  + (f" (paused while {lg.paused_from})" if lg.paused_from else "")
                  + f"; started {when(lg.created)}, updated {when(lg.updated)}", highlight=False)
    console.print(f"data: {json.dumps(lg.data)}", highlight=False, soft_wrap=True)
    steps = Table(title="steps", title_justify="left", header_style="bold")
    for col in ("step", "state", "runs", "failures", "lost", "result", "error", "compensation"):
        steps.add_column(col, overflow="fold")
    for st in lg.steps:
        comp = (f"{st.comp_runs} run(s), {st.comp_failures} failure(s)" if st.comp_runs else "-") \
            + (f": {st.comp_error}" if st.comp_error else "")
        steps.add_row(st.name, _styled(st.state), str(st.runs), str(st.failures), str(st.lost),
                      json.dumps(st.result) if st.has_result else "-", st.error or "", comp)
    show(steps)
    history = Table(title="log" + (f" ({lg.dropped:,} earlier entries dropped)" if lg.dropped else ""),
                    title_justify="left", header_style="bold")
    for col in ("time", "actor", "event", "step", "state", "reason"):
        history.add_column(col, overflow="fold")
    for e in lg.history:
        history.add_row(when(e.at, ms=True), e.actor, e.event, e.step or "", _styled(e.state),
                        e.reason or "")
    show(history)


def _overridden(what: str, lg: SagaLog) -> None:
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

