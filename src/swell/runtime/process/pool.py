"""Process instances: a function's handler in worker processes forked from a warm parent (see
``warm``). Each instance runs one event at a time, the serverless model. The parent owns the
broker: a worker never opens a connection, and what its handler's Context does is a request to the
parent (see ``frames``), served by the run's ``Backend``.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import socket
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from multiprocessing.context import ForkServerContext, SpawnContext
from typing import Literal

import msgspec

from swell.core.describe import describe
from swell.core.errors import AppError
from swell.core.outcome import Outcome
from swell.runtime.context import Backend
from swell.runtime.executor import log_failure
from swell.runtime.process.frames import (
    Block,
    Done,
    Extend,
    Publish,
    Ready,
    Reply,
    Request,
    Run,
    Skip,
    frame,
)
from swell.runtime.process.parent import (
    Died,
    Instance,
    InstanceInfo,
    PoolBackend,
    PublishFn,
    read_message,
    serve,
    wait_event,
)
from swell.runtime.process.warm import (
    EXIT_WAIT_S,
    close_process,
    describe_exit,
    processes,
    start_warm_parent,
)
from swell.runtime.process.worker import worker_main

log = logging.getLogger("swell.process")


ASYNC_GRACE_S = 1.0   # an async handler is timed out by its worker; the parent kills it this much later
EOF_GRACE_S = 0.5     # after exit, for the last frames (a grandchild may hold the socket open)
RECENT = 256          # cold-start samples kept


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
        self._default = PoolBackend(on_publish)
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
        self._instances: list[Instance] = []
        self._idle: list[Instance] = []  # least recently used first
        self._waiters: deque[asyncio.Future[Instance]] = deque()
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
                processes(), start_warm_parent, self.module.partition(":")[0])
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
                waiter.set_exception(Died("the pool stopped"))
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
    async def run(self, body: bytes, attempt: int, *, backend: Backend | None = None) -> Outcome:
        """Run one event (its CloudEvents JSON bytes) in an idle instance, waiting for one (and
        starting one if none is on its way). ``backend`` serves what its handler's Context asks for
        (by default a ``PoolBackend`` over ``on_publish``).

        A cancelled run kills its instance: the event goes back to its queue, so its handler
        must not go on.
        """
        try:
            inst = await self._acquire()
        except Died as exc:
            return Outcome("crashed", str(exc))
        if inst.state != "busy":  # it ended between being handed over and now
            return Outcome("crashed", f"instance {inst.pid} ended before the event was sent")
        loop = asyncio.get_running_loop()
        inst.result = result = loop.create_future()
        inst.backend = backend
        sent = loop.time()
        limit = self.timeout_s
        if limit is not None and inst.is_async:
            limit += ASYNC_GRACE_S  # the worker times it out itself and keeps the instance
        try:
            assert inst.writer is not None
            with suppress(ConnectionError):  # a dead instance: the result says so
                inst.writer.write(frame(Run(body, attempt, self.timeout_s)))
                await inst.writer.drain()
            done = await asyncio.wait_for(result, limit)
        except TimeoutError:
            self._kill(inst)
            return Outcome("timeout", f"timed out after {self.timeout_s:g}s",
                           service_s=loop.time() - sent)
        except Died as exc:
            return Outcome("crashed", str(exc), service_s=loop.time() - sent)
        except asyncio.CancelledError:
            self._kill(inst)
            raise
        finally:
            inst.result = None
            inst.backend = None
            self._last_busy = time.monotonic()
        if inst.runs == 0:
            self.first_invocation_times_s.append(sent - inst.spawned_at + done.queued_s)
        inst.runs += 1
        self._release(inst)
        if done.trace is not None:
            log_failure(self.function, done.event_id or "?", attempt, done.trace)
        outcome: Outcome = done.outcome
        return outcome

    async def _acquire(self) -> Instance:
        if not self._started:
            await self.start()
        if self._closed:
            raise Died("the pool is stopped")
        if self._idle:
            inst = self._idle.pop()  # the most recently used: the others can idle out
            inst.state = "busy"
            return inst
        if len(self._waiters) >= self.starting and self._live() < self.max_instances:
            self._desired = max(self._desired, self._live() + 1)
            self._spawn()
        waiter: asyncio.Future[Instance] = asyncio.get_running_loop().create_future()
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

    def _release(self, inst: Instance) -> None:
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
        process = self._context.Process(target=worker_main, args=(child, self.module, self.function),
                                  name=f"swell:{self.function}", daemon=True)
        inst = Instance(process, time.monotonic())
        self._instances.append(inst)
        self.cold_starts += 1
        self._changed()
        task = asyncio.create_task(self._lifetime(inst, parent, child), name=f"swell:{self.function}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _retire(self, inst: Instance) -> None:
        """End an instance that has no event: close its channel (it exits), or kill one still starting."""
        if inst.state == "starting":
            self._kill(inst)
            return
        self._stand_down(inst)
        if inst.writer is not None:
            inst.writer.close()

    def _kill(self, inst: Instance) -> None:
        self._stand_down(inst)
        if inst.pid is not None and not inst.exited.is_set():
            with suppress(OSError, ValueError):
                inst.process.kill()

    def _stand_down(self, inst: Instance) -> None:
        """No more events for ``inst``: its end, whenever it comes, is no crash."""
        if inst.state in ("idle", "starting", "busy"):
            if inst in self._idle:
                self._idle.remove(inst)
            inst.state, inst.expected_end = "retiring", True
            self._changed()

    async def _lifetime(self, inst: Instance, sock: socket.socket, child: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                await loop.run_in_executor(processes(), inst.process.start)
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

    async def _serve(self, inst: Instance, reader: asyncio.StreamReader) -> None:
        """Read what the instance says until its channel closes."""
        while True:
            try:
                msg = await read_message(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except msgspec.DecodeError as exc:
                log.error("%s: instance %s sent garbage (%s); killing it", self.function, inst.pid, exc)
                self._kill(inst)
                return
            if isinstance(msg, Done):
                if inst.result is not None and not inst.result.done():
                    inst.result.set_result(msg)
            elif isinstance(msg, Publish | Extend | Block | Skip):
                reply = await self._answer(inst, msg)
                assert inst.writer is not None
                with suppress(ConnectionError):
                    inst.writer.write(frame(reply))
                    await inst.writer.drain()
            elif isinstance(msg, Ready):
                inst.is_async = msg.is_async
                self.cold_start_times_s.append(time.monotonic() - inst.spawned_at)
                self._release(inst)
                self._changed()
            else:
                inst.error = msg.error

    async def _answer(self, inst: Instance, msg: Request) -> Reply:
        try:
            return Reply(await serve(inst.backend or self._default, msg))
        except Exception as exc:
            return Reply(error=str(exc), error_type=type(exc).__name__)

    def _exited(self, inst: Instance) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(inst.process.sentinel)
        inst.exited.set()
        if inst.writer is not None:
            # its socket should read EOF by now, unless a child of the handler holds it open
            loop.call_later(EOF_GRACE_S, inst.writer.transport.abort)

    async def _ended(self, inst: Instance) -> None:
        """The channel closed: make sure the process is gone, settle its event, replace it."""
        was = inst.state
        if inst in self._idle:
            self._idle.remove(inst)
        inst.state = "retiring"
        if inst.pid is not None:
            if not await wait_event(inst.exited, EXIT_WAIT_S):
                inst.expected_end = inst.expected_end or was == "retiring"
                with suppress(OSError, ValueError):
                    inst.process.kill()
                await wait_event(inst.exited, EXIT_WAIT_S)
            asyncio.get_running_loop().remove_reader(inst.process.sentinel)
        code = None
        if inst.exited.is_set():
            code = await asyncio.get_running_loop().run_in_executor(processes(), close_process, inst.process)
        why = describe_exit(code)
        if inst.writer is not None:
            inst.writer.transport.abort()
        inst.state = "ended"
        self._instances.remove(inst)
        self._changed()
        if inst.result is not None and not inst.result.done():
            inst.result.set_exception(Died(f"instance {inst.pid} {why}"))
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
                waiter.set_exception(Died(error))
