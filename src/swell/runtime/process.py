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
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, suppress
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any, Literal

import msgspec

from swell.brokers.base import Delivery
from swell.core.errors import AppError, InProgress
from swell.core.event import Event
from swell.patterns.idempotency import Once
from swell.runtime.app import App, Function
from swell.runtime.context import Context
from swell.runtime.executor import Outcome, describe, log_failure
from swell.runtime.producer import Producer
from swell.runtime.worker import (
    _HEADER,
    _Block,
    _decode_in_parent,
    _Done,
    _Extend,
    _frame,
    _Publish,
    _Ready,
    _Reply,
    _Run,
    _worker_main,
    find_function,
)

__all__ = ["InstanceInfo", "Outcome", "ProcessExecutor", "ProcessPool", "find_function", "locate",
           "locate_app"]

log = logging.getLogger("swell.process")

PublishFn = Callable[[str, Any, dict[str, Any]], Awaitable[str]]
ExtendFn = Callable[[float], Awaitable[bool]]
BlockFn = Callable[[_Block], Awaitable[Any]]

ASYNC_GRACE_S = 1.0   # an async handler is timed out by its worker; the parent kills it this much later
EXIT_WAIT_S = 2.0     # for an instance to exit after its channel closed, before SIGKILL
EOF_GRACE_S = 0.5     # after exit, for the last frames (a grandchild may hold the socket open)
RECENT = 256          # cold-start samples kept
MAX_FRAME = 64 * 1024 * 1024
_WARM_ENV = "SWELL_WARM_PARENT"
_warm_lock = threading.Lock()


class InstanceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One live instance, as ``ProcessPool.instances()`` reports it."""

    pid: int | None
    state: Literal["starting", "idle", "busy", "retiring"]
    runs: int
    idle_for_s: float


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
        self.block: BlockFn | None = None


class ProcessPool:
    """Instances of one function, each a process forked from a warm parent that has the app loaded.

    ``module`` names the module holding the App (``pkg.module`` or ``pkg.module:attribute``; see
    ``locate``). ``on_publish(queue, data, attrs)`` sends an event for a worker and returns its
    id: ``attrs`` are ``Producer.send`` keyword arguments, ``delay_s`` included. ``on_change()`` is
    called when an instance is started, becomes ready, is retired or ends. ``start_method="spawn"``
    starts each instance as a fresh interpreter instead of a fork of the warm parent: the baseline a
    cold start is compared to.
    """

    def __init__(self, module: str, function: str, *, timeout_s: float | None, min_instances: int = 0,
                 max_instances: int = 64, on_publish: PublishFn,
                 on_change: Callable[[], None] | None = None,
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
        self._on_change = on_change
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
        self._started = self._closed = False
        self._last_busy = time.monotonic()

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
        """Every instance whose process may still exist, retiring ones included."""
        now = time.monotonic()
        return [InstanceInfo(pid=i.pid, state=i.state, runs=i.runs,
                             idle_for_s=now - i.last_used if i.state == "idle" else 0.0)
                for i in self._instances if i.state != "ended"]

    # -- life cycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the warm parent (once per process) and ``min_instances`` instances."""
        if self._started:
            return
        self._started = True
        if self._method == "forkserver":
            began = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(
                _processes(), _start_warm_parent, self.module.partition(":")[0])
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

    # -- running an event -----------------------------------------------------------------------------
    async def run(self, body: bytes, attempt: int, *, extend: ExtendFn | None = None,
                  block: BlockFn | None = None) -> Outcome:
        """Run one event (its CloudEvents JSON bytes) in an idle instance, waiting for one (and
        starting one if none is on its way). ``extend`` serves the handler's ``ctx.extend``,
        ``block`` its ``ctx.idempotent`` and ``ctx.skip_idempotency`` (see ``Blocks``).

        A cancelled run kills its instance: the event goes back to its queue, so its handler
        must not go on.
        """
        try:
            inst = await self._acquire()
        except _Died as exc:
            return Outcome("crashed", str(exc))
        if inst.state != "busy":  # it ended between being handed over and now
            return Outcome("crashed", f"instance {inst.pid} ended before the event was sent")
        loop = asyncio.get_running_loop()
        inst.result = result = loop.create_future()
        inst.extend, inst.block = extend, block
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
            inst.extend = inst.block = None
            self._last_busy = time.monotonic()
        if inst.runs == 0:
            self.first_invocation_times_s.append(sent - inst.spawned_at + done.queued_s)
        inst.runs += 1
        self._release(inst)
        if done.trace is not None:
            log_failure(self.function, done.event_id or "?", attempt, done.trace)
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
        self._changed()
        task = asyncio.create_task(self._lifetime(inst, parent, child), name=f"swell:{self.function}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _retire(self, inst: _Instance) -> None:
        """End an instance that has no event: close its channel (it exits), or kill one still starting."""
        if inst.state == "starting":
            self._kill(inst)
            return
        self._stand_down(inst)
        if inst.writer is not None:
            inst.writer.close()

    def _kill(self, inst: _Instance) -> None:
        self._stand_down(inst)
        if inst.pid is not None and not inst.exited.is_set():
            with suppress(OSError, ValueError):
                inst.process.kill()

    def _stand_down(self, inst: _Instance) -> None:
        """No more events for ``inst``: its end, whenever it comes, is no crash."""
        if inst.state in ("idle", "starting", "busy"):
            if inst in self._idle:
                self._idle.remove(inst)
            inst.state, inst.expected_end = "retiring", True
            self._changed()

    async def _lifetime(self, inst: _Instance, sock: socket.socket, child: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                await loop.run_in_executor(_processes(), inst.process.start)
            finally:
                child.close()
            inst.pid = inst.process.pid
            loop.add_reader(inst.process.sentinel, self._exited, inst)
            reader, inst.writer = await asyncio.open_connection(sock=sock)
            if inst.state == "retiring":
                self._kill(inst)
            await self._serve(inst, reader)
        except Exception as exc:
            inst.error = inst.error or f"could not start: {describe(exc)}"
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
            elif isinstance(msg, _Publish | _Extend | _Block):
                reply = await self._answer(inst, msg)
                assert inst.writer is not None
                with suppress(ConnectionError):
                    inst.writer.write(_frame(reply))
                    await inst.writer.drain()
            elif isinstance(msg, _Ready):
                inst.is_async = msg.is_async
                self.cold_start_times_s.append(time.monotonic() - inst.spawned_at)
                self._release(inst)
                self._changed()
            else:
                inst.error = msg.error

    async def _answer(self, inst: _Instance, msg: _Publish | _Extend | _Block) -> _Reply:
        try:
            if isinstance(msg, _Publish):
                return _Reply(await self._on_publish(msg.queue, msg.data, msg.attrs))
            if isinstance(msg, _Block):
                if inst.block is None:
                    raise AppError("ctx.idempotent is not served here")
                return _Reply(await inst.block(msg))
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
        code = None
        if inst.exited.is_set():
            code = await asyncio.get_running_loop().run_in_executor(_processes(), _close, inst.process)
        why = _describe_exit(code)
        if inst.writer is not None:
            inst.writer.transport.abort()
        inst.state = "ended"
        self._instances.remove(inst)
        self._changed()
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

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _fail_waiters(self, error: str) -> None:
        """Waiting events no starting instance will serve get ``crashed`` now rather than wait on."""
        for _ in range(len(self._waiters) - self.starting):
            waiter = self._waiters.pop()
            if not waiter.done():
                waiter.set_exception(_Died(error))


_threads: list[ThreadPoolExecutor] = []


def _processes() -> ThreadPoolExecutor:
    """The one thread that starts and closes instance processes. ``Process.start()`` blocks (it
    waits for the fork), and it polls every child multiprocessing knows of, so a ``close()`` in
    another thread could pull a process out from under it."""
    if not _threads:
        _threads.append(ThreadPoolExecutor(1, thread_name_prefix="swell-processes"))
    return _threads[0]


def _close(process: BaseProcess) -> int | None:
    process.join(EXIT_WAIT_S)  # its sentinel said it exited; the exit code may take a moment more
    code = process.exitcode
    if code is not None:
        process.close()
    return code


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


def locate(fn: Function) -> str:
    """``module:attribute`` of the App that holds ``fn``, for ``ProcessPool(module=...)``."""
    return _locate(lambda v: isinstance(v, App) and v.functions.get(fn.name) is fn,
                   [fn.handler.fn.__module__], f"the app of function {fn.name!r}")


def locate_app(app: App) -> str:
    """``module:attribute`` naming ``app`` in an imported module."""
    return _locate(lambda v: v is app, [f.handler.fn.__module__ for f in app.functions.values()],
                   f"app {app.name!r}")


def _locate(match: Callable[[object], bool], first: list[str], what: str) -> str:
    # the handlers' module first, __main__ last (an instance runs the main script again to get it)
    names = sorted(dict.fromkeys([*first, *sys.modules]), key=lambda n: n in ("__main__", "__mp_main__"))
    for name in names:
        for attr, value in list(getattr(sys.modules.get(name), "__dict__", {}).items()):
            if match(value):
                return f"{name}:{attr}"
    raise AppError(f"{what} is not a module attribute; process instances import it by name")


# -- the executor --------------------------------------------------------------------------------------
class Blocks:
    """The parent's half of a worker's ``ctx.idempotent`` and ``ctx.skip_idempotency``: they run
    on a Context of the event made here, where the broker is, so their records and their
    sharing with the function's idempotency key are those of an inline handler."""

    def __init__(self, context: Callable[[], Context]) -> None:
        self._make = context
        self._context: Context | None = None
        self._open: dict[int, tuple[AbstractAsyncContextManager[Once], Once]] = {}
        self._tokens = 0

    async def __call__(self, msg: _Block) -> Any:
        if self._context is None:
            self._context = self._make()
        if msg.op == "skip":
            self._context.skip_idempotency(msg.key)
            return None
        if msg.op == "begin":
            block = self._context.idempotent(msg.key)
            try:
                once = await block.__aenter__()
            except InProgress:
                return None
            if once.done:
                await block.__aexit__(None, None, None)
                return [0, True, once.result]
            self._tokens += 1
            self._open[self._tokens] = block, once
            return [self._tokens, False, None]
        block, once = self._open.pop(msg.token)
        if msg.op == "done":
            once.result = msg.result
            await block.__aexit__(None, None, None)
        else:
            await _fail(block, "the block raised in the worker")
        return None

    async def close(self) -> None:
        """Blocks the worker left open (it died or was killed in one) failed: their keys are
        forgotten, so a retry runs them."""
        while self._open:
            _, (block, _) = self._open.popitem()
            await _fail(block, "the instance ended inside the block")


async def _fail(block: AbstractAsyncContextManager[Once], why: str) -> None:
    error = AppError(why)
    with suppress(AppError):
        await asyncio.shield(block.__aexit__(AppError, error, None))


class ProcessExecutor:
    """The Dispatcher's Executor for ``mode="process"``: units are instances of a ProcessPool.

    Set ``on_change`` (e.g. to the Dispatcher's ``poke``) to hear when an instance starts, becomes
    ready or ends.
    """

    def __init__(self, fn: Function, producer: Producer, max_units: int, min_instances: int) -> None:
        async def publish(queue: str, data: Any, attrs: dict[str, Any]) -> str:
            return await producer.send(queue, data, **attrs)

        self.fn = fn
        self.starting = self.cold_starts = 0
        self.on_change: Callable[[], None] | None = None
        self.pool = ProcessPool(locate(fn), fn.name, timeout_s=fn.timeout_s,
                                min_instances=min_instances, max_instances=max(1, max_units),
                                on_publish=publish, on_change=self._changed)

    def _changed(self) -> None:
        self.starting, self.cold_starts = self.pool.starting, self.pool.cold_starts
        if self.on_change is not None:
            self.on_change()

    def ready(self) -> int:
        return self.pool.ready

    async def scale_to(self, units: int) -> None:
        await self.pool.scale_to(units)

    async def execute(self, d: Delivery, extras: dict[str, Any]) -> Outcome:
        blocks = Blocks(lambda: Context(event=Event.from_json(d.body), delivery=d,
                                        function=self.fn.name, **extras))
        try:
            return await self.pool.run(d.body, d.receive_count, extend=extras.get("extend"),
                                       block=blocks)
        finally:
            await blocks.close()

    async def stop(self) -> None:
        # the Dispatcher has waited out its grace and cancelled what was left (killing those)
        await self.pool.stop(grace_s=0.0)


# -- the warm parent ---------------------------------------------------------------------------------
def _start_warm_parent(module: str) -> None:
    """Start the forkserver, once per process, with swell and ``module`` imported; wait until it forks.

    Python 3.11's forkserver ignores the ``sys.path`` it is handed, so an app outside the default
    path would not be preloaded, and each fork would run the parent's main script again (as
    multiprocessing does), which an instance never needs unless the app lives there. So the pool
    hands the forkserver its setup through the environment, and this module, which the forkserver
    imports first, applies it (``_prepare_warm_parent``).
    """
    from multiprocessing import forkserver, spawn

    with _warm_lock:
        data = spawn.get_preparation_data("swell")
        keep = ("sys_path", "init_main_from_name", "init_main_from_path")
        setup = {k: data[k] for k in keep if k in data} | {"run_main": module == "__main__"}
        os.environ[_WARM_ENV] = json.dumps(setup)
        try:
            forkserver.set_forkserver_preload(["swell.runtime.process", module])
            forkserver.ensure_running()
        finally:
            os.environ.pop(_WARM_ENV, None)
        probe = multiprocessing.get_context("forkserver").Process(target=int, daemon=True)
        probe.start()  # returns once the forkserver has forked: it has imported everything
        probe.join()
        probe.close()


def _prepare_warm_parent() -> None:
    """In the forkserver: take the parent's ``sys.path``, and its main module if the app is there;
    else mark the main module as present, so that no fork runs the main script again."""
    raw = os.environ.pop(_WARM_ENV, None)
    if raw is None:
        return
    from importlib.machinery import ModuleSpec
    from multiprocessing import process, spawn

    setup = json.loads(raw)
    if not setup.pop("run_main"):
        sys.path[:] = setup["sys_path"]
        main = sys.modules["__main__"]
        if "init_main_from_path" in setup:
            main.__file__ = setup["init_main_from_path"]
        if "init_main_from_name" in setup:
            main.__spec__ = ModuleSpec(setup["init_main_from_name"], None)
        return
    current = process.current_process()
    current._inheriting = True  # type: ignore[attr-defined]  # as multiprocessing does for __main__
    try:
        spawn.prepare(setup)
    except Exception:
        traceback.print_exc()  # each instance will run the main script again, and say why it fails
    finally:
        del current._inheriting  # type: ignore[attr-defined]


_prepare_warm_parent()
