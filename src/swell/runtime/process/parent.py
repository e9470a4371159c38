"""The parent's side of one worker process: the ``Instance`` a pool keeps for it, how its
messages are read, and how what its handler's Context asks for is served."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress
from multiprocessing.process import BaseProcess
from typing import Any, Literal, TypeVar

import msgspec

from swell.brokers.producer import Producer, Target, target_name
from swell.core.errors import AppError
from swell.runtime.context import Backend, Begun
from swell.runtime.process.frames import (
    HEADER,
    MAX_FRAME,
    Done,
    Extend,
    FromWorker,
    Publish,
    Request,
    Skip,
    decode_in_parent,
)

T = TypeVar("T")
PublishFn = Callable[[str, Any, dict[str, Any]], Awaitable[str]]
ExtendFn = Callable[[float], Awaitable[bool]]


class PoolBackend:
    """The backend of a run given none: ``publish`` through the pool's ``on_publish`` (``attrs``
    with ``delay_s``), ``extend`` through ``extend`` if given (else the lease cannot be held), and
    no ``ctx.idempotent``."""

    def __init__(self, on_publish: PublishFn, extend: ExtendFn | None = None) -> None:
        self._on_publish = on_publish
        self._extend = extend

    async def publish(self, target: Target, data: Any, delay_s: float,
                      attrs: dict[str, Any]) -> str:
        return await self._on_publish(target_name(target), data, {**attrs, "delay_s": delay_s})

    async def extend(self, seconds: float) -> bool:
        return self._extend is not None and await self._extend(seconds)

    async def begin(self, key: str) -> Begun | None:
        raise AppError("ctx.idempotent is not served here")

    async def end(self, token: int, ok: bool, result: Any = None) -> None:
        raise AppError("ctx.idempotent is not served here")

    def skip(self, reason: str, event_id: str) -> None:
        raise AppError("ctx.skip_idempotency is not served here")

    @property
    def producer(self) -> Producer:
        raise AppError("a bare process pool has no producer")

    def wait(self, call: Awaitable[T]) -> T:
        raise AppError("a pool's backend serves its workers; it is not waited on")


async def serve(backend: Backend, msg: Request) -> Any:
    """Do what a worker's Context asked for with ``backend``; the value to reply with."""
    if isinstance(msg, Publish):
        return await backend.publish(msg.queue, msg.data, msg.delay_s, msg.attrs)
    if isinstance(msg, Extend):
        return await backend.extend(msg.seconds)
    if isinstance(msg, Skip):
        backend.skip(msg.reason, msg.event_id)
        return None
    if msg.op == "begin":
        begun = await backend.begin(msg.key)
        return None if begun is None else list(begun)
    await backend.end(msg.token, msg.op == "done", msg.result)
    return None


class InstanceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One live instance, as ``ProcessPool.instances()`` reports it."""

    pid: int | None
    state: Literal["starting", "idle", "busy", "retiring"]
    runs: int
    idle_for_s: float


class Died(Exception):
    """The instance running an event ended."""


class Instance:
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
        self.result: asyncio.Future[Done] | None = None
        self.backend: Backend | None = None


async def read_message(reader: asyncio.StreamReader) -> FromWorker:
    """The next message of a worker; ``msgspec.DecodeError`` for garbage."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > MAX_FRAME:
        raise msgspec.DecodeError(f"a frame of {size} bytes")
    msg: FromWorker = decode_in_parent(await reader.readexactly(size))
    return msg


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()
