"""Topic filters: EventBridge-style content patterns (routing-key patterns: ``swell.core.subjects``).

A :class:`Pattern` is compiled once into a tree of small nodes whose leaves hold one test per JSON
value type (a frozenset lookup for exact strings, a closure for a prefix or a numeric range, ...), so a
match is a walk of dict lookups and calls with no allocation on the common path. Patterns are data,
never code: nothing is ever ``eval``-ed.

Semantics follow Amazon EventBridge and aws/event-ruler:

- keys at one level are AND-ed; the conditions of one leaf array are OR-ed;
- an event array matches a leaf if any of its elements does; within an array of objects, the fields of
  one sub-pattern must all match in the same element (event-ruler's array-consistent matching), except
  ``{"exists": false}``, which holds when the path yields no value anywhere in the event;
- a missing field matches nothing but ``{"exists": false}`` (not even ``anything-but``);
- numbers compare numerically (``5`` matches ``5.0``) and are never strings or booleans.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import msgspec

from swell.core.subjects import PatternError, SubjectPattern, check_subject

__all__ = ["Pattern", "PatternError", "SubjectPattern", "check_subject"]  # the last three: from subjects

Test = Callable[[Any], bool]
_NUMBER_TYPES = (int, float)
_MISSING: Any = object()
_EMPTY: Mapping[str, Any] = {}
_STRING_OPERATORS = ("prefix", "suffix", "equals-ignore-case", "wildcard")
_RANGE_TESTS: dict[tuple[str, str], Callable[[float, float], Test]] = {
    (">", "<"): lambda lo, hi: lambda v: lo < v < hi,
    (">", "<="): lambda lo, hi: lambda v: lo < v <= hi,
    (">=", "<"): lambda lo, hi: lambda v: lo <= v < hi,
    (">=", "<="): lambda lo, hi: lambda v: lo <= v <= hi,
}
_BOUND_TESTS: dict[str, Callable[[float], Test]] = {
    "<": lambda n: lambda v: v < n,
    "<=": lambda n: lambda v: v <= n,
    ">": lambda n: lambda v: v > n,
    ">=": lambda n: lambda v: v >= n,
    "=": lambda n: lambda v: v == n,
}


def _fail(where: str, message: str) -> PatternError:
    return PatternError(f"at {where or 'top level'}: {message}")


def _always(value: Any) -> bool:
    return True


def _never(value: Any) -> bool:
    return False


def _any_of(tests: Sequence[Test]) -> Test:
    if not tests:
        return _never
    if _always in tests:
        return _always
    if len(tests) == 1:
        return tests[0]
    frozen = tuple(tests)

    def test(value: Any) -> bool:
        # a loop, not any(<generator>): no allocation per match
        for one in frozen:  # noqa: SIM110
            if one(value):
                return True
        return False

    return test


def _flatten(value: Any) -> Iterator[Any]:
    """The elements of a (nested) event array, or the value itself."""
    if isinstance(value, list | tuple):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _has_leaf(root: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    """Whether ``path`` yields at least one non-object value anywhere in ``root`` (arrays crushed)."""
    current: list[Any] = [root]
    for key in path:
        current = [obj[key] for item in current for obj in _flatten(item)
                   if isinstance(obj, Mapping) and key in obj]
    return any(not isinstance(x, Mapping) for item in current for x in _flatten(item))


# ---------------------------------------------------------------------------------------------- compile


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER_TYPES) and not isinstance(value, bool)


def _check_number(where: str, value: Any, what: str) -> float:
    if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise _fail(where, f"{what} must be a finite number, not {value!r}")
    return value  # type: ignore[no-any-return]


def _check_string(where: str, value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"{what} must be a string, not {value!r}")
    return value


def _strings(where: str, value: Any, what: str) -> list[str]:
    """One string or a non-empty list of strings."""
    items = list(value) if isinstance(value, list | tuple) else [value]
    if not items:
        raise _fail(where, f"{what} must not be an empty list")
    return [_check_string(where, item, what) for item in items]


def _wildcard(where: str, text: str) -> Test:
    """``*`` is any run of characters, ``\\*`` a star, ``\\\\`` a backslash; ``**`` is refused."""
    parts: list[str] = []
    literal: list[str] = []
    i, previous_star = 0, False
    while i < len(text):
        char = text[i]
        if char == "*":
            if previous_star:
                raise _fail(where, f"wildcard {text!r} has consecutive '*'")
            parts.append(re.escape("".join(literal)) + ".*")
            literal, previous_star = [], True
            i += 1
            continue
        if char == "\\":
            escaped = text[i + 1 : i + 2]
            if escaped not in ("*", "\\"):
                raise _fail(where, f"wildcard {text!r}: a backslash may only escape '*' or '\\'")
            char = escaped
            i += 1
        literal.append(char)
        previous_star = False
        i += 1
    if not parts:  # no star: plain equality
        exact = "".join(literal)
        return lambda v: v == exact
    regex = re.compile("".join(parts) + re.escape("".join(literal)), re.DOTALL)
    return lambda v: regex.fullmatch(v) is not None


def _string_test(where: str, op: str, operand: Any) -> Test:
    """A test on str values for prefix/suffix/equals-ignore-case/wildcard (and ignore-case forms)."""
    if op in ("prefix", "suffix") and isinstance(operand, Mapping):
        if list(operand) != ["equals-ignore-case"]:
            raise _fail(where, f"{op} takes a string or {{\"equals-ignore-case\": string}}")
        folded = _check_string(where, operand["equals-ignore-case"], f"{op} operand").casefold()
        if op == "prefix":
            return lambda v: v.casefold().startswith(folded)
        return lambda v: v.casefold().endswith(folded)
    if op == "prefix":
        prefix = _check_string(where, operand, "prefix")
        return lambda v: v.startswith(prefix)
    if op == "suffix":
        suffix = _check_string(where, operand, "suffix")
        return lambda v: v.endswith(suffix)
    if op == "equals-ignore-case":
        folded = _check_string(where, operand, "equals-ignore-case").casefold()
        return lambda v: v.casefold() == folded
    return _wildcard(where, _check_string(where, operand, "wildcard"))


def _numeric(where: str, operand: Any) -> Test:
    if not isinstance(operand, list | tuple) or len(operand) not in (2, 4):
        raise _fail(where, "numeric takes [op, n] or ['>'|'>=', low, '<'|'<=', high]")
    first = operand[0]
    if len(operand) == 2:
        if first not in _BOUND_TESTS:
            raise _fail(where, f"numeric operator {first!r} is not one of < <= > >= =")
        return _BOUND_TESTS[first](_check_number(where, operand[1], "numeric bound"))
    key = (first, operand[2])
    if key not in _RANGE_TESTS:
        raise _fail(where, "a numeric range is ['>'|'>=', low, '<'|'<=', high]")
    lo = _check_number(where, operand[1], "numeric bound")
    hi = _check_number(where, operand[3], "numeric bound")
    if not lo < hi:
        raise _fail(where, f"numeric range is empty: low {lo!r} is not below high {hi!r}")
    return _RANGE_TESTS[key](lo, hi)


class _Leaf:
    """The OR-ed conditions of one field: a test per JSON scalar type, plus what absence gives."""

    __slots__ = ("absent_ok", "by_type", "path")

    def __init__(self, path: tuple[str, ...], where: str, conditions: Any) -> None:
        if not isinstance(conditions, list | tuple) or not conditions:
            raise _fail(where, f"a field's value must be a non-empty array of conditions, not {conditions!r}")
        self.path = path
        self.absent_ok = False
        exact_str: set[str] = set()
        exact_num: set[float] = set()
        exact_other: set[Any] = set()  # True, False, None
        tests: dict[type, list[Test]] = {str: [], float: [], bool: [], type(None): []}
        for i, condition in enumerate(conditions):
            here = f"{where}[{i}]"
            if isinstance(condition, str):
                exact_str.add(condition)
            elif _is_number(condition):
                exact_num.add(_check_number(here, condition, "value"))
            elif condition is None or isinstance(condition, bool):
                exact_other.add(condition)
            elif isinstance(condition, Mapping):
                self._operator(here, condition, tests)
            else:
                raise _fail(here, f"a condition must be a string, number, boolean, null or operator object, "
                            f"not {condition!r}")
        if exact_str:
            tests[str].append(frozenset(exact_str).__contains__)
        if exact_num:
            tests[float].append(frozenset(exact_num).__contains__)
        if exact_other:
            tests[bool].append(frozenset(exact_other).__contains__)
            tests[type(None)].append(frozenset(exact_other).__contains__)
        self.by_type: dict[type, Test] = {kind: _any_of(tests[kind]) for kind in tests}
        self.by_type[int] = self.by_type[float]

    def _operator(self, where: str, condition: Mapping[str, Any], tests: dict[type, list[Test]]) -> None:
        if len(condition) != 1:
            raise _fail(where, f"an operator object has exactly one key, not {sorted(condition)!r}")
        ((op, operand),) = condition.items()
        if op in _STRING_OPERATORS:
            tests[str].append(_string_test(where, op, operand))
        elif op == "numeric":
            tests[float].append(_numeric(where, operand))
        elif op == "exists":
            if not isinstance(operand, bool):
                raise _fail(where, f"exists takes true or false, not {operand!r}")
            if operand:
                for kind in tests:
                    tests[kind].append(_always)
            else:
                self.absent_ok = True
        elif op == "anything-but":
            _anything_but(where, operand, tests)
        elif op == "cidr":
            tests[str].append(_cidr(where, operand))
        else:
            raise _fail(where, f"unknown operator {op!r}")

    def slow(self, value: Any, root: Mapping[str, Any], in_array: bool) -> bool:
        """A value that is not a scalar: an array, an object, or missing."""
        if isinstance(value, list | tuple):
            present = False
            for item in _flatten(value):
                test = self.by_type.get(type(item))
                if test is not None:
                    if test(item):
                        return True
                    present = True
            if present:
                return False
        if not self.absent_ok:
            return False
        # inside an array of objects, "exists: false" means absent from every element
        return not in_array or not _has_leaf(root, self.path)


def _anything_but(where: str, operand: Any, tests: dict[type, list[Test]]) -> None:
    """Present values that are not excluded match; strings never exclude numbers, nor numbers strings.

    ``{"anything-but": {op: x}}`` with op prefix, suffix, equals-ignore-case or wildcard takes a string
    or a list of strings (as event-ruler does): a value matches if it matches none of them."""
    if isinstance(operand, Mapping):
        if len(operand) != 1 or next(iter(operand)) not in _STRING_OPERATORS:
            raise _fail(where, "anything-but takes a value, a list, or one of "
                        "{prefix|suffix|equals-ignore-case|wildcard: a string or a list of strings}")
        ((op, inner),) = operand.items()
        values = _strings(where, inner, f"anything-but {op}")
        if op in ("prefix", "suffix") and "" in values:  # an empty one would exclude every string
            raise _fail(where, f"anything-but {op} takes non-empty strings, not {inner!r}")
        excluded = _any_of([_string_test(where, op, value) for value in values])
        tests[str].append(lambda v: not excluded(v))
        tests[float].append(_always)
    else:
        items = list(operand) if isinstance(operand, list | tuple) else [operand]
        if not items:
            raise _fail(where, "anything-but must not be an empty list")
        if all(isinstance(item, str) for item in items):
            strings = frozenset(items)
            tests[str].append(lambda v: v not in strings)
            tests[float].append(_always)
        elif all(_is_number(item) for item in items):
            numbers = frozenset(_check_number(where, item, "anything-but value") for item in items)
            tests[float].append(lambda v: v not in numbers)
            tests[str].append(_always)
        else:
            raise _fail(where, f"anything-but takes strings only or numbers only, not {operand!r}")
    tests[bool].append(_always)
    tests[type(None)].append(_always)


def _cidr(where: str, operand: Any) -> Test:
    try:
        network = ipaddress.ip_network(_check_string(where, operand, "cidr"), strict=False)
    except ValueError as exc:
        raise _fail(where, f"cidr {operand!r} is not an IP network: {exc}") from None

    def test(value: str) -> bool:
        try:
            return ipaddress.ip_address(value) in network
        except ValueError:
            return False

    return test


class _Node:
    """An object level of a pattern: AND of its fields, and of each ``$or``'s alternatives."""

    __slots__ = ("leaves", "nodes", "ors")

    def __init__(self, path: tuple[str, ...], where: str, pattern: Any) -> None:
        if not isinstance(pattern, Mapping):
            raise _fail(where, f"a pattern must be a JSON object, not {pattern!r}")
        if not pattern:
            raise _fail(where, "a pattern object must not be empty")
        leaves: list[tuple[str, dict[type, Test], _Leaf]] = []
        nodes: list[tuple[str, _Node]] = []
        ors: list[tuple[_Node, ...]] = []
        for key, value in pattern.items():
            if not isinstance(key, str):
                raise _fail(where, f"keys must be strings, not {key!r}")
            here = f"{where}.{key}" if where else key
            if key == "$or":
                if not isinstance(value, list | tuple) or len(value) < 2:
                    raise _fail(here, "$or takes a list of at least two patterns")
                ors.append(tuple(_Node(path, f"{here}[{i}]", alt) for i, alt in enumerate(value)))
            elif isinstance(value, Mapping):
                nodes.append((key, _Node((*path, key), here, value)))
            else:
                leaf = _Leaf((*path, key), here, value)
                leaves.append((key, leaf.by_type, leaf))
        self.leaves = tuple(leaves)
        self.nodes = tuple(nodes)
        self.ors = tuple(ors)

    def match(self, obj: Mapping[str, Any], root: Mapping[str, Any], in_array: bool) -> bool:
        get = obj.get
        for key, by_type, leaf in self.leaves:
            value = get(key, _MISSING)
            test = by_type.get(type(value))
            if test is None:
                if not leaf.slow(value, root, in_array):
                    return False
            elif not test(value):
                return False
        for key, node in self.nodes:
            value = get(key, _MISSING)
            if type(value) is dict:
                if not node.match(value, root, in_array):
                    return False
            elif not node.match_value(value, root, in_array):
                return False
        for alternatives in self.ors:
            for alternative in alternatives:
                if alternative.match(obj, root, in_array):
                    break
            else:
                return False
        return True

    def match_value(self, value: Any, root: Mapping[str, Any], in_array: bool) -> bool:
        """Match a value that is not a dict: an array (any object element), a scalar, or missing."""
        if isinstance(value, Mapping):
            return self.match(value, root, in_array)
        if isinstance(value, list | tuple):
            objects = [item for item in _flatten(value) if isinstance(item, Mapping)]
            if objects:
                return any(self.match(item, root, True) for item in objects)
            return self.match(_EMPTY, root, True)
        return self.match(_EMPTY, root, in_array)


# ---------------------------------------------------------------------------------------------- public


def _plain(value: Any) -> Any:
    """JSON data with any Mapping made a dict and any tuple a list (for the canonical form)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


class Pattern:
    """An EventBridge-style event pattern, compiled once, matched many times (never eval).

    ``Pattern.parse('{"type": ["order.created"], "data": {"amount": [{"numeric": [">", 100]}]}}')``;
    ``pattern.match(event)`` takes a decoded CloudEvent (a dict). Equal patterns have equal
    :attr:`json`, which is canonical (sorted keys, compact).
    """

    __slots__ = ("_json", "_root")

    def __init__(self, pattern: Mapping[str, Any]) -> None:
        self._root = _Node((), "", pattern)
        self._json = msgspec.json.encode(_plain(pattern), order="sorted").decode()

    @classmethod
    def parse(cls, pattern: str | bytes | Mapping[str, Any]) -> Pattern:
        """Compile JSON text or the equivalent dict; an invalid pattern raises :class:`PatternError`."""
        data: Any = pattern
        if isinstance(pattern, str | bytes):
            try:
                data = msgspec.json.decode(pattern)
            except msgspec.DecodeError as exc:
                raise PatternError(f"pattern is not valid JSON: {exc}") from None
        return cls(data)

    def match(self, event: Mapping[str, Any]) -> bool:
        """Whether a decoded JSON event matches."""
        return self._root.match(event, event, False)

    @property
    def json(self) -> str:
        """The canonical JSON text: sorted keys, no spaces."""
        return self._json

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other._json == self._json

    def __hash__(self) -> int:
        return hash(self._json)

    def __repr__(self) -> str:
        return f"Pattern({self._json!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Pattern.parse, (self._json,))

