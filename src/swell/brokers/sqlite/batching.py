"""Calls that meet while the broker's connection is busy, stored together once it is free."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Calls made while the broker's connection is busy, stored together once it is free:
    ``store`` gets every pending item, in order, and answers each with its result or the
    exception that refused it alone (or raises, refusing the lot). ``after`` sees each stored
    result, whether its caller still waits or not (a cancelled caller's item stays stored)."""

    def __init__(self, store: Callable[[list[Item]], Awaitable[list[Result | Exception]]], *,
                 after: Callable[[Result], object] | None = None) -> None:
        self._store = store
        self._after = after
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._drainer: asyncio.Future[None] | None = None

    async def __call__(self, item: Item) -> Result:
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return await done

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._store([item for item, _ in batch])
            except Exception as exc:
                results = [exc] * len(batch)
            for (_, done), result in zip(batch, results, strict=True):
                stored = not isinstance(result, Exception)
                if stored and self._after is not None:
                    self._after(result)  # type: ignore[arg-type]
                if done.done():
                    continue
                if isinstance(result, Exception):
                    done.set_exception(result)
                else:
                    done.set_result(result)
