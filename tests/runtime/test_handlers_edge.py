"""Handlers at the edges: an ``async def`` under a plain decorator, generators, ``sys.exit()`` in a
handler, two functions on one queue. None of them may ack an event unrun or stop the runtime."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import pydantic
import pytest

from support.eventually import until
from support.running import running
from support.swellprocs import complete_lines
from swell import App, AppError, Context, Retry, Runtime, SyncContext
from swell.brokers.base import H_ERROR
from swell.brokers.memory import MemoryBroker
from swell.runtime.handler import Handler
from swell.runtime.process import ProcessExecutor

APPS = Path(__file__).parent / "apps"


def plain(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator as many are written: a plain ``def`` that passes the call on."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return wrapper


def bare(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The same without ``functools.wraps``: nothing says the wrapped function is async."""
    def wrapper(data: Any) -> Any:
        return fn(data)
    return wrapper


# -- 4. an async handler swell cannot see is async ---------------------------------------------------
async def test_an_async_handler_under_a_plain_decorator_runs(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    got: list[Any] = []

    @app.function("in")
    @plain
    async def handle(data: dict[str, int], ctx: Context) -> None:
        await ctx.publish("out", data)  # an awaitable Context: it runs on the loop
        got.append(data)

    app.queue("out")
    async with running(app, broker) as rt:
        await rt.send("in", {"n": 1})
        await until(lambda: got == [{"n": 1}], "the wrapped handler to run", 5)
        await until(lambda: _holds(broker, "in", 0), "the event to be acked", 5)
    assert (await broker.stats("out")).depth == 1


async def test_a_plain_def_handler_may_ask_for_a_sync_context(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    app.queue("out")
    got: list[str] = []

    @app.function("in")
    def handle(data: dict[str, int], ctx: SyncContext) -> None:
        got.append(ctx.publish("out", data))  # a plain call in a thread: no await

    async with running(app, broker) as rt:
        await rt.send("in", {"n": 1})
        await until(lambda: len(got) == 1, "the sync handler to publish", 5)
        await until(lambda: _holds(broker, "in", 0), "the event to be acked", 5)
    assert (await broker.stats("out")).depth == 1
    with pytest.raises(AppError, match="'async def' handler takes a Context, not a SyncContext"):
        @app.function("out")
        async def wrong(data: dict[str, int], ctx: SyncContext) -> None: ...


async def test_an_async_callable_object_runs(broker: MemoryBroker) -> None:
    app = App("t")
    app.queue("in")
    got: list[Any] = []

    class Handler:
        __name__ = "handle"

        async def __call__(self, data: dict[str, int]) -> None:
            got.append(data)

    app.function("in")(Handler())
    async with running(app, broker) as rt:
        await rt.send("in", {"n": 1})
        await until(lambda: got == [{"n": 1}], "the callable object to run", 5)


async def test_a_handler_whose_call_returns_a_coroutine_is_never_acked_unrun(
        broker: MemoryBroker, caplog: pytest.LogCaptureFixture) -> None:
    app = App("t")
    app.queue("in")
    ran: list[Any] = []

    @app.function("in", retry=Retry(attempts=2, backoff=0.01))
    @bare
    async def handle(data: dict[str, int]) -> None:
        ran.append(data)

    async with running(app, broker) as rt:
        await rt.send("in", {"n": 1})
        await until(lambda: _holds(broker, "in.dlq", 1), "the event to be dead-lettered", 5)
    (dead,) = await broker.peek("in.dlq")
    assert "coroutine" in dead.headers[H_ERROR] and "async def" in dead.headers[H_ERROR]
    assert ran == []
    assert "never awaited" not in caplog.text


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_generator_handler_is_refused_at_declaration(kind: str) -> None:
    app = App("t")
    app.queue("in")

    async def agen(data: Any) -> AsyncIterator[Any]:
        yield data

    def gen(data: Any) -> Iterator[Any]:
        yield data

    handler = agen if kind == "async" else gen
    with pytest.raises(AppError, match="generator") as info:
        app.function("in")(handler)
    assert "ctx.publish" in str(info.value)
    with pytest.raises(AppError, match="generator"):
        app.function("in", name="wrapped")(plain(handler))


# -- 5. two functions on one queue ---------------------------------------------------------------------
def test_a_second_function_on_a_queue_is_refused_and_pointed_to_topics() -> None:
    app = App("t")
    orders = app.queue("orders")

    @app.function(orders)
    async def bill(data: Any) -> None: ...

    with pytest.raises(AppError) as info:
        @app.function(orders)
        async def ship(data: Any) -> None: ...

    message = str(info.value)
    assert "'orders'" in message and "'bill'" in message
    assert "topic" in message and "subscribe" in message and "competing=True" in message
    assert set(app.functions) == {"bill"}


def test_competing_consumers_share_a_queue_when_each_says_so() -> None:
    app = App("t")
    orders = app.queue("orders")

    @app.function(orders)
    async def first(data: Any) -> None: ...

    with pytest.raises(AppError, match="competing=True"):
        @app.function(orders, competing=True)  # the first one did not say so
        async def second(data: Any) -> None: ...

    other = App("t2")
    jobs = other.queue("jobs")
    for name in ("a", "b", "c"):
        other.function(jobs, competing=True, name=name)(_noop)
    assert [f.queue.name for f in other.functions.values()] == ["jobs"] * 3


def test_functions_on_one_topic_each_with_a_subscription_are_fine() -> None:
    app = App("t")
    orders = app.topic("orders")
    app.function(orders.subscribe("billing"), name="bill")(_noop)
    app.function(orders.subscribe("shipping"), name="ship")(_noop)
    assert len(app.functions) == 2


def test_a_second_function_on_one_consumer_group_is_refused() -> None:
    app = App("t")
    group = app.stream("clicks", partitions=2).group("g")
    app.function(group, name="a")(_noop)
    with pytest.raises(AppError, match="group"):
        app.function(group, name="b")(_noop)


async def _noop(data: Any) -> None:
    pass


# -- 8. sys.exit() and KeyboardInterrupt in a handler ---------------------------------------------------
@pytest.mark.parametrize("style", ["async", "sync"])
@pytest.mark.parametrize("how", ["exit", "interrupt"])
async def test_sys_exit_in_a_handler_is_a_failed_attempt(
        broker: MemoryBroker, caplog: pytest.LogCaptureFixture, style: str, how: str) -> None:
    caplog.set_level(logging.WARNING, logger="swell.executor")
    app = App("t")
    app.queue("in")
    done: list[tuple[int, int]] = []

    def body(data: dict[str, int], attempt: int) -> None:
        if data["n"] == 1 and attempt == 1:
            if how == "exit":
                sys.exit()
            raise KeyboardInterrupt
        done.append((data["n"], attempt))

    if style == "async":
        async def handle(data: dict[str, int], ctx: Context) -> None:
            body(data, ctx.attempt)
    else:
        def handle(data: dict[str, int], ctx: Context) -> None:  # type: ignore[misc]
            body(data, ctx.attempt)
    app.function("in", retry=Retry(attempts=3, backoff=0.01))(handle)

    async with running(app, broker) as rt:
        first = await rt.send("in", {"n": 1})
        await until(lambda: (1, 2) in done, "the retry of the event that exited", 5)
        await rt.send("in", {"n": 2})  # the runtime goes on
        await until(lambda: (2, 1) in done, "the next event", 5)

    raised = "SystemExit" if how == "exit" else "KeyboardInterrupt"
    logged = [r for r in caplog.records if r.name == "swell.executor" and r.exc_info]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert first in logged[0].getMessage() and logged[0].levelno >= logging.WARNING
    assert logged[0].exc_info is not None and raised in repr(logged[0].exc_info[1].__class__)


async def test_a_failed_attempt_logs_its_traceback_once(
        broker: MemoryBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = App("t")
    app.queue("in")
    attempts: list[int] = []

    @app.function("in", retry=Retry(attempts=2, backoff=0.01))
    async def handle(data: Any, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        _divide()

    async with running(app, broker) as rt:
        event_id = await rt.send("in", {})
        await until(lambda: _holds(broker, "in.dlq", 1), "the dead letter", 5)

    logged = [r for r in caplog.records if r.name == "swell.executor" and r.exc_info]
    assert attempts == [1, 2] and len(logged) == 2
    for r in logged:
        assert event_id in r.getMessage() and r.levelno >= logging.WARNING
        assert r.exc_info is not None and r.exc_info[0] is ZeroDivisionError
    text = caplog.text
    assert "Traceback" in text and "_divide" in text  # the frame that raised, not only its message


def _divide() -> float:
    return 1 / 0


async def _holds(broker: MemoryBroker, queue: str, n: int) -> bool:
    return (await broker.stats(queue)).total == n


# -- process mode --------------------------------------------------------------------------------------
@pytest.fixture
def edge_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(APPS))
    import edge_app  # type: ignore[import-not-found]

    return edge_app.app


def _sink_lines(sink: Path) -> list[list[str]]:
    return [line.split() for line in complete_lines(sink)] if sink.exists() else []


@pytest.mark.slow
async def test_process_mode_runs_an_async_handler_under_a_plain_decorator(
        edge_app: App, tmp_path: Path) -> None:
    sink = tmp_path / "sink.txt"
    async with Runtime(edge_app, f"sqlite:///{tmp_path}/p.db") as rt:
        await rt.send("wrapped", {"sink": str(sink)})
        deadline = time.monotonic() + 30
        while not _sink_lines(sink):
            assert time.monotonic() < deadline, await rt.broker.stats("wrapped")
            assert (await rt.broker.stats("wrapped")).total, "acked without running"
            await asyncio.sleep(0.05)
    ((tag, attempt, pid),) = _sink_lines(sink)
    assert (tag, attempt) == ("wrapped", "1") and int(pid) != os.getpid()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["exit", "interrupt"])
async def test_process_mode_sys_exit_is_a_failed_attempt_not_a_crash(
        edge_app: App, tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str) -> None:
    caplog.set_level(logging.WARNING)
    sink = tmp_path / "sink.txt"
    async with Runtime(edge_app, f"sqlite:///{tmp_path}/p.db") as rt:
        event_id = await rt.send("exits", {"sink": str(sink), "how": how})
        deadline = time.monotonic() + 30
        while not _sink_lines(sink):
            assert time.monotonic() < deadline, await rt.broker.stats("exits")
            await asyncio.sleep(0.05)
        ex = rt.functions["exits"].dispatcher.executor
        assert isinstance(ex, ProcessExecutor)
        crashes = ex.pool.crashes
    ((tag, attempt, _),) = _sink_lines(sink)
    assert (tag, attempt) == (how, "2")
    assert crashes == 0, "the instance died instead of failing the attempt"
    raised = "SystemExit: 3" if how == "exit" else "KeyboardInterrupt"
    (logged,) = [r for r in caplog.records if r.name == "swell.executor" and event_id in r.getMessage()]
    assert raised in logged.getMessage() and "Traceback" in logged.getMessage()




def test_annotated_constraints_on_a_payload_are_validated() -> None:
    """``Annotated[int, Field(gt=0)]`` keeps its constraint (type hints read with their extras)."""
    handler = Handler.inspect(_positive)
    assert handler.adapter is not None
    assert handler.adapter.validate_python(3) == 3
    with pytest.raises(pydantic.ValidationError):
        handler.adapter.validate_python(0)


async def _positive(n: Annotated[int, pydantic.Field(gt=0)]) -> None:
    pass
