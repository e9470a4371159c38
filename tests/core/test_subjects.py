"""Routing keys: NATS-style subject patterns and the check of a concrete subject."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from swell.core import filters
from swell.core.errors import ConfigError, PayloadError
from swell.core.subjects import PatternError, SubjectPattern, check_subject


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("orders.created", "orders.created", True),
        ("orders.created", "orders.created.eu", False),
        ("orders.created", "orders", False),
        ("orders.*", "orders.created", True),
        ("orders.*", "orders.created.eu", False),
        ("orders.*", "orders", False),
        ("*.created", "orders.created", True),
        ("*.created", "orders.deleted", False),
        ("*", "orders", True),
        ("*", "orders.created", False),
        ("orders.*.eu", "orders.created.eu", True),
        ("orders.*.eu", "orders.created.us", False),
        ("orders.>", "orders.created", True),
        ("orders.>", "orders.created.eu.north", True),
        ("orders.>", "orders", False),
        ("orders.>", "invoices.created", False),
        (">", "orders", True),
        (">", "orders.created.eu", True),
        ("*.*.>", "a.b", False),
        ("*.*.>", "a.b.c", True),
        ("*.created.>", "orders.created.eu", True),
        ("orders.*", "orders.", False),
        ("orders.>", "orders..x", False),
        ("orders.created", None, False),
        ("*", None, False),
        (">", None, False),
        ("*", "", False),
        (">", "", False),
    ],
)
def test_subject_pattern(pattern: str, subject: str | None, expected: bool) -> None:
    assert SubjectPattern.parse(pattern).match(subject) is expected


@pytest.mark.parametrize(
    "pattern",
    ["", ".", "a.", ".a", "a..b", "a b", "a.\tb", "a.>.b", ">.a", "a.b*", "a.*b", "a.>b", "a>", "**"],
)
def test_invalid_subject_pattern(pattern: str) -> None:
    with pytest.raises(PatternError, match="subject pattern"):
        SubjectPattern.parse(pattern)


def test_subject_pattern_value_semantics() -> None:
    one = SubjectPattern.parse("orders.*")
    assert one.text == "orders.*"
    assert one == SubjectPattern.parse("orders.*") and hash(one) == hash(SubjectPattern("orders.*"))
    assert one != SubjectPattern.parse("orders.>")
    assert repr(one) == "SubjectPattern('orders.*')"
    assert pickle.loads(pickle.dumps(one)) == one


@pytest.mark.parametrize("subject", ["orders", "orders.created", "a.b-c.d_e.1", "ünïcode.ok"])
def test_check_subject_accepts(subject: str) -> None:
    assert check_subject(subject) == subject


@pytest.mark.parametrize(
    ("subject", "why"),
    [
        ("", "non-empty"),
        ("a..b", "empty token"),
        (".a", "empty token"),
        ("a.", "empty token"),
        ("a b", "whitespace"),
        ("a.b\n", "whitespace"),
        ("orders.*", "wildcards"),
        ("orders.>", "wildcards"),
        ("ord*ers", "wildcards"),
        (5, "non-empty string"),
    ],
)
def test_check_subject_refuses(subject: Any, why: str) -> None:
    with pytest.raises(PayloadError, match=why):
        check_subject(subject)


def test_the_names_still_import_from_filters() -> None:
    assert filters.SubjectPattern is SubjectPattern and filters.check_subject is check_subject
    assert filters.PatternError is PatternError and issubclass(PatternError, ConfigError)
