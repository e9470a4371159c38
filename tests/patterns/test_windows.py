"""The window operator at its exact boundaries, table-driven: each case is a list of steps (events,
watermarks, ticks) and the panes each step must give."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from swell.core.errors import ConfigError, PayloadError
from swell.windows import (
    Count,
    LateEvent,
    Max,
    Mean,
    Min,
    Pane,
    Reducer,
    Session,
    Sliding,
    Sum,
    Tumbling,
    WindowOperator,
    WindowStats,
    WindowValueError,
)

T = 1_700_000_000.0  # a multiple of 10: [T, T + 10) is a window
US = 1e-6
INF = math.inf

# a pane, short: (start - T, end - T, value, timing, index, retraction)
P = tuple[float, float, Any, str, int, bool]
# a step: ("add", time - T, value) | ("add", time - T, value, key) | ("adv", W - T) | ("tick", now)
Step = tuple[Any, ...]


def short(p: Pane) -> P:
    return (round(p.start - T, 6), round(p.end - T, 6), p.value, p.timing, p.index, p.retraction)


def on(start: float, end: float, value: Any, index: int = 0) -> P:
    return (start, end, value, "on_time", index, False)


def late(start: float, end: float, value: Any, index: int = 0) -> P:
    return (start, end, value, "late", index, False)


def early(start: float, end: float, value: Any, index: int = 0) -> P:
    return (start, end, value, "early", index, False)


def back(pane: P) -> P:
    """The retraction of ``pane``."""
    return (*pane[:5], True)


@dataclass
class Case:
    id: str
    op: dict[str, Any]
    steps: list[tuple[Step, list[P]]]
    stats: dict[str, int] = field(default_factory=dict)
    side: list[float] = field(default_factory=list)  # the window ends of the side output


def tumbling(**kw: Any) -> dict[str, Any]:
    return {"window": Tumbling(10), "aggregate": Count(), **kw}


CASES = [
    Case("an event at exactly end is in the next window; at end - 1 us in this one", tumbling(), [
        (("add", 10.0, 1), []),
        (("add", 10 - US, 1), []),
        (("adv", 10 - US), []),
        (("adv", 10.0), [on(0, 10, 1)]),
        (("adv", 20.0), [on(10, 20, 1)]),
    ]),
    Case("an event at t < W whose window ends after W is on time", tumbling(), [
        (("adv", 8.0), []),
        (("add", 7.0, 1), []),
        (("adv", 10.0), [on(0, 10, 1)]),
    ], {"late_accepted": 0, "late_dropped": 0}),
    Case("late at W = end + lateness - 1 us: accepted", tumbling(allowed_lateness=5), [
        (("add", 1.0, 1), []),
        (("adv", 10.0), [on(0, 10, 1)]),
        (("adv", 15 - US), []),
        (("add", 2.0, 1), [late(0, 10, 2, 1)]),
    ], {"late_accepted": 1, "late_dropped": 0, "open_windows": 1}),
    Case("late at W = end + lateness: dropped, state freed", tumbling(allowed_lateness=5), [
        (("add", 1.0, 1), []),
        (("adv", 10.0), [on(0, 10, 1)]),
        (("adv", 15.0), []),
        (("add", 2.0, 1), []),
    ], {"late_accepted": 0, "late_dropped": 1, "open_windows": 0}),
    Case("late='side': the dropped event is kept", tumbling(allowed_lateness=5, late="side"), [
        (("add", 1.0, 1), []),
        (("adv", 15.0), [on(0, 10, 1)]),
        (("add", 2.0, 1), []),
    ], {"late_dropped": 1}, side=[10.0]),
    Case("late='drop': every late event dropped", tumbling(late="drop"), [
        (("add", 1.0, 1), []),
        (("adv", 10.0), [on(0, 10, 1)]),
        (("add", 2.0, 1), []),
    ], {"late_dropped": 1, "open_windows": 0}),
    Case("a late event for an empty window: a late pane with index 0", tumbling(allowed_lateness=30), [
        (("adv", 20.0), []),
        (("add", 5.0, 1), [late(0, 10, 1, 0)]),
        (("add", 6.0, 1), [late(0, 10, 2, 1)]),
    ], {"late_accepted": 2}),
    Case("... and with late='retract' no retraction before it",
         tumbling(allowed_lateness=30, late="retract"), [
        (("adv", 20.0), []),
        (("add", 5.0, 1), [late(0, 10, 1, 0)]),
        (("add", 6.0, 1), [back(late(0, 10, 1, 0)), late(0, 10, 2, 1)]),
    ]),
    Case("late='retract': the on-time pane retracted, then the corrected one",
         tumbling(allowed_lateness=5, late="retract"), [
        (("add", 1.0, 1), []),
        (("adv", 10.0), [on(0, 10, 1)]),
        (("add", 2.0, 1), [back(on(0, 10, 1)), late(0, 10, 2, 1)]),
        (("add", 3.0, 1), [back(late(0, 10, 2, 1)), late(0, 10, 3, 2)]),
    ], {"late_accepted": 2, "panes_emitted": 5}),
    Case("sliding: late for one window (accepted), on time for the other",
         {"window": Sliding(10, every=5), "aggregate": Count(), "allowed_lateness": 5}, [
        (("add", 7.0, 1), []),
        (("adv", 10.0), [on(0, 10, 1)]),
        (("add", 8.0, 1), [late(0, 10, 2, 1)]),
        (("adv", 15.0), [on(5, 15, 2)]),
    ], {"late_accepted": 1, "late_dropped": 0}),
    Case("sliding: late for one window (dropped), on time for the other",
         {"window": Sliding(10, every=5), "aggregate": Count()}, [
        (("add", 7.0, 1), []),
        (("adv", 10.0), [on(0, 10, 1)]),
        (("add", 8.0, 1), []),
        (("adv", 15.0), [on(5, 15, 2)]),
    ], {"late_accepted": 0, "late_dropped": 1}),
    Case("sessions merged by a late event: the replaced ones retracted",
         {"window": Session(5), "aggregate": Count(), "allowed_lateness": 100, "late": "retract"}, [
        (("add", 0.0, 1), []),
        (("add", 10.0, 1), []),
        (("adv", 20.0), [on(0, 5, 1), on(10, 15, 1)]),
        (("add", 4.0, 1), [back(on(0, 5, 1)), late(0, 9, 2)]),
        (("add", 7.0, 1), [back(late(0, 9, 2)), back(on(10, 15, 1)), late(0, 15, 4)]),
        (("add", 1.0, 1), [back(late(0, 15, 4)), late(0, 15, 5, 1)]),
    ], {"late_accepted": 3, "open_windows": 1}),
    Case("... and in update mode the merged pane alone",
         {"window": Session(5), "aggregate": Count(), "allowed_lateness": 100}, [
        (("add", 0.0, 1), []),
        (("add", 10.0, 1), []),
        (("adv", 20.0), [on(0, 5, 1), on(10, 15, 1)]),
        (("add", 7.0, 1), [late(7, 15, 2)]),
        (("add", 4.0, 1), [late(0, 15, 4)]),
    ]),
    Case("sessions: an on-time event bridging two sessions; touching ones stay apart",
         {"window": Session(5), "aggregate": Count(), "late": "retract"}, [
        (("add", 0.0, 1), []),
        (("add", 8.0, 1), []),
        (("add", 13.0, 1), []),  # [13, 18) touches [8, 13): not merged
        (("add", 4.0, 1), []),
        (("adv", INF), [on(0, 13, 3), on(13, 18, 1)]),
    ]),
    Case("a session event too late for its own window [t, t + gap) is dropped",
         {"window": Session(5), "aggregate": Count(), "allowed_lateness": 2}, [
        (("add", 0.0, 1), []),
        (("adv", 7.0), [on(0, 5, 1)]),
        (("add", 1.0, 1), [late(1, 6, 1)]),  # 1 + 5 + 2 > 7: accepted ([0, 5) was freed at 7)
        (("adv", 8.0), []),
        (("add", 1.0, 1), []),  # 1 + 5 + 2 <= 8: dropped
    ], {"late_accepted": 1, "late_dropped": 1}),
    Case("early panes every early_every of processing time, retracted in retract mode",
         {"window": Tumbling(10), "aggregate": Sum(), "early_every": 5, "late": "retract"}, [
        (("tick", 0.0), []),
        (("add", 1.0, 2), []),
        (("tick", 5.0), [early(0, 10, 2)]),
        (("add", 2.0, 3), []),
        (("tick", 9.0), []),  # changed, but the next firing is at 10
        (("tick", 10.0), [back(early(0, 10, 2)), early(0, 10, 5, 1)]),
        (("tick", 15.0), []),  # nothing changed
        (("adv", 10.0), [back(early(0, 10, 5, 1)), on(0, 10, 5, 2)]),
    ]),
    Case("a watermark going backwards (or NaN) is ignored and counted", tumbling(), [
        (("add", 1.0, 1), []),
        (("adv", 5.0), []),
        (("adv", 3.0), []),
        (("adv", math.nan), []),
        (("adv", 10.0), [on(0, 10, 1)]),
    ], {"watermark_regressions": 2}),
]


def play(op: WindowOperator, step: Step) -> list[Pane]:
    match step:
        case ("add", t, value):
            return op.add("k", value, T + t)
        case ("add", t, value, key):
            return op.add(key, value, T + t)
        case ("adv", w):
            return op.advance(T + w)
        case ("tick", now):
            return op.tick(now)
    raise AssertionError(step)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_boundaries(case: Case) -> None:
    op = WindowOperator(**case.op)
    for step, want in case.steps:
        got = play(op, step)
        assert [short(p) for p in got] == want, step
        assert all(p.key == "k" for p in got)
    stats = op.stats
    for name, want_n in case.stats.items():
        assert getattr(stats, name) == want_n, name
    side = op.take_side()
    assert [round(e.window_end - T, 6) for e in side] == case.side
    assert op.take_side() == []


def test_side_output_carries_the_event() -> None:
    op = WindowOperator(Tumbling(10), Count(), late="side")
    op.advance(T + 10)
    assert op.add("k", {"a": 1}, T + 3) == []
    assert op.take_side() == [LateEvent("k", {"a": 1}, T + 3, T + 10)]


def test_pane_ids_are_stable_and_distinct() -> None:
    op = WindowOperator(Tumbling(10), Count(), late="retract", allowed_lateness=10, name="clicks")
    op.add("page", None, T + 1)
    first = op.advance(T + 10)[0]
    retraction, second = op.add("page", None, T + 2)
    # the same inputs give the same id in any process (no per-process hashing)
    assert first.id == "clicks-4058c2dc5a319502d5e8c0fdc2cffe3f"
    assert retraction.id != first.id and len({first.id, retraction.id, second.id}) == 3
    again = WindowOperator(Tumbling(10), Count(), late="retract", allowed_lateness=10, name="clicks")
    again.add("page", None, T + 1)
    assert again.advance(T + 10)[0] == first
    other = WindowOperator(Tumbling(10), Count(), name="views")
    other.add("page", None, T + 1)
    assert other.advance(T + 10)[0].id != first.id


def test_times_as_datetimes_naive_taken_as_utc() -> None:
    op = WindowOperator(Tumbling(10), Count())
    op.add("k", None, datetime.fromtimestamp(T + 1, UTC))
    op.add("k", None, datetime.fromtimestamp(T + 2, UTC).replace(tzinfo=None))
    op.add("k", None, int(T) + 3)
    (pane,) = op.advance(datetime.fromtimestamp(T + 10, UTC))
    assert (pane.start, pane.end, pane.value) == (T, T + 10, 3)


@pytest.mark.parametrize(("aggregate", "values", "want"), [
    (Count(), [1, "x", None], 3),
    (Sum(), [1, 2.5, 3], 6.5),
    (Sum("amount"), [{"amount": 2}, {"amount": 3}, 4], 9),
    (Mean("amount"), [{"amount": 2}, {"amount": 4}], 3.0),
    (Min(), [3, 1, 2], 1),
    (Max("n"), [{"n": "b"}, {"n": "c"}, {"n": "a"}], "c"),
    (Reducer(list, lambda acc, v: [*acc, v], result=sorted), [3, 1, 2], [1, 2, 3]),
], ids=repr)
def test_aggregates(aggregate: Any, values: list[Any], want: Any) -> None:
    op = WindowOperator(Tumbling(10), aggregate)
    for v in values:
        op.add("k", v, T + 1)
    (pane,) = op.advance(INF)
    assert pane.value == want


def test_session_aggregates_merge() -> None:
    op = WindowOperator(Session(5), Mean(), late="retract")
    for t, v in [(0, 2), (10, 4), (4, 6), (8, 8)]:
        op.add("k", v, T + t)
    (pane,) = op.advance(INF)
    assert (pane.start, pane.end, pane.value) == (T, T + 15, 5.0)


@pytest.mark.parametrize(("aggregate", "value", "reason"), [
    (Sum(), "x", "Sum takes numbers"),
    (Sum("amount"), {"other": 1}, "KeyError"),
    (Mean(), True, "Mean takes numbers"),
    (Min(), None, "Min takes values"),
    (Max("n"), {"m": 1}, "KeyError"),
], ids=repr)
def test_a_refused_value_changes_nothing(aggregate: Any, value: Any, reason: str) -> None:
    for window in (Tumbling(10), Sliding(10, 5), Session(5)):
        op = WindowOperator(window, aggregate, allowed_lateness=30, early_every=1, late="retract")
        op.add("k", 1, T + 1, now=0.0)
        op.add("k", 2, T + 12)
        op.advance(T + 10)
        before = op.snapshot()
        for t in (2.0, 11.0, 30.0):  # late, on time, a new window
            with pytest.raises(WindowValueError, match=reason) as caught:
                op.add("k", value, T + t)
            assert isinstance(caught.value, PayloadError) and caught.value.key == "k"
            assert op.snapshot() == before


def test_a_refusal_in_a_later_window_undoes_nothing_partly() -> None:
    # the add raises for the window already holding an event, after succeeding for the fresh one
    def add(acc: int, v: int) -> int:
        if acc:
            raise ValueError("only one per window")
        return acc + v

    op = WindowOperator(Sliding(10, 5), Reducer(int, add))
    op.add("k", 1, T + 1)  # windows [-5, 5) and [0, 10)
    before = op.snapshot()
    with pytest.raises(WindowValueError, match="only one per window"):
        op.add("k", 1, T + 6)  # [0, 10) raises; [5, 15) would be new
    assert op.snapshot() == before


@pytest.mark.parametrize("time", ["yesterday", math.nan, math.inf, None, True])
def test_a_time_that_is_not_one(time: Any) -> None:
    op = WindowOperator(Tumbling(10), Count())
    with pytest.raises(WindowValueError, match="event time"):
        op.add("k", 1, time)
    assert op.stats == WindowStats()


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Tumbling(0), "Tumbling size must be above zero"),
    (lambda: Tumbling(-1), "Tumbling size must be above zero"),
    (lambda: Tumbling("ten"), "not a duration"),
    (lambda: Sliding(10, 20), r"Sliding every \(20 s\) must be at most its size \(10 s\)"),
    (lambda: Sliding(10, 0), "Sliding every must be above zero"),
    (lambda: Sliding("1d", every="1s"), "in 86,400 windows; at most 10,000"),
    (lambda: Session("0s"), "Session gap must be above zero"),
    (lambda: WindowOperator(Session(5), Reducer(int, lambda a, v: a + v)), "give the Reducer a merge"),
    (lambda: WindowOperator(Tumbling(1), Count(), late="later"), "late must be one of"),  # type: ignore[arg-type]
    (lambda: WindowOperator(Tumbling(1), Count(), late="drop", allowed_lateness="5m"),
     "allowed_lateness .300 s. would do nothing"),
    (lambda: WindowOperator(Tumbling(1), Count(), allowed_lateness=-1), "allowed_lateness must be"),
    (lambda: WindowOperator(Tumbling(1), Count(), early_every=0), "early_every must be above zero"),
    (lambda: WindowOperator(Tumbling(1), Count(), name=""), "name must be"),
    (lambda: WindowOperator(10, Count()), "window must be"),  # type: ignore[arg-type]
    (lambda: WindowOperator(Tumbling(1), sum), "aggregate must be"),  # type: ignore[arg-type]
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_settings_are_one_clear_error(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_durations_as_strings() -> None:
    op = WindowOperator(Sliding("1m", every="30s"), Count(), allowed_lateness="5m", early_every="5s")
    assert (op.window.size, op.window.every, op.allowed_lateness, op.early_every) == (  # type: ignore[union-attr]
        60.0, 30.0, 300.0, 5.0)


def test_snapshot_refuses_other_settings_and_garbage() -> None:
    op = WindowOperator(Tumbling(10), Count())
    op.add("k", 1, T)
    with pytest.raises(ConfigError, match="other settings"):
        WindowOperator(Tumbling(20), Count()).restore(op.snapshot())
    with pytest.raises(ConfigError, match="not a window operator snapshot"):
        WindowOperator(Tumbling(10), Count()).restore(b"{}")


def test_snapshot_with_an_accumulator_that_is_not_json() -> None:
    op = WindowOperator(Tumbling(10), Reducer(object, lambda acc, v: acc))
    op.add("k", 1, T)
    with pytest.raises(ConfigError, match="not JSON"):
        op.snapshot()


def test_open_windows_and_freeing() -> None:
    op = WindowOperator(Sliding(10, 5), Count(), allowed_lateness=5)
    for key in "abc":
        op.add(key, 1, T + 7)
    assert op.stats.open_windows == 6
    op.advance(T + 10)
    assert op.stats.open_windows == 6  # [0, 10) closed but kept for its lateness
    op.advance(T + 15)
    assert op.stats.open_windows == 3
    op.advance(INF)
    assert op.stats.open_windows == 0 and op.stats.panes_emitted == 6


def test_restore_keeps_early_timers_and_changed_windows() -> None:
    def make() -> WindowOperator:
        return WindowOperator(Tumbling(10), Sum(), early_every=5, late="retract", allowed_lateness=5)

    op = make()
    op.tick(100.0)
    op.add("k", 2, T + 1)
    op.add("j", 3, T + 2)
    op.tick(104.0)
    copy = make()
    copy.restore(op.snapshot())
    want = op.tick(105.0) + op.advance(T + 10) + op.add("k", 1, T + 3)
    assert [short(p) for p in want] == [early(0, 10, 2), early(0, 10, 3), back(early(0, 10, 2)),
                                        on(0, 10, 2, 1), back(early(0, 10, 3)), on(0, 10, 3, 1),
                                        back(on(0, 10, 2, 1)), late(0, 10, 3, 2)]
    assert copy.tick(105.0) + copy.advance(T + 10) + copy.add("k", 1, T + 3) == want
    assert copy.stats == op.stats


def test_the_public_front() -> None:
    import swell.patterns.windows as impl
    import swell.windows as front

    assert sorted(front.__all__) == sorted(impl.__all__)
    assert all(getattr(front, name) is getattr(impl, name) for name in front.__all__)
    assert {"WindowOperator", "Tumbling", "Sliding", "Session", "Count", "Sum", "Mean", "Min", "Max",
            "Reducer", "Pane", "BoundedOutOfOrder", "GroupWatermark"} <= set(front.__all__)
