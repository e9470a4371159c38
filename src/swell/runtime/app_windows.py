"""The part of ``App`` that declares window functions: a consumer group's events aggregated per key
in event-time windows, panes emitted to a channel (see ``swell.windows`` for the semantics)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from swell.core.config import Duration, seconds
from swell.core.errors import AppError
from swell.core.event import Event
from swell.patterns.windows import (
    Aggregate,
    BoundedOutOfOrder,
    Session,
    Sliding,
    Tumbling,
    WindowOperator,
)
from swell.patterns.windows.panes import event_seconds
from swell.runtime.channels import Group, Queue, Stream, Topic, check_name

if TYPE_CHECKING:
    from swell.runtime.app import Function
    from swell.scaling.base import Controller

__all__ = ["TimeOf", "WindowDeclarations", "WindowFunction", "WindowSpec"]

F = TypeVar("F", bound=Callable[..., Any])
Late = Literal["update", "retract", "drop", "side"]
TimeOf = Literal["event", "event_or_enqueued", "enqueued"] | Callable[[Event[Any]], Any]
"""Where an event's time comes from: its CloudEvents ``time`` (an event without one is
dead-lettered), that or else when it was appended, always when it was appended (processing-time
windows), or a callable that reads it from the event (a ``datetime``, epoch seconds or an ISO
8601 string)."""


@dataclass(frozen=True)
class WindowSpec:
    """What a window function does with each event of its group."""

    key: Callable[[Event[Any]], Any] | None
    """``None``: the event's partition key."""
    window: Tumbling | Sliding | Session
    aggregate: Aggregate
    watermark: BoundedOutOfOrder
    allowed_lateness_s: float
    late: Late
    early_every_s: float | None
    emit_to: str
    time_of: TimeOf
    value: Callable[[Event[Any]], Any]

    def operator(self, name: str) -> WindowOperator:
        return WindowOperator(self.window, self.aggregate, allowed_lateness=self.allowed_lateness_s,
                              late=self.late, early_every=self.early_every_s, name=name)


class WindowFunction:
    """A declared window function; decorate a handler with it to receive its panes (an ordinary
    function on the panes' queue: ``async def on_pane(pane: dict) -> None``)."""

    def __init__(self, app: WindowDeclarations, fn: Function, spec: WindowSpec) -> None:
        self._app = app
        self.function = fn
        self.spec = spec

    @property
    def name(self) -> str:
        return self.function.name

    def __call__(self, handler: F) -> F:
        if self.spec.emit_to not in self._app.queues:
            raise AppError(f"window {self.name!r} emits to {self.spec.emit_to!r}, not a queue: a "
                           "pane handler reads a queue (leave emit_to out to get one)")
        return self._app.function(self._app.queues[self.spec.emit_to],
                                  name=f"{self.name}.on_pane")(handler)


class WindowDeclarations:
    """Mixed into ``App``."""

    queues: dict[str, Queue]
    topics: dict[str, Topic]
    streams: dict[str, Stream]
    functions: dict[str, Function]

    if TYPE_CHECKING:
        def queue(self, name: str) -> Queue: ...

        def function(self, trigger: Queue | Group | str, *,
                     concurrency: int | Controller | None = None,
                     name: str | None = None) -> Callable[[F], F]: ...

    def window(self, group: Group, *, key: Callable[[Event[Any]], Any] | None = None,
               window: Tumbling | Sliding | Session, aggregate: Aggregate,
               watermark: BoundedOutOfOrder | None = None, allowed_lateness: Duration = 0,
               late: Late = "update", early_every: Duration | None = None,
               emit_to: Queue | Topic | Stream | str | None = None, time_of: TimeOf = "event",
               value: Callable[[Event[Any]], Any] | None = None, name: str | None = None,
               concurrency: int | Controller | None = None) -> WindowFunction:
        """Aggregate ``group``'s events per ``key(event)`` in event-time windows: ``app.window(
        clicks.group("page-counts"), key=lambda e: e.data["page"], window=Tumbling("1m"),
        aggregate=Count(), watermark=BoundedOutOfOrder("10s"), allowed_lateness="5m",
        late="retract", emit_to=counts)``. Each pane (``swell.windows.Pane``) goes to ``emit_to``
        (a queue ``<name>.panes`` unless given; decorate a handler with the result to read them)
        with the pane's id as the event id, so a repeat after a crash is a duplicate. The state
        (open windows, per partition) is checkpointed with the group's offsets. ``value(event)``
        is what the aggregate reads (the event's data unless given).

        A key's events must all be in one partition: ``key`` (the event's partition key unless
        given) must give the key the events were appended with (``key=`` of the publish). An
        event whose window key differs from its partition key is dead-lettered with the reason.
        ``late="side"`` puts the events too late for their window in the group's dead-letter
        queue (reason ``too late``)."""
        if not isinstance(group, Group):
            raise AppError(f"a window reads a stream's consumer group (stream.group(...)), not "
                           f"{group!r}")
        fname = check_name("window", name or f"{group.stream.name}.{group.name}")
        if late not in ("update", "retract", "drop", "side"):
            raise AppError(f"window {fname!r}: late must be 'update', 'retract', 'drop' or "
                           f"'side', not {late!r}")
        if not (callable(time_of) or time_of in ("event", "event_or_enqueued", "enqueued")):
            raise AppError(f"window {fname!r}: time_of must be 'event', 'event_or_enqueued', "
                           f"'enqueued' or a callable, not {time_of!r}")
        target = self._emit_target(fname, emit_to)
        spec = WindowSpec(
            key=key, window=window, aggregate=aggregate,
            watermark=watermark or BoundedOutOfOrder(0),
            allowed_lateness_s=seconds(allowed_lateness, name=f"window {fname!r}: allowed_lateness"),
            late=late,
            early_every_s=None if early_every is None else seconds(
                early_every, name=f"window {fname!r}: early_every", positive=True),
            emit_to=target, time_of=time_of, value=value or _data)
        spec.operator(fname)  # bad settings: one clear error here, not at the first event

        async def windowed(event: Event[Any]) -> None:  # (never called: see WindowDispatcher)
            raise AssertionError("a window function's events go through its operator")

        self.function(group, concurrency=concurrency, name=fname)(windowed)
        fn = self.functions[fname] = dataclasses.replace(self.functions[fname], window=spec)
        return WindowFunction(self, fn, spec)

    def _emit_target(self, name: str, emit_to: Queue | Topic | Stream | str | None) -> str:
        if emit_to is None:
            return self.queue(f"{name}.panes").name
        target = emit_to if isinstance(emit_to, str) else emit_to.name
        if target not in self.queues and target not in self.topics and target not in self.streams:
            raise AppError(f"window {name!r}: unknown channel {target!r} to emit to: declare the "
                           "queue, topic or stream first")
        return target


def _data(event: Event[Any]) -> Any:
    return event.data


def event_time(value: Any) -> float:
    """Epoch seconds from a ``datetime``, a number or an ISO 8601 string (without an offset: UTC,
    as everywhere in swell, never the machine's zone); ``ValueError`` if it is none of them."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return event_seconds(value)
