"""mode="process": ``ctx.idempotent`` and ``ctx.skip_idempotency`` work in a worker process as
they do inline (the parent, which holds the broker, keeps the records)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from swell.runtime.runtime import Runtime

pytestmark = pytest.mark.slow
APPS = Path(__file__).parent / "apps"


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(APPS))
    return tmp_path / "sink.jsonl"


def _lines(sink: Path) -> list[dict[str, Any]]:
    if not sink.exists():
        return []
    return [json.loads(line) for line in sink.read_text().splitlines() if line.endswith("}")]


async def _settled(rt: Runtime, queue: str, bound_s: float = 30) -> None:
    deadline = time.monotonic() + bound_s
    while (await rt.broker.stats(queue)).total:
        assert time.monotonic() < deadline, await rt.broker.stats(queue)
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("queue", ["blocks_async", "blocks_sync"])
async def test_an_idempotent_block_runs_once_per_key_in_a_worker(
        sink: Path, tmp_path: Path, queue: str) -> None:
    from idem_process_app import app  # type: ignore[import-not-found]  # on sys.path by `sink`

    async with Runtime(app, f"sqlite:///{tmp_path}/p.db") as rt:
        first = await rt.send(queue, {"n": 1, "sink": str(sink)})
        await _settled(rt, queue)
        await rt.send(queue, {"n": 1, "sink": str(sink)})  # another event, the same block key
        await _settled(rt, queue)
        assert (await rt.broker.stats(f"{queue}.dlq")).total == 0

    lines = _lines(sink)
    assert [x["effect"] for x in lines if "effect" in x] == [1]
    handled = [x for x in lines if "handled" in x]
    assert [(x["done"], x["result"]) for x in handled] == [(False, {"by": first}),
                                                          (True, {"by": first})]
    assert os.getpid() not in {x["pid"] for x in handled}


async def test_a_block_that_raises_in_a_worker_is_forgotten_so_the_retry_runs_it(
        sink: Path, tmp_path: Path) -> None:
    from idem_process_app import app

    async with Runtime(app, f"sqlite:///{tmp_path}/p.db") as rt:
        await rt.send("blocks_async", {"n": 2, "sink": str(sink), "fail_first": True})
        await _settled(rt, "blocks_async")

    lines = _lines(sink)
    assert [x["attempt"] for x in lines if "effect" in x] == [1, 2]
    assert [x["done"] for x in lines if "handled" in x] == [False]


async def test_skip_idempotency_in_a_worker_lets_a_duplicate_run_again(
        sink: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from idem_process_app import app

    caplog.set_level(logging.WARNING)
    async with Runtime(app, f"sqlite:///{tmp_path}/p.db") as rt:
        for k, skip in (("a", True), ("a", True), ("b", False), ("b", False)):
            await rt.send("skips", {"k": k, "skip": skip, "sink": str(sink)})
            await _settled(rt, "skips")
        assert (await rt.broker.stats("skips.dlq")).total == 0

    assert [x["ran"] for x in _lines(sink)] == ["a", "a", "b"]  # b's duplicate was not run
    assert "idempotency skipped: the effect must be allowed again" in caplog.text
