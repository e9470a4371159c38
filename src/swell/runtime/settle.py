"""The one copy of the rules that turn an attempt's ``Outcome`` into what happens to its event,
used by a queue's Dispatcher, a consumer group and a replay alike:

============================  ===========  =========================================================
outcome                       action       counted (``FunctionMetrics``)
============================  ===========  =========================================================
ok                            ack          attempts, service time, succeeded (and, for a
                                           function with an SLO, its latency against it)
duplicate (key done before)   ack          duplicates, succeeded (not an attempt: it did not run)
invalid / malformed           dead_letter  dead_lettered, at once ("invalid payload" / "malformed
                                           event"); not an attempt
throttled                     throttle     attempts, throttles; waits ``retry_after`` (1 s if not
                                           given, 0: at once) and is not counted as an attempt
failed / timeout, attempts    retry        attempts, service time, errors, retried; waits the
left                                       ``Retry``'s backoff for this attempt
crashed (swell's own error,   retry        as failed, but no service time (the handler's was not
the instance died)                         measured)
failed / timeout / crashed,   dead_letter  as failed, then dead_lettered ("failed after N attempt(s)")
last attempt
failed / ... on an event no   let_go       as failed, nothing more: its next owner runs it again (a
longer ours                                group's partition that moved)
============================  ===========  =========================================================

What an action means is the consumer's: a queue releases the event (with its delay; a throttle's
release is not counted as a receive), dead-letters it through the broker, or batches its ack; a
consumer group holds its partition and waits, or sends the event to the group's dead-letter queue;
a replay waits, and counts a dead letter as a failure (it has no dead-letter queue).

A function with an SLO on a runtime also counts each event that finishes (acked: good,
dead-lettered: bad) into ``FunctionMetrics.slo``; without one, that costs one attribute check.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from swell.brokers.base import Delivery
from swell.core.outcome import Outcome
from swell.core.retry import Retry, throttle_delay_s
from swell.runtime.metrics import FunctionMetrics

REASON_INVALID = "invalid payload"
REASON_MALFORMED = "malformed event"
REASON_FAILED = "failed"

ActionKind = Literal["ack", "retry", "throttle", "dead_letter", "let_go"]


class Action(msgspec.Struct, frozen=True):
    """What to do with an event after an attempt. ``delay_s``: how long it waits before it is
    tried again (retry, throttle); ``reason`` and ``error``: why it is dead-lettered."""

    kind: ActionKind
    delay_s: float = 0.0
    reason: str = ""
    error: str = ""


ACK = Action("ack")
LET_GO = Action("let_go")


def failed_reason(attempts: int) -> str:
    """The dead-letter reason of an event whose every attempt failed."""
    return f"{REASON_FAILED} after {attempts} attempt(s)"


class Settle:
    """One function's rules (its ``Retry`` and how many attempts it has where its events come
    from: see ``Retry.allowed``), counting into ``metrics`` as it decides."""

    __slots__ = ("attempts", "metrics", "retry")

    def __init__(self, retry: Retry, attempts: int, metrics: FunctionMetrics) -> None:
        self.retry = retry
        self.attempts = attempts
        self.metrics = metrics

    def __call__(self, out: Outcome, attempt: int, delivery: Delivery | None = None, *,
                 owned: bool = True) -> Action:
        """The action for attempt number ``attempt`` (1-based) that ended as ``out``. ``owned``:
        whether the event is still this consumer's to retry or dead-letter. ``delivery``: the
        event, for its latency when its function has an SLO (positional: a keyword costs more
        than the check, per event)."""
        m = self.metrics
        kind = out.kind
        if kind == "ok":  # first: the hot path
            m.attempts += 1
            m.service(out.service_s)
            m.succeeded += 1
            if m.slo is not None:
                m.slo.acked(delivery, True)
            return ACK
        if kind in ("invalid", "malformed"):
            m.dead_lettered += 1
            if m.slo is not None:
                m.slo.bad += 1
            return Action("dead_letter", reason=REASON_INVALID if kind == "invalid"
                          else REASON_MALFORMED, error=out.error or kind)
        if kind == "duplicate":  # its idempotency key was done before: acked, not run
            m.duplicates += 1
            m.succeeded += 1
            if m.slo is not None:
                m.slo.acked(delivery, False)
            return ACK
        m.attempts += 1
        if kind == "throttled":
            m.throttles += 1
            return Action("throttle", throttle_delay_s(out.retry_after_s))
        if kind != "crashed":
            m.service(out.service_s)
        m.errors += 1
        if not owned:
            return LET_GO
        error = out.error or kind
        if attempt >= self.attempts:
            m.dead_lettered += 1
            if m.slo is not None:
                m.slo.bad += 1
            return Action("dead_letter", reason=failed_reason(attempt), error=error)
        m.retried += 1
        return Action("retry", self.retry.delay_s(attempt), error=error)
