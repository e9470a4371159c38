"""``swell replay``'s driver: an app's consumer-group function run again over a time range of its
stream (see ``swell.patterns.replay`` for the slices, checkpoints and staging sink). Each record is
run by the inline executor, with the function's timeout and retries, and settled by the same rules
as the live group (``swell.runtime.settle``): a throttle waits its ``retry_after`` and is no
attempt; what would be dead-lettered counts as a failure (a replay has no dead-letter queue)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from swell.brokers.base import Broker, Delivery, Receipt, Record
from swell.brokers.producer import Producer
from swell.core.errors import ConfigError
from swell.patterns.idempotency import IdempotencyStore
from swell.patterns.replay import Plan, RangeReplay, SliceResult, parse_time
from swell.runtime.app import App, Function
from swell.runtime.context import Invocation, no_extend
from swell.runtime.executor import InlineExecutor
from swell.runtime.metrics import FunctionMetrics
from swell.runtime.settle import Settle

__all__ = ["Plan", "Replay", "SliceResult", "find_function", "parse_time"]


def find_function(app: App, stream: str, group: str) -> Function:
    """``app``'s function on consumer group ``group`` of ``stream``."""
    for fn in app.functions.values():
        if fn.group is not None and fn.group.stream.name == stream and fn.group.name == group:
            return fn
    groups = sorted(fn.group.key for fn in app.functions.values() if fn.group is not None)
    raise ConfigError(f"{app.name!r} has no function on group {group!r} of stream {stream!r}"
                      f" (it has: {', '.join(groups) or 'no groups'})")


class Replay(RangeReplay):
    """One replay run (``swell replay``) of ``app``'s function on ``group`` of ``stream``: plan,
    then run with ``progress`` called per event (see ``RangeReplay``)."""

    def __init__(self, app: App, broker: Broker, stream: str, group: str, start: str, end: str,
                 slice_s: float, concurrency: int, sink: str | None, *, now: float) -> None:
        self.fn = find_function(app, stream, group)
        super().__init__(self.fn.name, self._handle, broker, stream, group, start, end, slice_s,
                         concurrency, sink, now=now)
        self.metrics = FunctionMetrics()
        """The replay's attempts, as a live function counts them."""
        self._rules = Settle(self.fn.retry, self.fn.retry.allowed(), self.metrics)  # as its group
        self._blocks = IdempotencyStore(broker.kv, self.fn.name, time.time)
        self._executor: InlineExecutor | None = None

    async def run(self, plan: Plan, progress: Callable[[int], None]) -> list[SliceResult]:
        self._executor = InlineExecutor(self.fn, Producer(self.broker, source=self.source),
                                        max_units=max(1, self.partitions))
        await self._executor.scale_to(self.partitions)
        try:
            return await super().run(plan, progress)
        finally:
            await self._executor.stop()

    async def _handle(self, r: Record, producer: Producer) -> bool:
        """The handler on one record, with the function's timeout and retries."""
        assert self._executor is not None
        attempt = 1
        while True:
            d = Delivery(receipt=Receipt(f"replay/{self.id}", r.offset, 0), body=r.body,
                         headers=r.headers, receive_count=attempt, enqueued_at=r.timestamp,
                         first_received_at=None)
            timeout = self.fn.timeout_s
            deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
            out = await self._executor.execute(d, Invocation(deadline, producer, no_extend,
                                                             self._blocks))
            action = self._rules(out, attempt)
            if action.kind == "ack":
                return True
            if action.kind in ("dead_letter", "let_go"):
                return False
            if action.kind == "retry":
                attempt += 1  # a throttle is not an attempt
            await asyncio.sleep(action.delay_s)
