"""``swell replay`` as a user runs it: interrupted half-way with Ctrl-C and run again, each event of
the range goes once into the staging sink, and the live group's offsets do not move."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from swell import Runtime
from swell.brokers.base import Message
from swell.brokers.logs import committed
from swell.brokers.sqlite import SqliteBroker
from swell.runtime.loader import load_app

pytestmark = pytest.mark.slow

APP = '''
import asyncio
from typing import Any

from swell import App, Context

app = App("replays")
clicks = app.stream("clicks", partitions=4)
out = app.topic("out")
out.subscribe("all")
staging = app.topic("staging")
staging.subscribe("all")


@app.function(clicks.group("g"), concurrency=4)
async def enrich(data: dict[str, Any], ctx: Context) -> None:
    await asyncio.sleep(0.004)
    await ctx.publish("out", {"i": data["i"], "enriched": True})
'''


def run(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swell", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


async def live_run(app_file: Path, url: str, n: int) -> dict[int, int]:
    """Append ``n`` events and let the live group handle them all; its committed offsets."""
    app = load_app(str(app_file))
    async with Runtime(app, url) as rt:
        from swell import Producer

        producer = Producer(rt.broker, source="/t")
        await rt.broker.append("clicks", [
            Message(body=producer.event("clicks", {"i": i}, key=f"k{i % 16}").to_json(),
                    key=f"k{i % 16}") for i in range(n)])
        deadline = time.monotonic() + 60
        while (await rt.broker.stats("out.all")).total < n:
            assert time.monotonic() < deadline, "the live group did not finish"
            await asyncio.sleep(0.05)
    broker = SqliteBroker(url.removeprefix("sqlite://"))
    try:
        return await committed(broker.kv, "clicks", "g")
    finally:
        await broker.close()


async def contents(url: str) -> tuple[Counter[int], int, dict[int, int]]:
    broker = SqliteBroker(url.removeprefix("sqlite://"))
    try:
        staged = Counter(json.loads(d.body)["data"]["i"] for d in await broker.peek("staging.all", 10_000))
        live = (await broker.stats("out.all")).total
        return staged, live, await committed(broker.kv, "clicks", "g")
    finally:
        await broker.close()


def test_a_replay_interrupted_and_resumed_stages_each_event_once(tmp_path: Path) -> None:
    n = 600
    app_file = tmp_path / "app.py"
    app_file.write_text(APP)
    url = f"sqlite:///{tmp_path / 's.db'}"
    t_from = time.time() - 5
    offsets_before = asyncio.run(live_run(app_file, url, n))
    t_to = time.time() + 1
    env = {**os.environ, "SWELL_BROKER": url, "COLUMNS": "160"}
    args = ["replay", "clicks", "--group", "g", "--from", f"{t_from:.3f}", "--to", f"{t_to:.3f}",
            "--slice", "2s", "--concurrency", "2", "--sink", "staging", "--app", str(app_file)]

    first = subprocess.Popen([sys.executable, "-m", "swell", *args], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while asyncio.run(contents(url))[0].total() < n // 3:  # about a third done: Ctrl-C
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    out1, err1 = first.communicate(timeout=30)
    staged_at_pause = asyncio.run(contents(url))[0]
    assert first.returncode == 130, (out1, err1)
    assert "paused" in err1 and 0 < staged_at_pause.total() < n, (out1, err1)

    second = run(tmp_path, *args, env=env)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stderr
    staged, live, offsets_after = asyncio.run(contents(url))
    print(f"\npaused at {staged_at_pause.total()} of {n}; after resuming: {staged.total()} staged, "
          f"{len(staged)} distinct; live output {live}\n{second.stdout}")
    assert set(staged) == set(range(n)), "an event of the range was not replayed"
    assert max(staged.values()) == 1, "an event was staged twice"
    assert live == n, "the replay wrote to the live output"
    assert offsets_after == offsets_before, "the replay moved the live group's offsets"

    third = run(tmp_path, *args, env=env)  # done: nothing more to do
    assert third.returncode == 0 and asyncio.run(contents(url))[0] == staged


def test_replay_of_an_unknown_group_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    env = {**os.environ, "SWELL_BROKER": f"sqlite:///{tmp_path / 's.db'}"}
    result = run(tmp_path, "replay", "clicks", "--group", "nope", "--from", "1h", "--app",
                 "app.py", env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: 'replays' has no function on group 'nope' of stream 'clicks' (it has: clicks/g)"]
