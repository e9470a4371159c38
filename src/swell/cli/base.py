"""What every command shares: the consoles, the ``--broker`` option, running an async command
with one-line errors, and a broker opened for the length of a call."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table

from swell.brokers.base import Broker
from swell.brokers.url import open_broker
from swell.core.errors import ConfigError, PayloadError, SwellError
from swell.render import fit
from swell.runtime.loader import find_broker

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)

broker_option = click.option(
    "--broker", "broker_url", envvar="SWELL_BROKER", default=None, metavar="URL",
    help="Broker URL (env SWELL_BROKER; else broker in pyproject.toml's [tool.swell]; default "
         "sqlite:///.swell/swell.db).")


def show(what: RenderableType) -> None:
    """Print to stdout; a table as a table if it fits the terminal, else one block per row."""
    console.print(fit(what, console.width) if isinstance(what, Table) else what)


def fail(message: str, code: int = 1) -> None:
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
            fail(str(exc), 2)
        except SwellError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            sys.exit(130)
    return run


async def with_broker(url: str | None, use: Callable[[Broker], Awaitable[T]]) -> T:
    """``use`` a broker opened on ``url``, closed after."""
    broker = open_broker(url)
    try:
        return await use(broker)
    finally:
        await broker.close()


def confirm(question: str) -> None:
    """Ask on a terminal; elsewhere (a script, a pipe) refuse: ``--yes`` says it."""
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} Not asked: stdin is not a terminal; pass --yes")
    if not click.confirm(question, default=False, err=True):
        raise SwellError("nothing was deleted")
