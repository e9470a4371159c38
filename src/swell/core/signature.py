"""Reading what a user's function asks for from its signature, once, at declaration: its
parameters with their annotations resolved, and a validator for each payload type. Handlers and
saga steps both read theirs through this."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import pydantic

from swell.core.errors import AppError

__all__ = ["NO_VALIDATION", "name_of", "parameters", "validator"]

#: annotations that ask for no validation: the value is passed as decoded
NO_VALIDATION = (Any, inspect.Parameter.empty, object)


def name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def parameters(fn: Callable[..., Any], *, annotated: Callable[..., Any] | None = None
               ) -> list[tuple[inspect.Parameter, Any]]:
    """``fn``'s parameters, each with its annotation resolved (``annotated`` is where to read the
    annotations, if not from ``fn`` itself: the function a decorator wraps). Annotations that
    cannot be read (a ``NameError`` or worse) raise ``AppError``."""
    try:
        hints = typing.get_type_hints(annotated or fn, include_extras=True)
    except Exception as exc:  # a NameError or worse from the user's annotations
        raise AppError(f"cannot read the annotations of {name_of(fn)}: {exc}") from exc
    return [(p, hints.get(p.name, p.annotation))
            for p in inspect.signature(fn).parameters.values()]


def validator(name: str, ann: Any) -> pydantic.TypeAdapter[Any] | None:
    """A validator for values annotated ``ann`` (``None``: no validation asked for); a type
    pydantic cannot validate raises ``AppError`` naming ``name``."""
    if ann in NO_VALIDATION:
        return None
    try:
        return pydantic.TypeAdapter(ann)
    except pydantic.PydanticUserError as exc:
        raise AppError(f"{name}: cannot validate {ann!r}: {exc}") from exc
