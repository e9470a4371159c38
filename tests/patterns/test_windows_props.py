"""Properties of the window operator over any sequence of events, watermarks and ticks: what the panes
add up to, against a model of which events are accepted; and that a snapshot restored mid-way gives
the same panes as a run that never stopped."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from swell.windows import Count, Pane, Session, Sliding, Sum, Tumbling, WindowOperator

KEYS = ["a", "b", "c"]
Step = tuple[Any, ...]

# times are whole seconds (exact in floats), so the model's window arithmetic is exact
steps = st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from(KEYS), st.integers(-20, 120), st.integers(0, 9)),
    st.tuples(st.just("adv"), st.integers(-10, 130)),
    st.tuples(st.just("tick"), st.integers(1, 4)),
), max_size=60)
fixed_windows = st.sampled_from([Tumbling(10), Sliding(10, 5), Sliding(10, 10), Sliding(9, 4)])
lateness = st.sampled_from([0, 5, 30])
SETTINGS = settings(max_examples=300, deadline=None)


def starts(window: Tumbling | Sliding, t: int) -> list[int]:
    if isinstance(window, Tumbling):
        return [t - t % 10]
    size, every = int(window.size), int(window.every)
    return [s for s in range(t - size - every, t + 1) if s % every == 0 and s <= t < s + size]


def run(op: WindowOperator, steps: list[Step], now: float = 0.0) -> tuple[list[Pane], float]:
    """Play ``steps``; ticks move processing time on; the last step closes everything."""
    out: list[Pane] = []
    for step in steps:
        if step[0] == "add":
            out += op.add(step[1], step[3], float(step[2]), now=now)
        elif step[0] == "adv":
            out += op.advance(float(step[1]), now=now)
        else:
            now += step[1]
            out += op.tick(now)
    return out, now


def net(panes: list[Pane], by: Any) -> dict[Any, float]:
    """Per ``by(pane)``: the panes' values added, retractions taken off."""
    out: dict[Any, float] = defaultdict(int)
    for p in panes:
        out[by(p)] += -p.value if p.retraction else p.value
    return {k: v for k, v in out.items() if v}


def model_fixed(window: Tumbling | Sliding, allowed: int, steps: list[Step],
                count: bool) -> tuple[dict[tuple[str, int], int], int]:
    """The aggregate of the accepted events per (key, window start), and the drops."""
    w_mark, dropped = -math.inf, 0
    want: dict[tuple[str, int], int] = defaultdict(int)
    for step in steps:
        if step[0] == "adv":
            w_mark = max(w_mark, step[1])
        elif step[0] == "add":
            for s in starts(window, step[2]):
                if s + window.size + allowed <= w_mark:
                    dropped += 1
                else:
                    want[(step[1], s)] += 1 if count else step[3]
    return {k: v for k, v in want.items() if v}, dropped


@SETTINGS
@given(window=fixed_windows, allowed=lateness, steps=steps, count=st.booleans(),
       early=st.sampled_from([None, 3]))
def test_retractions_add_up_to_the_accepted_events(window: Tumbling | Sliding, allowed: int,
                                                    steps: list[Step], count: bool,
                                                    early: int | None) -> None:
    op = WindowOperator(window, Count() if count else Sum(), allowed_lateness=allowed,
                        late="retract", early_every=early)
    panes, _ = run(op, [*steps, ("adv", math.inf)])
    want, dropped = model_fixed(window, allowed, steps, count)
    assert net(panes, lambda p: (p.key, int(p.start))) == want
    assert op.stats.late_dropped == dropped and op.stats.open_windows == 0
    check_indexes(panes)


@SETTINGS
@given(window=fixed_windows, allowed=lateness, steps=steps, count=st.booleans(),
       late=st.sampled_from(["update", "side"]), early=st.sampled_from([None, 3]))
def test_the_last_pane_of_a_window_is_its_aggregate(window: Tumbling | Sliding, allowed: int,
                                                   steps: list[Step], count: bool, late: Any,
                                                   early: int | None) -> None:
    op = WindowOperator(window, Count() if count else Sum(), allowed_lateness=allowed, late=late,
                        early_every=early)
    panes, _ = run(op, [*steps, ("adv", math.inf)])
    want, dropped = model_fixed(window, allowed, steps, count)
    last = {(p.key, int(p.start)): p.value for p in panes}
    assert {k: v for k, v in last.items() if v} == want
    assert not any(p.retraction for p in panes)
    assert len(op.take_side()) == (dropped if late == "side" else 0)
    check_indexes(panes)


def check_indexes(panes: list[Pane]) -> None:
    """Per window, panes count 0, 1, 2, ...; a retraction takes back the pane just before."""
    last: dict[tuple[str, float, float], Pane] = {}
    for p in panes:
        window = (p.key, p.start, p.end)
        before = last.get(window)
        if p.retraction:
            assert before is not None and not before.retraction
            assert (p.index, p.value, p.timing) == (before.index, before.value, before.timing)
        else:
            assert p.index == (0 if before is None else before.index + 1)
        last[window] = p
    assert len({p.id for p in panes}) == len(panes)


@SETTINGS
@given(allowed=lateness, steps=steps, gap=st.sampled_from([3, 10]))
def test_sessions_retractions_add_up_per_key(allowed: int, steps: list[Step], gap: int) -> None:
    op = WindowOperator(Session(gap), Sum(), allowed_lateness=allowed, late="retract")
    panes, _ = run(op, [*steps, ("adv", math.inf)])
    w_mark = -math.inf
    want: dict[str, int] = defaultdict(int)
    for step in steps:
        if step[0] == "adv":
            w_mark = max(w_mark, step[1])
        elif step[0] == "add" and step[2] + gap + allowed > w_mark:
            want[step[1]] += step[3]
    assert net(panes, lambda p: p.key) == {k: v for k, v in want.items() if v}
    check_indexes(panes)
    assert op.stats.open_windows == 0


@SETTINGS
@given(window=st.one_of(fixed_windows, st.just(Session(4))), allowed=lateness, steps=steps,
       split=st.integers(0, 60), late=st.sampled_from(["update", "retract", "side"]),
       early=st.sampled_from([None, 3]))
def test_restore_mid_way_gives_the_same_panes(window: Any, allowed: int, steps: list[Step],
                                              split: int, late: Any, early: int | None) -> None:
    def make() -> WindowOperator:
        return WindowOperator(window, Sum(), allowed_lateness=allowed, late=late, early_every=early,
                              name="fn")

    steps = [*steps, ("adv", math.inf)]
    whole, _ = run(make(), steps)
    first = make()
    head, now = run(first, steps[:split])
    second = make()
    second.restore(first.snapshot())
    tail, _ = run(second, steps[split:], now)
    assert head + tail == whole
