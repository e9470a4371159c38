"""The app: a registry of queues and the functions they wake. Nothing runs until a Runtime does."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from swell.brokers.base import KiB, QueueSpec
from swell.core.config import Duration, seconds
from swell.core.errors import AppError
from swell.runtime.handler import Handler
from swell.runtime.retry import Retry
from swell.scaling.base import Controller
from swell.scaling.limiters import Limiter, RateLimit

F = TypeVar("F", bound=Callable[..., Any])

Mode = Literal["inline", "process"]


@dataclass(frozen=True, slots=True)
class Queue:
    """A declared queue: pass it to ``@app.function`` as a trigger."""

    spec: QueueSpec

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class Function:
    """A handler with its trigger and policies."""

    name: str
    queue: Queue
    handler: Handler
    concurrency: Controller
    """A prototype: each runtime works with its own copy (``controller()``)."""
    retry: Retry
    timeout_s: float | None
    mode: Mode = "inline"
    min_instances: int = 0
    rate_limit: RateLimit | None = None
    limiters: tuple[str, ...] = ()

    def controller(self) -> Controller:
        """A fresh controller for one runtime (controllers keep state)."""
        return copy.deepcopy(self.concurrency)


class App:
    """Declares queues and functions.

    >>> app = App("shop")
    >>> orders = app.queue("orders", visibility_timeout=30, max_receives=5)
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.queues: dict[str, Queue] = {}
        self.functions: dict[str, Function] = {}
        self.limiters: dict[str, Limiter] = {}

    def limiter(self, name: str, *, rate: str | float | None = None, burst: int | None = None,
                concurrency: int | None = None) -> Limiter:
        """A named limiter that functions share, across every process on the backend:
        ``app.limiter("payments-api", rate="100/s", concurrency=20)``."""
        if rate is None and concurrency is None:
            raise AppError(f"limiter {name!r} needs a rate, a concurrency or both")
        if concurrency is not None and concurrency < 1:
            raise AppError(f"limiter {name!r}: concurrency must be at least 1")
        lim = Limiter(name, None if rate is None else RateLimit(rate, burst), concurrency)
        if self.limiters.get(name, lim) != lim:
            raise AppError(f"limiter {name!r} is declared twice with different settings")
        self.limiters[name] = lim
        return lim

    def queue(self, name: str, *, visibility_timeout: Duration = 30.0, max_receives: int = 5,
              dead_letter: str | None = None, max_message_bytes: int = 256 * KiB,
              dedup_window: Duration = 300.0) -> Queue:
        """Declare a queue. After ``max_receives`` deliveries a message moves to ``dead_letter``
        (``<name>.dlq`` unless named); ``max_receives=0`` never dead-letters on its own."""
        if not name or any(c.isspace() for c in name):
            raise AppError(f"bad queue name {name!r}: use letters, digits, '.', '-' or '_'")
        if max_receives < 0:
            raise AppError(f"queue {name!r}: max_receives must be >= 0")
        spec = QueueSpec(name=name, visibility_timeout_s=seconds(visibility_timeout,
                                                                 name="visibility_timeout"),
                         max_receives=max_receives, dead_letter=dead_letter,
                         max_message_bytes=max_message_bytes,
                         dedup_window_s=seconds(dedup_window, name="dedup_window"))
        existing = self.queues.get(name)
        if existing is not None and existing.spec != spec:
            raise AppError(f"queue {name!r} is declared twice with different settings")
        q = self.queues[name] = Queue(spec)
        return q

    def function(self, trigger: Queue | str, *, concurrency: int | Controller | None = None,
                 retry: Retry | None = None, timeout: Duration | None = None,
                 mode: Mode = "inline", min_instances: int = 0,
                 rate_limit: RateLimit | str | None = None,
                 limiters: Sequence[Limiter | str] = (), name: str | None = None
                 ) -> Callable[[F], F]:
        """Run the decorated handler for every event of ``trigger``.

        ``concurrency``: a controller (``Auto(...)``, the default, scales with the work) or a fixed
        number. ``mode="process"`` runs the handler in worker processes (instances) forked from a
        warm parent; ``min_instances`` keeps that many warm. An exception retries with backoff
        (``retry``); a payload that fails validation goes to the dead-letter queue at once; a
        handler running past ``timeout`` counts as failed. ``rate_limit`` caps this function's
        calls per second; ``limiters`` names limiters shared with other functions.
        """
        queue = self._trigger(trigger)
        controller = _controller(concurrency)
        if mode not in ("inline", "process"):
            raise AppError(f"mode must be 'inline' or 'process', not {mode!r}")
        if min_instances < 0 or min_instances > controller.max_units:
            raise AppError(f"min_instances must be between 0 and {controller.max_units}")
        timeout_s = None if timeout is None else seconds(timeout, name="timeout")
        limit = RateLimit(rate_limit) if isinstance(rate_limit, str) else rate_limit
        names = tuple(lim.name if isinstance(lim, Limiter) else lim for lim in limiters)
        for n in names:
            if n not in self.limiters:
                raise AppError(f"unknown limiter {n!r}: declare it first with app.limiter({n!r}, ...)")

        def register(fn: F) -> F:
            fname: str = name or getattr(fn, "__name__", None) or "handler"
            if fname in self.functions:
                raise AppError(f"function {fname!r} is declared twice")
            self.functions[fname] = Function(fname, queue, Handler.inspect(fn), controller,
                                             retry or Retry(), timeout_s, mode, min_instances,
                                             limit, names)
            return fn

        return register

    def _trigger(self, trigger: Queue | str) -> Queue:
        if isinstance(trigger, Queue):
            return self.queues.setdefault(trigger.name, trigger)
        if trigger in self.queues:
            return self.queues[trigger]
        raise AppError(f"unknown queue {trigger!r}: declare it first with app.queue({trigger!r})")


def _controller(concurrency: int | Controller | None) -> Controller:
    from swell.scaling.auto import Auto
    from swell.scaling.controllers import Fixed

    if concurrency is None:
        return Auto()
    if isinstance(concurrency, bool) or not isinstance(concurrency, int | Controller):
        raise AppError(f"concurrency must be a number or a controller such as Auto(), "
                       f"not {concurrency!r}")
    if isinstance(concurrency, int):
        if concurrency < 1:
            raise AppError(f"concurrency must be at least 1, got {concurrency}")
        return Fixed(concurrency)
    return concurrency
