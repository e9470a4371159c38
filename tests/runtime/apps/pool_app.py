"""The app ``tests/runtime/test_process_pool.py`` runs in process instances.

``work`` (a plain ``def``) and ``awork`` (``async def``) do what their payload's ``do`` says, and
publish what they saw to the ``seen`` queue, so the test learns it through the pool's ``on_publish``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pydantic

from swell import App, Context, Throttled

app = App("pool")
jobs = app.queue("jobs")


class Job(pydantic.BaseModel):
    do: str = "ok"
    n: int = 0
    sleep_s: float = 0.0


@app.function(jobs, competing=True)  # two handlers the pool tests run one at a time
def work(job: Job, ctx: Context) -> None:
    if job.do == "fail":
        raise ValueError(f"boom {job.n}")
    if job.do == "throttle":
        raise Throttled(2)
    if job.do == "sleep":
        time.sleep(job.sleep_s)
    if job.do == "exit":
        os._exit(3)
    publish: Any = ctx.publish  # a plain def handler's Context publishes without await
    first = publish("seen", {"pid": os.getpid(), "n": job.n}, key="k")
    publish("seen", {"got": first, "attempt": ctx.attempt}, delay_s=1.5)


@app.function(jobs, competing=True)  # two handlers the pool tests run one at a time
async def awork(job: Job, ctx: Context) -> None:
    if job.do == "sleep":
        await asyncio.sleep(job.sleep_s)
    extended = await ctx.extend(7.0)
    await ctx.publish("seen", {"pid": os.getpid(), "extended": extended, "n": job.n})
