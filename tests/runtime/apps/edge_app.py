"""Handlers at the edges, run in process instances by tests/runtime/test_handlers_edge.py: an
``async def`` under a plain decorator, and one that calls ``sys.exit()`` (or raises
``KeyboardInterrupt``) on its first attempt. Each writes ``<tag> <attempt> <pid>`` to the sink the
event names (an O_APPEND file) when it gets to its end."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from swell import App, Context, Retry

app = App("edges")
wrapped_q = app.queue("wrapped", visibility_timeout=5)
exits_q = app.queue("exits", visibility_timeout=5)


def logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return wrapper


def _write(job: dict[str, Any], tag: str, attempt: int) -> None:
    fd = os.open(str(job["sink"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{tag} {attempt} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@app.function(wrapped_q, mode="process", concurrency=1)
@logged
async def wrapped(job: dict[str, Any], ctx: Context) -> None:
    _write(job, "wrapped", ctx.attempt)


@app.function(exits_q, mode="process", concurrency=1, retry=Retry(attempts=3, backoff=0.01))
def exits(job: dict[str, Any], ctx: Context) -> None:
    if ctx.attempt == 1:
        if job["how"] == "exit":
            sys.exit(3)
        raise KeyboardInterrupt
    _write(job, job["how"], ctx.attempt)
