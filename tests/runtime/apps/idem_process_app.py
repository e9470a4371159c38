"""A process-mode app for tests/runtime/test_process_idempotency.py: ``ctx.idempotent`` blocks in
an async and a plain ``def`` handler, and ``ctx.skip_idempotency`` under a function-level key. The
sink (an O_APPEND file) comes in the event: instances are forked from a warm parent that outlives
a test."""

from __future__ import annotations

import json
import os
from typing import Any

from swell import App, Context, Idempotency, Retry

app = App("idem_procs")
blocks_async = app.queue("blocks_async", visibility_timeout=10, max_receives=5)
blocks_sync = app.queue("blocks_sync", visibility_timeout=10, max_receives=5)
skips = app.queue("skips", visibility_timeout=10, max_receives=5)


def note(sink: str, **line: Any) -> None:
    fd = os.open(sink, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


@app.function(blocks_async, mode="process", concurrency=1, retry=Retry(backoff=0.05))
async def in_async(job: dict[str, Any], ctx: Context) -> None:
    async with ctx.idempotent(f"effect-{job['n']}") as once:
        if not once.done:
            note(job["sink"], effect=job["n"], attempt=ctx.attempt)
            if job.get("fail_first") and ctx.attempt == 1:
                raise RuntimeError("the effect failed half-way")
            once.result = {"by": ctx.event.id}
    note(job["sink"], handled=job["n"], done=once.done, result=once.result, pid=os.getpid())


@app.function(blocks_sync, mode="process", concurrency=1, retry=Retry(backoff=0.05))
def in_sync(job: dict[str, Any], ctx: Context) -> None:
    with ctx.idempotent(f"effect-{job['n']}") as once:  # type: ignore[attr-defined]
        if not once.done:
            note(job["sink"], effect=job["n"], attempt=ctx.attempt)
            once.result = {"by": ctx.event.id}
    note(job["sink"], handled=job["n"], done=once.done, result=once.result, pid=os.getpid())


@app.function(skips, mode="process", concurrency=1,
              idempotency=Idempotency(key=lambda e: (e.data or {})["k"]))
async def skipper(job: dict[str, Any], ctx: Context) -> None:
    note(job["sink"], ran=job["k"])
    if job.get("skip"):
        ctx.skip_idempotency("the effect must be allowed again")
