"""A function's ``budget=`` as ``Auto``'s cap: hand-built signals on a manual clock (increasing
``Signals.t``), as the other controller tests."""

from __future__ import annotations

from swell.core.cost import BudgetCap
from swell.scaling.auto import Auto
from swell.scaling.signals import Ewma, Signals

TICK = 0.5
# $2/h; a unit $0.10/h; an event $0.00001: a unit finishing 5 events/s spends $0.28/h in all
CAP = BudgetCap(per_hour=2.0, unit_second=0.1 / 3600, per_event=0.00001)


def _auto(cap: BudgetCap | None = CAP, **kw: int) -> Auto:
    auto = Auto(**kw)
    auto.cap = cap
    return auto


def _run(auto: Auto, ticks: int = 20, per_unit: float = 5.0, service_s: float = 0.2) -> list[int]:
    """A backlog of 1,000 at 200 ms an event (20 units wanted); units ready as asked, each
    finishing ``per_unit`` events/s, taking ``service_s`` an event."""
    out, ready = [], 0
    for i in range(ticks):
        d = auto.decide(Signals(t=i * TICK, depth=1000, in_flight=ready, ready=ready, busy=ready,
                                current=ready, arrival_rate=0.0, completion_rate=per_unit * ready,
                                service_time_s=service_s if ready else None))
        out.append(d.desired)
        ready = d.desired
    return out


def test_without_a_budget_auto_scales_to_the_demand() -> None:
    assert _run(_auto(None, max=64))[-1] == 20


def test_a_budget_caps_the_units_and_the_reason_says_so() -> None:
    auto = _auto(max=64)
    wanted = _run(auto)
    assert max(wanted) == 7 == wanted[-1]  # 7 x $0.28/h = $1.96/h; 8 would pass $2/h
    assert wanted == sorted(wanted)  # up to the cap and held there: no swing
    d = auto.decide(Signals(t=20 * TICK, depth=1000, in_flight=7, ready=7, busy=7, current=7,
                            completion_rate=35.0, service_time_s=0.2))
    assert d.desired == 7
    assert d.reason.startswith("capped at 7 by budget $2/h (wanted ")
    assert CAP.spend_per_hour(7, 35.0, 7) <= 2.0 < CAP.spend_per_hour(8, 35.0, 7)


def test_the_cap_follows_what_a_unit_spends() -> None:
    free = BudgetCap(per_hour=2.0, unit_second=0.1 / 3600, per_event=0.0)
    assert _run(_auto(free, max=64))[-1] == 20  # $0.10/h a unit: all 20 fit
    assert _run(_auto(max=64), per_unit=55.0, service_s=1 / 55)[-1] == 1  # $2.08/h: one unit
    # a unit cannot finish more than one event per service time: 55/s at 200 ms is a lag
    assert _run(_auto(max=64), per_unit=55.0)[-1] == 7
    # nothing finished yet: a unit is taken to finish an event per service time (5/s)
    assert _run(_auto(max=64), per_unit=0.0)[-1] == 7


def test_a_cap_above_the_decision_changes_nothing_and_min_stays_warm() -> None:
    auto = _auto(max=4)
    assert _run(auto)[-1] == 4  # max is the smaller bound: no mention of the budget
    assert "budget" not in auto.decide(Signals(t=99.0, depth=1000, in_flight=4, ready=4,
                                               current=4)).reason
    assert _run(_auto(min=3, max=64), per_unit=55.0, service_s=1 / 55)[-1] == 3  # min= is kept


def test_the_cap_does_not_dip_while_a_lagging_rate_catches_up_with_faster_handlers() -> None:
    """Handlers get faster (400 ms, then 100 ms): the cap falls from 10 units to 4, its steady
    value, and not below it while the completion rate (smoothed, as the runtime's sampler does)
    still carries the finishes of the units just cut."""
    auto, rate = _auto(max=64), Ewma(2.0)
    out, ready = [], 0
    for i in range(80):
        service = 0.4 if i < 30 else 0.1
        rate.update(ready / service, TICK)
        d = auto.decide(Signals(t=i * TICK, depth=100_000, in_flight=ready, ready=ready,
                                busy=ready, current=ready, arrival_rate=0.0,
                                completion_rate=rate.value or 0.0,
                                service_time_s=service if ready else None))
        out.append(d.desired)
        ready = d.desired
    # $0.10/h a unit; 2.5 events/s a unit at $0.036/h each: $0.19/h, 10 units; at 10/s, $0.46/h
    assert out[29] == 10 and out[-1] == 4
    after = out[30:]
    assert after == sorted(after, reverse=True), after  # down, never back up
    assert min(after) == 4, after  # (before: 8, 6, 5, 4, 3, 3, ... 3, then 4 again)
