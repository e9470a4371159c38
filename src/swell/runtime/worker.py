"""The worker side of process instances: what runs inside each forked instance, and the frames
it exchanges with the parent (msgpack over a socket pair: a 4-byte length, then the message)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import signal
import socket
import struct
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
    suppress,
)
from typing import Any

import msgspec

from swell.core import errors
from swell.core.errors import AppError, InProgress, PayloadError, SwellError
from swell.core.event import Event
from swell.patterns.idempotency import Once
from swell.runtime.app import App, Function
from swell.runtime.context import Context
from swell.runtime.executor import NotRun, Outcome, bind, check_result, describe, outcome_of
from swell.runtime.producer import Target, target_name

_HEADER = struct.Struct("!I")


# -- messages --------------------------------------------------------------------------------------
class _Run(msgspec.Struct, tag="run", array_like=True):
    body: bytes
    attempt: int
    timeout_s: float | None


class _Reply(msgspec.Struct, tag="reply", array_like=True):
    value: Any = None
    error: str | None = None
    error_type: str | None = None


class _Ready(msgspec.Struct, tag="ready", array_like=True):
    pid: int
    is_async: bool


class _LoadFailed(msgspec.Struct, tag="load_failed", array_like=True):
    error: str


class _Done(msgspec.Struct, tag="done", array_like=True):
    outcome: Outcome
    queued_s: float  # from the run message arriving to the handler being called
    event_id: str | None = None
    trace: str | None = None  # a failed attempt's traceback, for the parent's log


class _Publish(msgspec.Struct, tag="publish", array_like=True):
    queue: str
    data: Any
    attrs: dict[str, Any]


class _Extend(msgspec.Struct, tag="extend", array_like=True):
    seconds: float


class _Block(msgspec.Struct, tag="block", array_like=True):
    """``ctx.idempotent(key)`` (``op`` begin, then done or failed with the ``token`` begin gave)
    and ``ctx.skip_idempotency(reason)`` (``op`` skip, the reason as ``key``), kept by the parent.
    A begin is answered ``[token, done, result]``, or ``None`` if another attempt holds the key."""

    op: str
    key: str
    token: int = 0
    result: Any = None


_ToWorker = _Run | _Reply
_FromWorker = _Ready | _LoadFailed | _Done | _Publish | _Extend | _Block


def _enc_hook(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)  # pydantic models travel as their JSON form, as inline
    if dump is not None:
        return dump(mode="json")
    raise TypeError(f"cannot encode {type(obj).__name__}")


_encode = msgspec.msgpack.Encoder(enc_hook=_enc_hook).encode
_decode_in_parent = msgspec.msgpack.Decoder(_FromWorker).decode
_decode_in_worker = msgspec.msgpack.Decoder(_ToWorker).decode


def _frame(msg: msgspec.Struct) -> bytes:
    payload = _encode(msg)
    return _HEADER.pack(len(payload)) + payload


# -- the worker --------------------------------------------------------------------------------------
class _Channel:
    """The worker's end of the socket: blocking, one request at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._in = sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, msg: msgspec.Struct) -> None:
        with self._lock:
            self._sock.sendall(_frame(msg))

    def _recv(self) -> _Run | _Reply | None:
        header = self._in.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return None
        msg: _Run | _Reply = _decode_in_worker(self._in.read(_HEADER.unpack(header)[0]))
        return msg

    def recv(self) -> _Run | _Reply | None:
        with self._lock:
            return self._recv()

    def call(self, msg: _Publish | _Extend | _Block) -> Any:
        with self._lock:
            self._sock.sendall(_frame(msg))
            reply = self._recv()
        if not isinstance(reply, _Reply):
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


class _WorkerContext(Context):
    """A Context whose ``publish``, ``extend``, ``idempotent`` and ``skip_idempotency`` are
    requests to the parent process, which holds the broker (and so the idempotency records)."""

    __slots__ = ("_channel",)

    # no super().__init__(): there is no broker, producer or lease in a worker
    def __init__(self, *, event: Event[Any], attempt: int, deadline: float | None, function: str,
                 channel: _Channel) -> None:
        self.event = event
        self.attempt = attempt
        self.deadline = deadline  # on time.monotonic(), which is also the worker loop's clock
        self.function = function
        self._channel = channel

    @property
    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def _request(self, target: Target, data: Any, delay_s: float,
                 attrs: dict[str, Any]) -> _Publish:
        attrs.setdefault("correlationid", self.event.correlationid or self.event.id)
        attrs.setdefault("traceparent", self.event.traceparent)
        attrs["delay_s"] = delay_s
        return _Publish(target_name(target), data, attrs)  # the parent knows it by its name

    def _call(self, msg: _Publish | _Extend | _Block) -> Any:
        try:
            return self._channel.call(msg)
        except (TypeError, msgspec.EncodeError) as exc:
            raise PayloadError(f"cannot encode as JSON: {exc}") from exc

    async def publish(self, target: Target, data: Any, *, delay_s: float = 0.0,
                      **attrs: Any) -> str:
        return str(self._call(self._request(target, data, delay_s, attrs)))

    async def extend(self, seconds: float) -> bool:
        return bool(self._call(_Extend(seconds)))

    def idempotent(self, key: str) -> AbstractAsyncContextManager[Once]:
        return self._async_block(key)

    @asynccontextmanager
    async def _async_block(self, key: str) -> AsyncIterator[Once]:
        with self._block(key) as once:
            yield once

    @contextmanager
    def _block(self, key: str) -> Iterator[Once]:
        """The block's record is the parent's (the inline ``ctx.idempotent``, run there)."""
        begun = self._call(_Block("begin", key))
        if begun is None:
            raise InProgress(key)
        token, done, result = begun
        once = Once(done, result)
        if done:  # the parent has nothing more to do for it
            yield once
            return
        try:
            yield once
        except BaseException:
            self._call(_Block("failed", key, token))
            raise
        try:
            self._call(_Block("done", key, token, once.result))
        except PayloadError:  # a result that cannot travel is not kept, as inline
            self._call(_Block("done", key, token))

    def skip_idempotency(self, reason: str) -> None:
        self._call(_Block("skip", reason))


class _SyncWorkerContext(_WorkerContext):
    """The worker Context of a plain ``def`` handler: ``publish`` and ``extend`` without ``await``."""

    __slots__ = ()

    def publish(self, target: Target, data: Any, *, delay_s: float = 0.0,  # type: ignore[override]
                **attrs: Any) -> str:
        return str(self._call(self._request(target, data, delay_s, attrs)))

    def extend(self, seconds: float) -> bool:  # type: ignore[override]
        return bool(self._call(_Extend(seconds)))

    def idempotent(self, key: str) -> AbstractContextManager[Once]:  # type: ignore[override]
        """``with ctx.idempotent(key) as once: if not once.done: ...`` (see ``Context``)."""
        return self._block(key)


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


def _worker_main(sock: socket.socket, target: str, function: str) -> None:
    """An instance: load the function, say so, then run events one at a time until the channel closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runtime decides when its instances stop
    channel = _Channel(sock)
    try:
        fn = find_function(target, function)
    except Exception as exc:
        with suppress(OSError):
            channel.send(_LoadFailed(describe(exc)))
        return
    is_async = fn.handler.is_async
    with suppress(OSError), asyncio.Runner() if is_async else nullcontext() as runner:
        channel.send(_Ready(os.getpid(), is_async))
        while isinstance(msg := channel.recv(), _Run):
            channel.send(_invoke(fn, msg, channel, runner))


def _invoke(fn: Function, run: _Run, channel: _Channel, runner: asyncio.Runner | None) -> _Done:
    received = time.monotonic()
    deadline = None if run.timeout_s is None else received + run.timeout_s
    context = _SyncWorkerContext if runner is None else _WorkerContext
    bound = bind(fn, run.body, lambda event: context(
        event=event, attempt=run.attempt, deadline=deadline, function=fn.name, channel=channel))
    if isinstance(bound, Outcome):
        return _Done(msgspec.structs.replace(bound, service_s=time.monotonic() - received), 0.0)
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
        return _Done(outcome, started - received, event.id, trace)
    return _Done(Outcome("ok", service_s=time.monotonic() - received), started - received)


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
