"""Routing keys (an event's ``subject``) and the NATS-style patterns a subscription filters them with.

A routing key is dot-separated non-empty tokens without whitespace (``orders.eu.created``); a
:class:`SubjectPattern` may use ``*`` for exactly one token and ``>`` (last token only) for one or
more.
"""

from __future__ import annotations

import re
from typing import Any

from swell.core.errors import ConfigError, PayloadError

__all__ = ["PatternError", "SubjectPattern", "check_subject"]


class PatternError(ConfigError):
    """A filter or subject pattern that is not valid; the message says where (``at data.amount: ...``)."""


_SPACE = re.compile(r"\s")


def _tokens(text: str) -> list[str]:
    """Why ``text`` is not dot-separated non-empty tokens without whitespace, or its tokens."""
    if not isinstance(text, str) or not text:
        raise ValueError("must be a non-empty string")
    if _SPACE.search(text):
        raise ValueError("must not contain whitespace")
    tokens = text.split(".")
    if "" in tokens:
        raise ValueError("has an empty token (tokens are separated by single dots)")
    return tokens


class SubjectPattern:
    """A routing-key pattern: dot-separated tokens, ``*`` matches exactly one token, ``>`` (last token
    only) matches one or more tokens, as in NATS. ``SubjectPattern.parse("orders.*.eu.>")``.
    """

    __slots__ = ("_prefix", "_tail", "_wild", "text")

    def __init__(self, text: str) -> None:
        try:
            tokens = _tokens(text)
        except ValueError as exc:
            raise PatternError(f"subject pattern {text!r} {exc}") from None
        for i, token in enumerate(tokens):
            if token == ">" and i != len(tokens) - 1:
                raise PatternError(f"subject pattern {text!r}: '>' may only be the last token")
            if token not in ("*", ">") and ("*" in token or ">" in token):
                raise PatternError(f"subject pattern {text!r}: '*' and '>' must be whole tokens")
        self.text = text
        self._tail = tokens[-1] == ">"
        self._prefix = tuple(tokens[:-1] if self._tail else tokens)
        self._wild = self._tail or "*" in tokens

    @classmethod
    def parse(cls, pattern: str) -> SubjectPattern:
        """Compile a pattern; an invalid one raises :class:`PatternError`."""
        return cls(pattern)

    def match(self, subject: str | None) -> bool:
        """Whether a concrete routing key matches; ``None`` (no subject) never does."""
        if subject is None:
            return False
        if not self._wild:
            return subject == self.text
        parts = subject.split(".")
        n = len(self._prefix)
        if (len(parts) <= n) if self._tail else (len(parts) != n):
            return False
        for want, got in zip(self._prefix, parts, strict=False):
            if want == "*" and got:
                continue
            if want != got:
                return False
        return not self._tail or all(parts[n:])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubjectPattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"SubjectPattern({self.text!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (SubjectPattern.parse, (self.text,))


def check_subject(subject: str) -> str:
    """Return ``subject`` if it is a concrete routing key (dot-separated non-empty tokens without
    whitespace, ``*`` or ``>``), else raise :class:`PayloadError`."""
    try:
        tokens = _tokens(subject)
    except ValueError as exc:
        raise PayloadError(f"subject {subject!r} {exc}") from None
    if any("*" in token or ">" in token for token in tokens):
        raise PayloadError(f"subject {subject!r} must not contain the wildcards '*' or '>'")
    return subject
