"""Poison events: a body built to break decoding or validation is dead-lettered at once with its
reason, the runtime goes on with the next event, and ``swell dlq show`` prints what is stored."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

from support.eventually import until
from swell import App, Broker, Idempotency, Message, Runtime
from swell.brokers.base import H_ERROR, H_REASON, QueueSpec
from swell.brokers.memory import MemoryBroker
from swell.brokers.sqlite import SqliteBroker

DEPTH = 3000


def deep_event(depth: int = DEPTH) -> bytes:
    """A CloudEvent whose data is a list nested ``depth`` deep."""
    data = b"[" * depth + b"]" * depth
    return (b'{"specversion": "1.0", "id": "poison-1", "source": "/attacker", "type": "t", '
            b'"data": ' + data + b"}")


@pytest.fixture(params=["memory", "sqlite"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    b: Broker = MemoryBroker() if request.param == "memory" else SqliteBroker(str(tmp_path / "s.db"))
    yield b
    await b.close()


async def dead_lettered(broker: Broker, queue: str) -> tuple[str, str]:
    async def there() -> bool:
        return (await broker.stats(f"{queue}.dlq")).total >= 1

    # at once: the lease (30 s) must not have to run out, nor max_receives be reached
    await until(there, f"a dead letter of {queue}", 5)
    (dead,) = await broker.peek(f"{queue}.dlq")
    return dead.headers[H_REASON], dead.headers.get(H_ERROR, "")


class Exploding(pydantic.BaseModel):
    n: int

    @pydantic.field_validator("n")
    @classmethod
    def _explode(cls, value: int) -> int:
        raise RecursionError("the validator went too deep")


@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotent"])
async def test_a_deeply_nested_event_is_dead_lettered_at_once_as_malformed(
        broker: Broker, idempotent: bool) -> None:
    app = App("t")
    app.queue("in", visibility_timeout=30, max_receives=5)
    got: list[Any] = []

    @app.function("in", idempotency=Idempotency() if idempotent else None)
    async def handle(data: Any) -> None:
        got.append(data)

    async with Runtime(app, broker) as rt:
        await broker.send("in", [Message(body=deep_event())])
        reason, error = await dead_lettered(broker, "in")
        await rt.send("in", {"n": 1})  # the function is still at work
        await until(lambda: got == [{"n": 1}], "the next event", 5)

    assert reason == "malformed event"
    assert "nested too deeply" in error


async def test_a_validator_that_raises_anything_makes_the_event_invalid(broker: Broker) -> None:
    app = App("t")
    app.queue("in", visibility_timeout=30, max_receives=5)
    got: list[Any] = []

    @app.function("in")
    async def handle(data: Exploding) -> None:
        got.append(data)

    async with Runtime(app, broker) as rt:
        await rt.send("in", {"n": 1})
        reason, error = await dead_lettered(broker, "in")

    assert got == []
    assert reason == "invalid payload"
    assert "RecursionError" in error and "too deep" in error


@pytest.mark.slow
def test_dlq_show_prints_what_is_stored_when_it_is_no_event(tmp_path: Path) -> None:
    db = tmp_path / "s.db"

    async def store() -> None:
        b = SqliteBroker(str(db))
        try:
            await b.declare_queue(QueueSpec(name="orders"))
            await b.send("orders", [Message(body=deep_event()), Message(body=b"\xffnot json at all")])
            for d in await b.receive("orders", 2):
                assert await b.dead_letter(d.receipt, "malformed event", "nested too deeply")
        finally:
            await b.close()

    asyncio.run(store())
    env = {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "SWELL_BROKER"}}
    env["COLUMNS"] = "200"
    result = subprocess.run([sys.executable, "-m", "swell", "dlq", "show", "orders",
                             "--broker", f"sqlite:///{db}"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "orders.dlq: 2 shown" in result.stdout
    assert '{"specversion": "1.0", "id": "poison-1"' in result.stdout  # the raw body, truncated
    assert "[[[[" in result.stdout and "]]]]" not in result.stdout
    assert "not json at all" in result.stdout
    assert result.stdout.count("nested too deeply") == 2
