"""The app: a registry of queues and the functions they wake. Nothing runs until a Runtime does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from swell.brokers.base import KiB, QueueSpec
from swell.core.config import Duration, seconds
from swell.core.errors import AppError
from swell.runtime.handler import Handler
from swell.runtime.retry import Retry

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONCURRENCY = 32


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
    concurrency: int
    retry: Retry
    timeout_s: float | None


class App:
    """Declares queues and functions.

    >>> app = App("shop")
    >>> orders = app.queue("orders", visibility_timeout=30, max_receives=5)
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.queues: dict[str, Queue] = {}
        self.functions: dict[str, Function] = {}

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

    def function(self, trigger: Queue | str, *, concurrency: int = DEFAULT_CONCURRENCY,
                 retry: Retry | None = None, timeout: Duration | None = None,
                 name: str | None = None) -> Callable[[F], F]:
        """Run the decorated handler for every event of ``trigger``, up to ``concurrency`` at once.

        An exception retries it with backoff (``retry``); a payload that fails validation goes to
        the dead-letter queue at once; a handler running past ``timeout`` counts as failed.
        """
        queue = self._trigger(trigger)
        if concurrency < 1:
            raise AppError(f"concurrency must be at least 1, got {concurrency}")
        timeout_s = None if timeout is None else seconds(timeout, name="timeout")

        def register(fn: F) -> F:
            fname: str = name or getattr(fn, "__name__", None) or "handler"
            if fname in self.functions:
                raise AppError(f"function {fname!r} is declared twice")
            self.functions[fname] = Function(fname, queue, Handler.inspect(fn), concurrency,
                                             retry or Retry(), timeout_s)
            return fn

        return register

    def _trigger(self, trigger: Queue | str) -> Queue:
        if isinstance(trigger, Queue):
            return self.queues.setdefault(trigger.name, trigger)
        if trigger in self.queues:
            return self.queues[trigger]
        raise AppError(f"unknown queue {trigger!r}: declare it first with app.queue({trigger!r})")
