"""What a handler asks for, read once from its signature: payload type, ``Event[T]``, ``Context``;
and whether it is async, seen through decorators that hide it (``functools.wraps`` leaves
``__wrapped__``), so that an ``async def`` under a plain ``def`` decorator is awaited."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic

from swell.core.codec import encode_json
from swell.core.errors import AppError
from swell.core.event import Event
from swell.core.signature import name_of, parameters, validator
from swell.runtime.context import Context, ContextBase, SyncContext


@dataclass(frozen=True, slots=True)
class Handler:
    """A user's function and how to call it with an event."""

    fn: Callable[..., Any]
    is_async: bool
    payload: str | None          # the parameter that gets the data (or the Event)
    wants_event: bool            # True: the parameter gets the whole Event[T]
    wants_bytes: bool
    adapter: pydantic.TypeAdapter[Any] | None
    context: str | None          # the parameter that gets the Context

    @classmethod
    def inspect(cls, fn: Callable[..., Any]) -> Handler:
        name = name_of(fn)
        is_async = _is_async(fn, name)
        payload = context = None
        wants_event = wants_bytes = False
        adapter: pydantic.TypeAdapter[Any] | None = None
        for p, ann in parameters(fn, annotated=_annotated(fn)):
            if ann is Context or ann is SyncContext:
                if ann is SyncContext and is_async:
                    raise AppError(f"{name}: an 'async def' handler takes a Context, not a "
                                   "SyncContext (that is for a plain 'def' handler)")
                context = p.name
            elif payload is None:
                payload = p.name
                if ann is Event or typing.get_origin(ann) is Event:
                    wants_event = True
                    args = typing.get_args(ann)
                    ann = args[0] if args else Any
                if ann is bytes:
                    wants_bytes = True
                else:
                    adapter = validator(name, ann)
            elif p.default is inspect.Parameter.empty:
                raise AppError(f"{name}: parameter {p.name!r} has no value to receive; a handler "
                               "takes one payload (or Event[T]) and optionally a Context")
        return cls(fn, is_async, payload, wants_event, wants_bytes, adapter, context)

    def arguments(self, event: Event[Any], ctx: ContextBase | None) -> dict[str, Any]:
        """Keyword arguments for one call; raises ``pydantic.ValidationError`` on a bad payload.
        ``ctx`` may be ``None`` when the handler takes no Context."""
        kwargs: dict[str, Any] = {}
        if self.payload is not None:
            data = event.data
            if self.wants_bytes:
                if isinstance(data, str) and not event.is_json:
                    data = data.encode()  # text content (xml, csv, ...) as its own bytes
                elif not isinstance(data, bytes):
                    data = b"" if data is None else encode_json(data)
            elif self.adapter is not None:
                data = self.adapter.validate_python(data)
            kwargs[self.payload] = event.replace(data=data) if self.wants_event else data
        if self.context is not None:
            kwargs[self.context] = ctx
        return kwargs


def _annotated(fn: Callable[..., Any]) -> Any:
    """What carries ``fn``'s annotations: itself, or the ``__call__`` of a callable object."""
    call = inspect.getattr_static(type(fn), "__call__", None)
    return call if inspect.isfunction(call) and not inspect.isroutine(fn) else fn


def _is_async(fn: Callable[..., Any], name: str) -> bool:
    """Whether calling ``fn`` gives an awaitable: an ``async def``, also under decorators that
    say what they wrap (``functools.wraps``) and as a callable object's ``__call__``. A generator
    (async or not) is refused: calling it runs none of its body, and what it yields has nowhere
    to go."""
    inner = inspect.unwrap(fn)
    seen = dict.fromkeys((fn, inner, _annotated(fn), _annotated(inner)))
    for f in seen:
        if inspect.isasyncgenfunction(f) or inspect.isgeneratorfunction(f):
            kind = "an async generator" if inspect.isasyncgenfunction(f) else "a generator"
            raise AppError(f"{name} is {kind} (it yields): a handler returns when its work is "
                           "done; send events onward with ctx.publish(...) instead of yielding them")
    return any(inspect.iscoroutinefunction(f) for f in seen)
