"""The cost model: budgets read as a spend per hour, prices overridable key by key, a unit's price
by mode and memory, and the projected spend a budget caps."""

from __future__ import annotations

import pytest

from swell.core.cost import GIB, BudgetCap, Cost, Prices, dollars, per_hour, prices_from
from swell.core.errors import ConfigError


@pytest.mark.parametrize(("given", "per_h"), [
    (2, 2.0), (0.5, 0.5), ("$2/h", 2.0), ("2/h", 2.0), ("$50/d", 50 / 24), ("$ 3 / hour", 3.0),
    ("$1/min", 60.0), ("$0.01/s", 36.0), ("$720/month", 1.0), ("$168/week", 1.0), ("4", 4.0),
    ("$.5/h", 0.5)])
def test_a_budget_is_dollars_per_hour(given: float | str, per_h: float) -> None:
    assert per_hour(given) == pytest.approx(per_h)


@pytest.mark.parametrize("bad", [0, -1, "$0/h", "2/fortnight", "two dollars", "$2/h/d", True,
                                 None, float("inf"), float("nan"), "€2/h"])
def test_a_bad_budget_is_one_error_naming_it(bad: object) -> None:
    with pytest.raises(ConfigError, match="budget"):
        per_hour(bad)  # type: ignore[arg-type]


def test_prices_are_overridden_key_by_key_and_a_bad_key_is_named() -> None:
    assert prices_from({}) == Prices()
    p = prices_from({"gb_second": 0.00002, "memory": "512MiB", "invocation": 0})
    assert (p.gb_second, p.memory, p.invocation) == (0.00002, 512 * 1024**2, 0.0)
    assert p.broker_operation == Prices().broker_operation
    with pytest.raises(ConfigError, match=r"\[tool.swell.cost\] per_request: unknown key"):
        prices_from({"per_request": 1})
    with pytest.raises(ConfigError, match=r"\[tool.swell.cost\] invocation must be a number"):
        prices_from({"invocation": "cheap"})
    with pytest.raises(ConfigError, match=r"\[tool.swell.cost\] gb_second must be a finite"):
        prices_from({"gb_second": -1})
    with pytest.raises(ConfigError, match="memory"):
        prices_from({"memory": "lots"})
    with pytest.raises(ConfigError, match="must be a table"):
        prices_from(3)  # type: ignore[arg-type]


def test_a_unit_is_priced_by_mode_and_memory() -> None:
    p = Prices()
    assert p.unit_second("inline") == p.inline_unit_second
    assert p.unit_second("process") == pytest.approx(p.gb_second / 8)  # 128 MiB
    assert p.unit_second("process", 2 * GIB) == pytest.approx(2 * p.gb_second)
    assert p.unit_second("inline") < p.unit_second("process")
    assert dollars(p, 0.001, 10.0, 3, 4) == pytest.approx(0.01 + 3 * p.invocation
                                                          + 4 * p.broker_operation)


def test_the_budget_caps_units_at_the_projected_spend() -> None:
    # $1/h; a unit costs $0.10/h held; an event $0.0001
    cap = BudgetCap(per_hour=1.0, unit_second=0.1 / 3600, per_event=0.0001)
    assert cap.units(0.0, 4) == 10
    # 4 units finish 4 events/s: each spends $0.10 + $0.36 an hour
    assert cap.units(4.0, 4) == 2
    assert cap.spend_per_hour(2, 4.0, 4) <= 1.0 < cap.spend_per_hour(3, 4.0, 4)
    assert cap.units(4.0, 0) == cap.units(4.0, 1) == 1  # (no unit yet: as if one)
    assert cap.units(100.0, 1) == 1  # events alone pass it: slowed to one unit, never stopped
    # at 0.5 s an event a unit finishes 2/s at least, whatever the (lagging) rate says: $0.82/h
    assert cap.units(0.0, 4, service_s=0.5) == cap.units(8.0, 4) == 1
    assert cap.units(40.0, 4, service_s=0.5) == 1 and cap.units(0.0, 4, service_s=None) == 10
    assert BudgetCap(1.0, 0.0, 0.0).units(5.0, 1) == 2**31 - 1
    assert str(cap) == "$1/h"


def test_a_unit_finishes_at_most_one_event_per_service_time_of_late() -> None:
    cap = BudgetCap(per_hour=1.0, unit_second=0.1 / 3600, per_event=0.0001)
    # the rate is still 8 units' at 1/s each, but 2 units are left: not 4/s a unit ($1.54/h,
    # the cap dips to 1), at most one per last tick's service time ($0.46/h a unit)
    assert cap.units(8.0, 2, service_s=2.0) == 1
    assert cap.units(8.0, 2, service_s=2.0, latest_s=1.0) == 2
    assert cap.spend_per_hour(2, 8.0, 2, 2.0, 1.0) == pytest.approx(2 * (0.1 + 0.36))
    # a faster handler of late is no reason to take a lagging rate under one per service time
    assert cap.units(0.0, 2, service_s=0.5, latest_s=0.25) == cap.units(0.0, 2, service_s=0.5)


def test_an_event_is_priced_at_its_invocations_and_operations_never_below_the_least() -> None:
    p = Prices()
    least = p.invocation + 2 * p.broker_operation
    assert p.per_event() == least == p.per_event(0.5, 1.0)  # (a window's rounding: the least)
    # sends three events on: a receive, an ack and three sends an event
    assert p.per_event(1.0, 5.0) == pytest.approx(p.invocation + 5 * p.broker_operation)
    # half the events retried once: 1.5 invocations, 3 operations (release, receive again)
    assert p.per_event(1.5, 3.0) == pytest.approx(1.5 * p.invocation + 3 * p.broker_operation)
    # a budget priced at what the events measure caps fewer units than at the least price, and
    # the measured spend of those units stays within it where the least price's would not
    at_least = BudgetCap(per_hour=0.1, unit_second=p.inline_unit_second, per_event=least)
    priced = BudgetCap(per_hour=0.1, unit_second=p.inline_unit_second,
                       per_event=p.per_event(1.0, 5.0))
    few, many = priced.units(0.0, 1, 0.5), at_least.units(0.0, 1, 0.5)
    assert (few, many) == (6, 12)
    assert priced.spend_per_hour(few, 0.0, 1, 0.5) <= 0.1 < priced.spend_per_hour(many, 0.0, 1, 0.5)


def test_costs_add_up_over_nodes() -> None:
    a = Cost(workload="w", mode="inline", unit_s=1.0, invocations=2, operations=4, events=2,
             dollars=0.5, dollars_per_h=1.0, budget_per_h=3.0)
    b = Cost(workload="w", mode="process", unit_s=2.0, invocations=1, operations=2, events=0,
             dollars=0.25, dollars_per_h=2.0)
    both = a + b
    assert (both.unit_s, both.invocations, both.operations, both.events) == (3.0, 3, 6, 2)
    assert (both.dollars, both.dollars_per_h, both.budget_per_h, both.mode) == (
        0.75, 3.0, 3.0, "mixed")
    assert both.per_1000_events() == 375.0
    assert b.per_1000_events() is None
