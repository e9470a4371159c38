"""A Runtime started for the length of a block, in the test's own event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from swell import App, Broker, Runtime


@asynccontextmanager
async def running(app: App, broker: Broker | str, grace_s: float = 5.0) -> AsyncIterator[Runtime]:
    """``async with running(app, broker) as rt:``: started, and stopped after the block, giving
    in-flight handlers ``grace_s`` (a small one cancels them mid-step, as a crash would)."""
    rt = Runtime(app, broker)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop(grace_s)
