"""Process instances: a function's handler in worker processes forked from a warm parent.

The warm parent is multiprocessing's forkserver, started once with the app and swell already
imported, so a new instance is a fork of it: a cold start of milliseconds instead of an interpreter
start. Each instance runs one event at a time, the serverless model. The parent owns the broker: a
worker never opens a connection, and its ``ctx.publish`` / ``ctx.extend`` are requests to the parent.

Parent and worker talk over a socket pair in msgpack frames (a 4-byte length, then the message);
event bodies and data never go through pickle.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import multiprocessing
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext, suppress
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any, Literal

import msgspec
import pydantic

from swell.core import errors
from swell.core.errors import AppError, PayloadError, SwellError, Throttled
from swell.core.event import Event
from swell.runtime.app import App, Function
from swell.runtime.context import Context

log = logging.getLogger("swell.process")

OutcomeKind = Literal["ok", "failed", "invalid", "malformed", "throttled", "timeout", "crashed"]
PublishFn = Callable[[str, Any, dict[str, Any]], Awaitable[str]]
ExtendFn = Callable[[float], Awaitable[bool]]

ASYNC_GRACE_S = 1.0   # an async handler is timed out by its worker; the parent kills it this much later
EXIT_WAIT_S = 2.0     # for an instance to exit after its channel closed, before SIGKILL
EOF_GRACE_S = 0.5     # after exit, for the last frames (a grandchild may hold the socket open)
RECENT = 256          # cold-start samples kept
MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct("!I")
_PRELOAD: set[str] = {"swell.runtime.process"}


class Outcome(msgspec.Struct, frozen=True):
    """How one event went in an instance. ``service_s`` is measured in the worker (decode to end),
    or by the parent for ``timeout`` and ``crashed``."""

    kind: OutcomeKind
    error: str | None = None
    retry_after_s: float | None = None
    service_s: float = 0.0


class InstanceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One live instance, as ``ProcessPool.instances()`` reports it."""

    pid: int | None
    state: Literal["starting", "idle", "busy"]
    runs: int
    idle_for_s: float


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


class _Publish(msgspec.Struct, tag="publish", array_like=True):
    queue: str
    data: Any
    attrs: dict[str, Any]


class _Extend(msgspec.Struct, tag="extend", array_like=True):
    seconds: float


_ToWorker = _Run | _Reply
_FromWorker = _Ready | _LoadFailed | _Done | _Publish | _Extend


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


def _one_line(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip()


def _describe_validation(exc: pydantic.ValidationError) -> str:
    # as the inline executor words it: one clause per field, no documentation links
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
                     for e in exc.errors(include_url=False))


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

    def call(self, msg: _Publish | _Extend) -> Any:
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
    """A Context whose ``publish`` and ``extend`` are requests to the parent process."""

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

    def _request(self, queue: str, data: Any, delay_s: float, attrs: dict[str, Any]) -> _Publish:
        attrs.setdefault("correlationid", self.event.correlationid or self.event.id)
        attrs.setdefault("traceparent", self.event.traceparent)
        attrs["delay_s"] = delay_s
        return _Publish(queue, data, attrs)

    def _call(self, msg: _Publish | _Extend) -> Any:
        try:
            return self._channel.call(msg)
        except (TypeError, msgspec.EncodeError) as exc:
            raise PayloadError(f"cannot encode as JSON: {exc}") from exc

    async def publish(self, queue: str, data: Any, *, delay_s: float = 0.0, **attrs: Any) -> str:
        return str(self._call(self._request(queue, data, delay_s, attrs)))

    async def extend(self, seconds: float) -> bool:
        return bool(self._call(_Extend(seconds)))


class _SyncWorkerContext(_WorkerContext):
    """The worker Context of a plain ``def`` handler: ``publish`` and ``extend`` without ``await``."""

    __slots__ = ()

    def publish(self, queue: str, data: Any, *, delay_s: float = 0.0,  # type: ignore[override]
                **attrs: Any) -> str:
        return str(self._call(self._request(queue, data, delay_s, attrs)))

    def extend(self, seconds: float) -> bool:  # type: ignore[override]
        return bool(self._call(_Extend(seconds)))


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
            channel.send(_LoadFailed(_one_line(exc)))
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
    try:
        event = Event.from_json(run.body)
        ctx = context(event=event, attempt=run.attempt, deadline=deadline, function=fn.name,
                      channel=channel)
        kwargs = fn.handler.arguments(event, ctx)
    except PayloadError as exc:
        return _Done(Outcome("malformed", str(exc), service_s=time.monotonic() - received), 0.0)
    except pydantic.ValidationError as exc:
        return _Done(Outcome("invalid", _describe_validation(exc),
                             service_s=time.monotonic() - received), 0.0)
    started = time.monotonic()
    try:
        if runner is None:
            fn.handler.fn(**kwargs)
        else:
            runner.run(_call_async(fn.handler.fn(**kwargs), deadline))
    except Throttled as exc:
        outcome = Outcome("throttled", str(exc), exc.retry_after_s, time.monotonic() - received)
    except Exception as exc:
        if isinstance(exc, TimeoutError) and deadline is not None and time.monotonic() >= deadline:
            outcome = Outcome("timeout", f"timed out after {run.timeout_s:g}s",
                              service_s=time.monotonic() - received)
        else:
            outcome = Outcome("failed", _one_line(exc), service_s=time.monotonic() - received)
    else:
        outcome = Outcome("ok", service_s=time.monotonic() - received)
    return _Done(outcome, started - received)


async def _call_async(call: Awaitable[Any], deadline: float | None) -> None:
    async with asyncio.timeout_at(deadline):
        await call


# -- the parent --------------------------------------------------------------------------------------
class _Died(Exception):
    """The instance running an event ended."""


class _Instance:
    """The parent's view of one worker process."""

    def __init__(self, process: BaseProcess, spawned_at: float) -> None:
        self.process = process
        self.spawned_at = spawned_at
        self.last_used = spawned_at
        self.state: Literal["starting", "idle", "busy", "retiring", "ended"] = "starting"
        self.pid: int | None = None
        self.is_async = False
        self.runs = 0
        self.error: str | None = None        # why it could not load the function
        self.expected_end = False            # retired or killed by the pool: not a crash
        self.writer: asyncio.StreamWriter | None = None
        self.exited = asyncio.Event()
        self.result: asyncio.Future[_Done] | None = None
        self.extend: ExtendFn | None = None


class ProcessPool:
    """Instances of one function, each a process forked from a warm parent that has the app loaded.

    ``module`` names the module holding the App (``pkg.module`` or ``pkg.module:attribute``; see
    ``locate_app``). ``on_publish(queue, data, attrs)`` sends an event for a worker and returns its
    id: ``attrs`` are ``Producer.send`` keyword arguments, ``delay_s`` included.
    """

    def __init__(self, module: str, function: str, *, timeout_s: float | None, min_instances: int = 0,
                 max_instances: int = 64, on_publish: PublishFn,
                 start_method: Literal["forkserver", "spawn"] = "forkserver") -> None:
        if not 0 <= min_instances <= max_instances or max_instances < 1:
            raise AppError(f"need 0 <= min_instances <= max_instances and max_instances >= 1, got "
                           f"{min_instances} and {max_instances}")
        self.module = module
        self.function = function
        self.timeout_s = timeout_s
        self.min_instances = min_instances
        self.max_instances = max_instances
        self._on_publish = on_publish
        self._method = start_method
        self._context: ForkServerContext | SpawnContext = (
            multiprocessing.get_context("forkserver") if start_method == "forkserver"
            else multiprocessing.get_context("spawn"))
        #: instances started (each a cold start), instances that died unasked, and that never loaded
        self.cold_starts = self.crashes = self.start_failures = 0
        #: recent cold starts: from asking for an instance to its reporting ready for work
        self.cold_start_times_s: deque[float] = deque(maxlen=RECENT)
        #: recent cold starts to first invocation: from asking for an instance to its first handler
        #: call (this includes any time the instance stood idle before its first event came)
        self.first_invocation_times_s: deque[float] = deque(maxlen=RECENT)
        #: how long the warm parent took to start (0 if it was already running)
        self.warm_parent_s = 0.0
        self._instances: list[_Instance] = []
        self._idle: list[_Instance] = []  # least recently used first
        self._waiters: deque[asyncio.Future[_Instance]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._desired = min_instances
        self._starter: ThreadPoolExecutor | None = None  # Process.start() blocks: one thread does it
        self._started = self._closed = False
        self._last_busy = 0.0

    # -- counters ------------------------------------------------------------------------------------
    def _count(self, *states: str) -> int:
        return sum(1 for i in self._instances if i.state in states)

    @property
    def starting(self) -> int:
        return self._count("starting")

    @property
    def ready(self) -> int:
        """Instances that have loaded the function: idle or busy."""
        return self._count("idle", "busy")

    @property
    def busy(self) -> int:
        return self._count("busy")

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def desired(self) -> int:
        return self._desired

    def idle_for_s(self) -> float:
        """Seconds since an event last ran or waited here (0 while one does)."""
        if self.busy or self._waiters:
            return 0.0
        return time.monotonic() - self._last_busy

    def instances(self) -> list[InstanceInfo]:
        now = time.monotonic()
        return [InstanceInfo(pid=i.pid, state=i.state, runs=i.runs,
                             idle_for_s=now - i.last_used if i.state == "idle" else 0.0)
                for i in self._instances if i.state in ("starting", "idle", "busy")]

    # -- life cycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the warm parent (once per process) and ``min_instances`` instances."""
        if self._started:
            return
        self._started = True
        self._last_busy = time.monotonic()
        self._starter = ThreadPoolExecutor(1, thread_name_prefix=f"swell-{self.function}-start")
        if self._method == "forkserver":
            from multiprocessing import forkserver

            _PRELOAD.add(self.module.partition(":")[0])
            _PRELOAD.update(_imported_by_main())
            forkserver.set_forkserver_preload(sorted(_PRELOAD))
            began = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(self._starter, forkserver.ensure_running)
            self.warm_parent_s = time.monotonic() - began
        await self.scale_to(self.min_instances)

    async def scale_to(self, n: int) -> None:
        """Aim for ``n`` instances (clamped to [min_instances, max_instances]): start new ones, or
        retire idle ones (longest idle first), then ones still starting; a busy one retires when its
        event is done, never before."""
        if not self._started:
            await self.start()
        self._desired = n = max(self.min_instances, min(n, self.max_instances))
        if self._closed:
            return
        excess = self._live() - n
        while excess > 0 and self._idle:
            self._retire(self._idle[0])
            excess -= 1
        spare = self.starting - len(self._waiters)  # starting instances no waiting event needs
        for inst in reversed(self._instances):
            if excess <= 0 or spare <= 0:
                break
            if inst.state == "starting":
                self._retire(inst)
                excess -= 1
                spare -= 1
        for _ in range(-excess):
            self._spawn()

    async def stop(self, grace_s: float) -> None:
        """Stop taking events; let running ones finish within ``grace_s``, then kill what is left.
        A ``run`` still waiting for an instance returns ``crashed``."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(_Died("the pool stopped"))
        for inst in list(self._instances):
            if inst.state in ("idle", "starting"):
                self._retire(inst)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        for inst in list(self._instances):
            self._kill(inst)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2 * EXIT_WAIT_S + EOF_GRACE_S)
        if self._tasks:
            log.error("%s: %d instance(s) did not end", self.function, len(self._tasks))
        if self._starter is not None:
            self._starter.shutdown(wait=False)

    # -- running an event -----------------------------------------------------------------------------
    async def run(self, body: bytes, attempt: int, *, extend: ExtendFn | None = None) -> Outcome:
        """Run one event (its CloudEvents JSON bytes) in an idle instance, waiting for one (and
        starting one if none is on its way). ``extend`` serves the handler's ``ctx.extend``.

        A cancelled run kills its instance: the event goes back to its queue, so its handler
        must not go on.
        """
        try:
            inst = await self._acquire()
        except _Died as exc:
            return Outcome("crashed", str(exc))
        loop = asyncio.get_running_loop()
        inst.result = result = loop.create_future()
        inst.extend = extend
        sent = loop.time()
        limit = self.timeout_s
        if limit is not None and inst.is_async:
            limit += ASYNC_GRACE_S  # the worker times it out itself and keeps the instance
        try:
            assert inst.writer is not None
            with suppress(ConnectionError):  # a dead instance: the result says so
                inst.writer.write(_frame(_Run(body, attempt, self.timeout_s)))
                await inst.writer.drain()
            done = await asyncio.wait_for(result, limit)
        except TimeoutError:
            self._kill(inst)
            return Outcome("timeout", f"timed out after {self.timeout_s:g}s",
                           service_s=loop.time() - sent)
        except _Died as exc:
            return Outcome("crashed", str(exc), service_s=loop.time() - sent)
        except asyncio.CancelledError:
            self._kill(inst)
            raise
        finally:
            inst.result = None
            inst.extend = None
            self._last_busy = time.monotonic()
        if inst.runs == 0:
            self.first_invocation_times_s.append(sent - inst.spawned_at + done.queued_s)
        inst.runs += 1
        self._release(inst)
        outcome: Outcome = done.outcome
        return outcome

    async def _acquire(self) -> _Instance:
        if not self._started:
            await self.start()
        if self._closed:
            raise _Died("the pool is stopped")
        if self._idle:
            inst = self._idle.pop()  # the most recently used: the others can idle out
            inst.state = "busy"
            return inst
        if len(self._waiters) >= self.starting and self._live() < self.max_instances:
            self._desired = max(self._desired, self._live() + 1)
            self._spawn()
        waiter: asyncio.Future[_Instance] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())
            raise
        finally:
            with suppress(ValueError):
                self._waiters.remove(waiter)

    def _release(self, inst: _Instance) -> None:
        """``inst`` is free: hand it to a waiting event, retire it if there are too many, or idle it."""
        if inst.state not in ("starting", "busy"):
            return  # killed or retired meanwhile
        inst.last_used = time.monotonic()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                inst.state = "busy"
                waiter.set_result(inst)
                return
        if self._closed or self._live() > self._desired:
            self._retire(inst)
            return
        inst.state = "idle"
        self._idle.append(inst)

    # -- instances --------------------------------------------------------------------------------------
    def _live(self) -> int:
        return self._count("starting", "idle", "busy")

    def _fill(self) -> None:
        for _ in range(self._desired - self._live()):
            self._spawn()

    def _spawn(self) -> None:
        parent, child = socket.socketpair()
        process = self._context.Process(target=_worker_main, args=(child, self.module, self.function),
                                  name=f"swell:{self.function}", daemon=True)
        inst = _Instance(process, time.monotonic())
        self._instances.append(inst)
        self.cold_starts += 1
        task = asyncio.create_task(self._lifetime(inst, parent, child), name=f"swell:{self.function}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _retire(self, inst: _Instance) -> None:
        """End an instance that has no event: close its channel (it exits), or kill one still starting."""
        if inst in self._idle:
            self._idle.remove(inst)
        was, inst.state, inst.expected_end = inst.state, "retiring", True
        if was == "starting":
            self._kill(inst)
        elif inst.writer is not None:
            inst.writer.close()

    def _kill(self, inst: _Instance) -> None:
        if inst.state in ("idle", "starting", "busy"):
            if inst in self._idle:
                self._idle.remove(inst)
            inst.state, inst.expected_end = "retiring", True
        if inst.pid is not None and not inst.exited.is_set():
            with suppress(OSError, ValueError):
                inst.process.kill()

    async def _lifetime(self, inst: _Instance, sock: socket.socket, child: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                await loop.run_in_executor(self._starter, inst.process.start)
            finally:
                child.close()
            inst.pid = inst.process.pid
            loop.add_reader(inst.process.sentinel, self._exited, inst)
            reader, inst.writer = await asyncio.open_connection(sock=sock)
            if inst.state == "retiring":
                self._kill(inst)
            await self._serve(inst, reader)
        except Exception as exc:
            inst.error = inst.error or f"could not start: {_one_line(exc)}"
        finally:
            if inst.writer is None:
                sock.close()
            await self._ended(inst)

    async def _serve(self, inst: _Instance, reader: asyncio.StreamReader) -> None:
        """Read what the instance says until its channel closes."""
        while True:
            try:
                header = await reader.readexactly(_HEADER.size)
                (size,) = _HEADER.unpack(header)
                if size > MAX_FRAME:
                    raise msgspec.DecodeError(f"a frame of {size} bytes")
                msg = _decode_in_parent(await reader.readexactly(size))
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except msgspec.DecodeError as exc:
                log.error("%s: instance %s sent garbage (%s); killing it", self.function, inst.pid, exc)
                self._kill(inst)
                return
            if isinstance(msg, _Done):
                if inst.result is not None and not inst.result.done():
                    inst.result.set_result(msg)
            elif isinstance(msg, _Publish | _Extend):
                reply = await self._answer(inst, msg)
                assert inst.writer is not None
                with suppress(ConnectionError):
                    inst.writer.write(_frame(reply))
                    await inst.writer.drain()
            elif isinstance(msg, _Ready):
                inst.is_async = msg.is_async
                self.cold_start_times_s.append(time.monotonic() - inst.spawned_at)
                self._release(inst)
            else:
                inst.error = msg.error

    async def _answer(self, inst: _Instance, msg: _Publish | _Extend) -> _Reply:
        try:
            if isinstance(msg, _Publish):
                return _Reply(await self._on_publish(msg.queue, msg.data, msg.attrs))
            return _Reply(inst.extend is not None and await inst.extend(msg.seconds))
        except Exception as exc:
            return _Reply(error=str(exc), error_type=type(exc).__name__)

    def _exited(self, inst: _Instance) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(inst.process.sentinel)
        inst.exited.set()
        if inst.writer is not None:
            # its socket should read EOF by now, unless a child of the handler holds it open
            loop.call_later(EOF_GRACE_S, inst.writer.transport.abort)

    async def _ended(self, inst: _Instance) -> None:
        """The channel closed: make sure the process is gone, settle its event, replace it."""
        was = inst.state
        if inst in self._idle:
            self._idle.remove(inst)
        inst.state = "retiring"
        if inst.pid is not None:
            if not await _wait(inst.exited, EXIT_WAIT_S):
                inst.expected_end = inst.expected_end or was == "retiring"
                with suppress(OSError, ValueError):
                    inst.process.kill()
                await _wait(inst.exited, EXIT_WAIT_S)
            asyncio.get_running_loop().remove_reader(inst.process.sentinel)
        why = _describe_exit(inst.process.exitcode if inst.exited.is_set() else None)
        if inst.writer is not None:
            inst.writer.transport.abort()
        if inst.exited.is_set():
            inst.process.close()
        inst.state = "ended"
        self._instances.remove(inst)
        if inst.result is not None and not inst.result.done():
            inst.result.set_exception(_Died(f"instance {inst.pid} {why}"))
        if not inst.expected_end:
            if was == "starting":
                self.start_failures += 1
                log.error("%s: an instance failed to start: %s", self.function, inst.error or why)
                self._fail_waiters(f"an instance failed to start: {inst.error or why}")
                return  # not replaced at once: the next scale_to (or run) tries again
            self.crashes += 1
            log.warning("%s: instance %s %s%s", self.function, inst.pid, why,
                        " while running an event" if was == "busy" else "")
        if not self._closed:
            self._fill()

    def _fail_waiters(self, error: str) -> None:
        """Waiting events no starting instance will serve get ``crashed`` now rather than wait on."""
        for _ in range(len(self._waiters) - self.starting):
            waiter = self._waiters.pop()
            if not waiter.done():
                waiter.set_exception(_Died(error))


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "closed its channel"
    if code < 0:
        with suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return "exited" if code == 0 else f"exited with code {code}"


def _imported_by_main() -> set[str]:
    """Modules the main script uses. Python 3.11's forkserver does not preload ``__main__`` (it is
    never given its path), so each fork runs the main script again; preloading what that script
    imports keeps the rerun cheap."""
    main = sys.modules.get("__main__")
    names: set[str] = set()
    for value in vars(main).values() if main is not None else ():
        name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        if isinstance(name, str) and not name.startswith("__"):
            names.update({name, name.partition(".")[0]})
    return names


def locate_app(app: App) -> str:
    """``module:attribute`` naming ``app`` in an imported module, for ``ProcessPool(module=...)``."""
    for name, module in list(sys.modules.items()):
        if name in ("__main__", "__mp_main__"):
            continue
        for attr, value in list(vars(module).items()):
            if value is app:
                return f"{name}:{attr}"
    main = sys.modules.get("__main__")
    for attr, value in vars(main).items() if main is not None else ():
        if value is app:
            return f"__main__:{attr}"
    raise AppError(f"app {app.name!r} is not a module attribute; process instances import it by name")
