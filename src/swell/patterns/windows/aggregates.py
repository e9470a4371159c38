"""What a window computes over its events: an accumulator started by ``init``, grown by ``add``,
combined by ``merge`` (session windows) and read by ``result``.

Accumulators are kept in the operator's snapshot as JSON, so they must be JSON values (numbers,
strings, lists, dicts, ``None``); ``Mean`` keeps ``[sum, count]``. A ``Reducer``'s accumulator must
be one too (a tuple comes back from a restore as a list), and so must what ``result`` returns.
``add`` and ``merge`` must return a new accumulator rather than change the one given: when they raise,
the operator's state is left as it was.

``field``: an aggregate with a field reads ``value[field]`` when the value is a mapping, and the value
itself otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

A = TypeVar("A")
V = TypeVar("V")


class Aggregate:
    """The base of the aggregates; subclass it (or use ``Reducer``) for your own."""

    #: whether ``merge`` works (session windows need it)
    mergeable = True

    def init(self) -> Any:
        """A new, empty accumulator."""
        raise NotImplementedError

    def add(self, acc: Any, value: Any) -> Any:
        """``acc`` with ``value`` added (a new accumulator)."""
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        """One accumulator for the events of ``a`` and then ``b``."""
        raise NotImplementedError

    def result(self, acc: Any) -> Any:
        """The value a pane carries."""
        return acc


def pick(value: Any, field: str | None) -> Any:
    """``value[field]`` for a mapping and a field, else ``value``."""
    if field is None:
        return value
    if type(value) is dict or isinstance(value, Mapping):
        return value[field]
    return value


def number(value: Any, who: str) -> None:
    """Raise unless ``value`` is a number (an int or float subclass, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{who} takes numbers, not {type(value).__name__} {value!r:.60}")


class Count(Aggregate):
    """How many events."""

    def init(self) -> int:
        return 0

    def add(self, acc: int, value: Any) -> int:
        return acc + 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def __repr__(self) -> str:
        return "Count()"


class Sum(Aggregate):
    """The sum of the values (or of ``value[field]``); a value that is not a number raises."""

    def __init__(self, field: str | None = None) -> None:
        self.field = field

    def init(self) -> Any:
        return 0

    def add(self, acc: Any, value: Any) -> Any:
        if self.field is not None:
            value = pick(value, self.field)
        kind = type(value)
        if kind is not int and kind is not float:
            number(value, "Sum")
        return acc + value

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def __repr__(self) -> str:
        return f"Sum({self.field!r})" if self.field is not None else "Sum()"


class Mean(Aggregate):
    """The mean of the values (or of ``value[field]``); the accumulator is ``[sum, count]``."""

    def __init__(self, field: str | None = None) -> None:
        self.field = field

    def init(self) -> list[Any]:
        return [0, 0]

    def add(self, acc: list[Any], value: Any) -> list[Any]:
        value = pick(value, self.field)
        kind = type(value)
        if kind is not int and kind is not float:
            number(value, "Mean")
        return [acc[0] + value, acc[1] + 1]

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        return [a[0] + b[0], a[1] + b[1]]

    def result(self, acc: list[Any]) -> float | None:
        return acc[0] / acc[1] if acc[1] else None

    def __repr__(self) -> str:
        return f"Mean({self.field!r})" if self.field is not None else "Mean()"


class _Extreme(Aggregate):
    """The smallest or largest value (or ``value[field]``): ``Min`` and ``Max``."""

    def __init__(self, field: str | None = None) -> None:
        self.field = field

    @staticmethod
    def better(value: Any, acc: Any) -> bool:
        raise NotImplementedError

    def init(self) -> Any:
        return None

    def add(self, acc: Any, value: Any) -> Any:
        value = pick(value, self.field)
        if value is None:
            raise TypeError(f"{type(self).__name__} takes values that compare, not None")
        return value if acc is None or self.better(value, acc) else acc

    def merge(self, a: Any, b: Any) -> Any:
        return a if b is None else self.add(a, b)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({self.field!r})" if self.field is not None else f"{name}()"


class Min(_Extreme):
    """The smallest value (or ``value[field]``); values that cannot be compared raise."""

    @staticmethod
    def better(value: Any, acc: Any) -> bool:
        return bool(value < acc)


class Max(_Extreme):
    """The largest value (or ``value[field]``); values that cannot be compared raise."""

    @staticmethod
    def better(value: Any, acc: Any) -> bool:
        return bool(value > acc)


class Reducer(Aggregate, Generic[A, V]):
    """Your own aggregate from functions: ``init() -> A``, ``add(A, V) -> A``, and for session
    windows ``merge(A, A) -> A``; ``result(A)`` (default: the accumulator) is what a pane carries.
    ``A`` must be a JSON value (see the module's notes) and ``add``/``merge`` must not change the
    accumulator they are given."""

    def __init__(self, init: Callable[[], A], add: Callable[[A, V], A],
                 merge: Callable[[A, A], A] | None = None,
                 result: Callable[[A], Any] | None = None) -> None:
        self._init, self._add, self._merge, self._result = init, add, merge, result
        self.mergeable = merge is not None

    def init(self) -> A:
        return self._init()

    def add(self, acc: A, value: V) -> A:
        return self._add(acc, value)

    def merge(self, a: A, b: A) -> A:
        if self._merge is None:
            raise TypeError("this Reducer has no merge")
        return self._merge(a, b)

    def result(self, acc: A) -> Any:
        return acc if self._result is None else self._result(acc)

    def __repr__(self) -> str:
        return f"Reducer({getattr(self._add, '__qualname__', 'add')})"
