"""The one copy of the outcome -> action rules (``swell.runtime.settle``), rule by rule, with what
each counts."""

from __future__ import annotations

import pytest

from swell import Retry
from swell.core.outcome import Kind, Outcome
from swell.runtime.metrics import FunctionMetrics
from swell.runtime.settle import Action, Settle

RETRY = Retry(backoff=2.0, jitter=False)
COUNTED = ("attempts", "succeeded", "errors", "retried", "dead_lettered", "throttles", "duplicates")


def settle(kind: Kind, attempt: int = 1, *, owned: bool = True, error: str | None = "boom",
           retry_after_s: float | None = None) -> tuple[Action, dict[str, int], int]:
    """The action for one outcome (3 attempts allowed), the counters it moved, and the service
    times it recorded."""
    m = FunctionMetrics()
    action = Settle(RETRY, 3, m)(Outcome(kind, error, retry_after_s, 0.25), attempt, owned=owned)
    return action, {k: getattr(m, k) for k in COUNTED if getattr(m, k)}, len(m.service_times_s)


def test_ok_acks() -> None:
    assert settle("ok", error=None) == (Action("ack"), {"attempts": 1, "succeeded": 1}, 1)


def test_a_duplicate_acks_without_being_an_attempt() -> None:
    assert settle("duplicate") == (Action("ack"), {"duplicates": 1, "succeeded": 1}, 0)


@pytest.mark.parametrize(("kind", "reason"), [("invalid", "invalid payload"),
                                              ("malformed", "malformed event")])
def test_bad_input_is_dead_lettered_at_once(kind: Kind, reason: str) -> None:
    assert settle(kind, 1) == (Action("dead_letter", reason=reason, error="boom"),
                               {"dead_lettered": 1}, 0)


@pytest.mark.parametrize(("after", "wait_s"), [(None, 1.0), (0.0, 0.0), (2.5, 2.5)])
def test_a_throttle_waits_its_retry_after(after: float | None, wait_s: float) -> None:
    assert settle("throttled", 3, retry_after_s=after) == (
        Action("throttle", wait_s), {"attempts": 1, "throttles": 1}, 0)


@pytest.mark.parametrize("kind", ["failed", "timeout", "crashed"])
def test_a_failure_retries_with_backoff_while_attempts_remain(kind: Kind) -> None:
    assert settle(kind, 2) == (Action("retry", 4.0, error="boom"),
                               {"attempts": 1, "errors": 1, "retried": 1}, kind != "crashed")


@pytest.mark.parametrize("kind", ["failed", "timeout", "crashed"])
def test_the_last_failure_is_dead_lettered_with_its_attempts(kind: Kind) -> None:
    assert settle(kind, 3, error=None) == (
        Action("dead_letter", reason="failed after 3 attempt(s)", error=kind),
        {"attempts": 1, "errors": 1, "dead_lettered": 1}, kind != "crashed")


def test_a_failure_of_an_event_no_longer_owned_is_let_go() -> None:
    assert settle("failed", 3, owned=False) == (Action("let_go"), {"attempts": 1, "errors": 1}, 1)
    assert settle("invalid", owned=False)[0].kind == "dead_letter"  # bad input is bad anywhere
