"""The worker side of process instances: what runs inside each forked instance. Its handler's
Context is the one Context over a ``ChannelBackend``: every effect is a request to the parent
(see ``frames``), which holds the broker and serves it as an inline handler's would be."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Awaitable
from contextlib import nullcontext, suppress
from typing import Any, TypeVar

import msgspec

from swell.brokers.producer import Producer, Target, target_name
from swell.core import errors
from swell.core.describe import describe
from swell.core.errors import AppError, PayloadError, SwellError
from swell.core.outcome import Outcome, outcome_of
from swell.runtime.app import App, Function
from swell.runtime.context import Begun, Context, SyncContext
from swell.runtime.executor import NotRun, bind, check_result
from swell.runtime.process.frames import (
    HEADER,
    Block,
    Done,
    Extend,
    LoadFailed,
    Publish,
    Ready,
    Reply,
    Request,
    Run,
    Skip,
    decode_in_worker,
    frame,
)

T = TypeVar("T")


class Channel:
    """The worker's end of the socket: blocking, one request at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._in = sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, msg: msgspec.Struct) -> None:
        with self._lock:
            self._sock.sendall(frame(msg))

    def _recv(self) -> Run | Reply | None:
        header = self._in.read(HEADER.size)
        if len(header) < HEADER.size:
            return None
        msg: Run | Reply = decode_in_worker(self._in.read(HEADER.unpack(header)[0]))
        return msg

    def recv(self) -> Run | Reply | None:
        with self._lock:
            return self._recv()

    def call(self, msg: Request) -> Any:
        with self._lock:
            try:
                self._sock.sendall(frame(msg))
            except (TypeError, msgspec.EncodeError) as exc:
                raise PayloadError(f"cannot encode as JSON: {exc}") from exc
            reply = self._recv()
        if not isinstance(reply, Reply):
            raise SwellError("the runtime went away")
        if reply.error is not None:
            raise _rebuild_error(reply.error_type, reply.error)
        return reply.value


def _rebuild_error(type_name: str | None, message: str) -> SwellError:
    """The parent's error as the nearest swell error that takes just a message."""
    cls = getattr(errors, type_name or "", None)
    if isinstance(cls, type) and issubclass(cls, SwellError):
        for base in cls.__mro__:
            if issubclass(base, SwellError) and base.__init__ is SwellError.__init__:
                return base(message)
    return SwellError(f"{type_name}: {message}")


class ChannelBackend:
    """A worker's Context backend: each effect a blocking request to the parent (an async
    handler's loop waits for it, as its event is all this instance runs)."""

    __slots__ = ("_channel",)

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    async def publish(self, target: Target, data: Any, delay_s: float,
                      attrs: dict[str, Any]) -> str:
        # the parent knows the target by its name
        return str(self._channel.call(Publish(target_name(target), data, attrs, delay_s)))

    async def extend(self, seconds: float) -> bool:
        return bool(self._channel.call(Extend(seconds)))

    async def begin(self, key: str) -> Begun | None:
        begun = self._channel.call(Block("begin", key))
        if begun is None:
            return None
        token, done, result = begun
        return int(token), bool(done), result

    async def end(self, token: int, ok: bool, result: Any = None) -> None:
        if not ok:
            self._channel.call(Block("failed", token=token))
            return
        try:
            self._channel.call(Block("done", token=token, result=result))
        except PayloadError:  # a result that cannot travel is not kept, as inline
            self._channel.call(Block("done", token=token))

    def skip(self, reason: str, event_id: str) -> None:
        self._channel.call(Skip(reason, event_id))

    @property
    def producer(self) -> Producer:
        raise AppError("a worker process has no producer: ctx.publish goes through its parent")

    def wait(self, call: Awaitable[T]) -> T:
        """Run one of the calls above to its end: none of them suspends (each blocks instead)."""
        steps = call.__await__()
        try:
            steps.send(None)
        except StopIteration as done:
            value: T = done.value
            return value
        raise AssertionError("a worker's Context call suspended")


def find_function(target: str, function: str) -> Function:
    """``function`` of the App in module ``target`` (``pkg.module`` or ``pkg.module:attribute``)."""
    name, _, attr = target.partition(":")
    module = importlib.import_module(name)
    apps = [getattr(module, attr, None)] if attr else list(vars(module).values())
    found = [a.functions[function] for a in apps if isinstance(a, App) and function in a.functions]
    if len(found) != 1:
        raise AppError(f"{target}: {len(found)} swell Apps have a function {function!r}"
                       + ("" if found else "; an app must be a module attribute to run in processes"))
    return found[0]


def worker_main(sock: socket.socket, target: str, function: str) -> None:
    """An instance: load the function, say so, then run events one at a time until the channel closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runtime decides when its instances stop
    channel = Channel(sock)
    try:
        fn = find_function(target, function)
    except Exception as exc:
        with suppress(OSError):
            channel.send(LoadFailed(describe(exc)))
        return
    is_async = fn.handler.is_async
    with suppress(OSError), asyncio.Runner() if is_async else nullcontext() as runner:
        channel.send(Ready(os.getpid(), is_async))
        while isinstance(msg := channel.recv(), Run):
            channel.send(_invoke(fn, msg, channel, runner))


def _invoke(fn: Function, run: Run, channel: Channel, runner: asyncio.Runner | None) -> Done:
    received = time.monotonic()
    deadline = None if run.timeout_s is None else received + run.timeout_s
    kind = SyncContext if runner is None else Context
    backend = ChannelBackend(channel)
    # (deadline on time.monotonic(), which is also the worker loop's clock)
    bound = bind(fn, run.body, lambda event: kind(
        event=event, attempt=run.attempt, deadline=deadline, function=fn.name, backend=backend,
        now=time.monotonic))
    if isinstance(bound, Outcome):
        return Done(msgspec.structs.replace(bound, service_s=time.monotonic() - received), 0.0)
    event, kwargs = bound
    started = time.monotonic()
    try:
        if runner is None:
            check_result(fn, fn.handler.fn(**kwargs))
        elif (exited := runner.run(_call_async(fn, kwargs, deadline))) is not None:
            raise exited
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        # (SystemExit and KeyboardInterrupt too: the handler's own, a failed attempt; this
        # instance goes on, as it does after any other exception)
        now = time.monotonic()
        timed_out = isinstance(exc, TimeoutError) and deadline is not None and now >= deadline
        outcome = outcome_of(exc, run.timeout_s, timed_out, now - received)
        trace = None
        if outcome.kind == "failed":
            trace = str(exc) if isinstance(exc, NotRun) else "".join(traceback.format_exception(exc))
        return Done(outcome, started - received, event.id, trace)
    return Done(Outcome("ok", service_s=time.monotonic() - received), started - received)


async def _call_async(fn: Function, kwargs: dict[str, Any], deadline: float | None
                      ) -> SystemExit | KeyboardInterrupt | None:
    """Run an async handler; its ``SystemExit`` or ``KeyboardInterrupt`` comes back as a value,
    to be raised again outside the loop (out of a task, either would stop the loop itself)."""
    try:
        call = fn.handler.fn(**kwargs)
        if not inspect.isawaitable(call):  # a decorator that gave a value: nothing to await
            check_result(fn, call)
            return None
        async with asyncio.timeout_at(deadline):
            await call
    except (SystemExit, KeyboardInterrupt) as exc:
        return exc
    return None
