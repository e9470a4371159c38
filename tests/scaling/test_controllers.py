"""The baseline controllers, driven by hand-built Signals on a manual clock (increasing ``Signals.t``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from swell.core.errors import ConfigError
from swell.scaling.base import Controller, Decision
from swell.scaling.controllers import (
    AIMD,
    CONTROLLER_NAMES,
    Fixed,
    Gradient2,
    Knative,
    TargetTracking,
    parse_controller,
)
from swell.scaling.signals import Signals
from swell.scaling.sim import reversals

TICK = 0.5


def sig(t: float, depth: int | None = 0, in_flight: int = 0, **kw: Any) -> Signals:
    return Signals(t=t, depth=depth, in_flight=in_flight, **kw)


def clock(start: float, end: float) -> Iterator[float]:
    """Ticks every 0.5 s in [start, end)."""
    n = 0
    while start + n * TICK < end - 1e-9:
        yield start + n * TICK
        n += 1


def drive(ctl: Controller, start: float, end: float, make: Callable[[float], Signals]) -> list[Decision]:
    return [ctl.decide(make(t)) for t in clock(start, end)]


def desired(ds: list[Decision]) -> list[int]:
    return [d.desired for d in ds]


BASELINES: dict[str, Callable[[], Controller]] = {
    "hpa": TargetTracking, "kpa": Knative, "aimd": AIMD, "gradient2": Gradient2}


# -- the protocol and names -------------------------------------------------------------------
@pytest.mark.parametrize("make", [*BASELINES.values(), lambda: Fixed(3)])
def test_every_controller_is_a_controller(make: Callable[[], Controller]) -> None:
    ctl = make()
    assert isinstance(ctl, Controller)
    assert 0 <= ctl.min_units <= ctl.max_units
    d = ctl.decide(sig(0.0))
    assert isinstance(d, Decision) and d.reason


def test_parse_controller_names() -> None:
    assert isinstance(parse_controller("hpa", 64), TargetTracking)
    assert isinstance(parse_controller(" KPA ", 64), Knative)
    assert isinstance(parse_controller("aimd", 64), AIMD)
    g = parse_controller("gradient2", 32)
    assert isinstance(g, Gradient2) and g.max_units == 32
    f = parse_controller("fixed:8", 64)
    assert isinstance(f, Fixed) and f.n == 8


def test_parse_controller_auto() -> None:
    pytest.importorskip("swell.scaling.auto")
    ctl = parse_controller("auto", 40)
    assert type(ctl).__name__ == "Auto" and ctl.max_units == 40


@pytest.mark.parametrize("spec", ["nope", "fixed", "fixed:x", "fixed:-1", "hpa:3", ""])
def test_parse_controller_rejects_bad_names(spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_controller(spec, 64)
    if spec in ("nope", ""):
        for name in CONTROLLER_NAMES:
            assert name in str(err.value)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ConfigError):
        TargetTracking(min=5, max=2)
    with pytest.raises(ConfigError):
        AIMD(max=0)


# -- Fixed ------------------------------------------------------------------------------------
def test_fixed_is_always_n() -> None:
    ctl = Fixed(8)
    inputs = [sig(0.0), sig(1.0, depth=10_000, in_flight=8, throttles=50), sig(2.0, depth=None),
              sig(900.0)]
    assert {ctl.decide(s).desired for s in inputs} == {8}
    assert ctl.min_units == ctl.max_units == 8


# -- burst from zero --------------------------------------------------------------------------
def test_hpa_activates_on_the_poll_then_doubles_per_sync() -> None:
    ctl = TargetTracking()
    quiet = drive(ctl, 0.0, 5.0, lambda t: sig(t))
    assert set(desired(quiet)) == {0}
    burst = drive(ctl, 5.0, 120.0, lambda t: sig(t, depth=3_000))
    ts = list(clock(5.0, 120.0))
    # KEDA's next poll is at t=30: activation 0 -> 1, no sooner
    first = next(i for i, d in enumerate(burst) if d.desired > 0)
    assert ts[first] == 30.0 and burst[first].desired == 1 and "activate" in burst[first].reason
    # then the HPA, every 15 s: at most max(2x, +4)
    steps = sorted(set(desired(burst[first:])))
    assert steps == [1, 5, 10, 20, 40, 64]
    up = next(d for d in burst if d.desired == 5)
    assert "scale up" in up.reason and "3,000" in up.reason and "/ 10 per instance" in up.reason


def test_kpa_panics_on_a_burst_from_zero_and_acts_at_once() -> None:
    ctl = Knative()
    drive(ctl, 0.0, 10.0, lambda t: sig(t))
    d = ctl.decide(sig(10.25, depth=30))  # off its 2 s tick: the activator pokes it from zero
    assert d.desired >= 1
    burst = drive(ctl, 10.5, 13.0, lambda t: sig(t, depth=30))
    # the 6 s panic window sees 2x the target on the one ready unit: panic, sized on that window
    assert ctl.panicking and "panic" in burst[-1].reason
    assert burst[-1].desired >= 10
    # in panic it never scales down, even when the burst is gone
    peak = burst[-1].desired
    after = drive(ctl, 13.0, 40.0, lambda t: sig(t, depth=0, in_flight=2, ready=peak))
    assert min(desired(after)) >= peak


def test_kpa_without_panic_follows_the_stable_window() -> None:
    ctl = Knative()
    ds = drive(ctl, 0.0, 120.0, lambda t: sig(t, depth=1, in_flight=6, ready=10))
    assert not ctl.panicking
    assert ds[-1].desired == math.ceil(7 / 0.7)


@pytest.mark.parametrize("make", [AIMD, Gradient2])
def test_limiters_wake_from_zero_and_grow_under_load(make: Callable[[], AIMD | Gradient2]) -> None:
    ctl = make()
    assert ctl.decide(sig(0.0)).desired == 0
    units, seen = 0, []
    for t in clock(0.5, 60.0):  # every unit asked for is busy at once
        units = ctl.decide(sig(t, depth=500, in_flight=units, service_time_s=0.2)).desired
        seen.append(units)
    assert seen[1] >= 1  # woken at its next 1 s evaluation
    assert seen[-1] > 5
    assert seen == sorted(seen)  # only up while nothing is throttled or slow


def test_aimd_adds_one_per_second_when_half_busy() -> None:
    ctl = AIMD(initial=4)
    ctl.decide(sig(0.0, depth=10, in_flight=2))
    ds = drive(ctl, 0.5, 10.5, lambda t: sig(t, depth=10, in_flight=10))
    assert ds[-1].desired == 4 + 10
    assert "+1" in ds[-1].reason


# -- a downstream that starts throttling ------------------------------------------------------
def test_aimd_backs_off_on_throttles_and_errors() -> None:
    ctl = AIMD(initial=20)
    ctl.decide(sig(0.0, depth=100, in_flight=20))
    assert ctl.decide(sig(1.0, depth=100, in_flight=20)).desired == 21
    d = ctl.decide(sig(2.0, depth=100, in_flight=21, attempts=100, throttles=7))
    assert d.desired == math.floor(21 * 0.9) and "x0.9" in d.reason and "7 throttled" in d.reason
    d = ctl.decide(sig(3.0, depth=100, in_flight=18, attempts=150, throttles=7, errors=2))
    assert d.desired == math.floor(21 * 0.9 * 0.9)
    # asked between its 1 s evaluations it answers the same, however many throttles pile up
    assert ctl.decide(sig(3.5, depth=100, in_flight=18, throttles=99)).desired == d.desired


def test_gradient2_shrinks_when_the_downstream_slows() -> None:
    ctl = Gradient2(initial=20)
    calm = drive(ctl, 0.0, 60.0, lambda t: sig(t, depth=100, in_flight=int(ctl.limit),
                                                service_time_s=0.2))
    top = calm[-1].desired
    assert top >= 20
    # throttled and overloaded, the downstream answers 3x slower: the gradient halves the limit
    slow = drive(ctl, 60.0, 75.0, lambda t: sig(t, depth=100, in_flight=int(ctl.limit),
                                                 service_time_s=0.6, throttles=int(t)))
    assert slow[-1].desired < top * 0.8
    assert "gradient 0.50" in slow[-1].reason


def test_gradient2_holds_when_app_limited() -> None:
    ctl = Gradient2(initial=30)
    ds = drive(ctl, 0.0, 20.0, lambda t: sig(t, depth=0, in_flight=3, service_time_s=0.9))
    assert set(desired(ds)) == {30}
    assert "app-limited" in ds[-1].reason


# -- a signal that disappears -----------------------------------------------------------------
@pytest.mark.parametrize("name", list(BASELINES))
def test_missing_signal_holds_and_never_scales_to_zero(name: str) -> None:
    ctl = BASELINES[name]()
    busy = drive(ctl, 0.0, 200.0, lambda t: sig(t, depth=300, in_flight=10, ready=10,
                                                 service_time_s=0.2))
    held = busy[-1].desired
    assert held > 0
    gone = drive(ctl, 200.0, 1_500.0, lambda t: sig(t, depth=None))
    assert set(desired(gone)) == {held}
    assert all("no signal" in d.reason for d in gone)


@pytest.mark.parametrize("name", list(BASELINES))
def test_missing_signal_at_start_holds_the_current_units(name: str) -> None:
    ctl = BASELINES[name]()
    assert ctl.decide(sig(0.0, depth=None, current=5)).desired == 5


# -- flapping input ---------------------------------------------------------------------------
def test_hpa_down_stabilisation_stops_flapping() -> None:
    ctl = TargetTracking()
    flap = drive(ctl, 0.0, 600.0, lambda t: sig(t, depth=200 if int(t // 10) % 2 else 0, in_flight=2))
    ds = [d for d in desired(flap) if d > 0]
    assert ds == sorted(ds), "went down while a high recommendation is in its 300 s window"
    assert reversals(desired(flap)) == 0


def test_hpa_tolerance_ignores_small_moves() -> None:
    ctl = TargetTracking()
    drive(ctl, 0.0, 200.0, lambda t: sig(t, depth=100))
    assert ctl.decide(sig(200.0, depth=100)).desired == 10
    ds = drive(ctl, 200.5, 400.0, lambda t: sig(t, depth=105 if int(t) % 2 else 95))
    assert set(desired(ds)) == {10}


def test_kpa_stable_window_smooths_flapping() -> None:
    ctl = Knative()
    drive(ctl, 0.0, 120.0, lambda t: sig(t, depth=7, ready=10))
    ds = drive(ctl, 120.0, 600.0, lambda t: sig(t, depth=14 if int(t) % 2 else 0, ready=10))
    assert max(desired(ds)) - min(desired(ds)) <= 2
    assert reversals(desired(ds)) <= 4


@pytest.mark.parametrize("make", [AIMD, Gradient2])
def test_limiters_do_not_follow_flapping_depth(make: Callable[..., AIMD | Gradient2]) -> None:
    ctl = make(initial=10)
    ds = drive(ctl, 0.0, 300.0, lambda t: sig(t, depth=50 if int(t // 5) % 2 else 0, in_flight=2,
                                                service_time_s=0.2))
    assert set(desired(ds)) == {10}


# -- scale to zero after idle -----------------------------------------------------------------
def _busy_then_idle(ctl: Controller, busy_until: float, end: float) -> tuple[list[float], list[int]]:
    drive(ctl, 0.0, busy_until, lambda t: sig(t, depth=40, in_flight=8, ready=8, service_time_s=0.2))
    ts = list(clock(busy_until, end))
    return ts, [ctl.decide(sig(t, ready=1)).desired for t in ts]


def _zero_at(ts: list[float], ds: list[int]) -> float:
    return next(t for t, d in zip(ts, ds, strict=True) if d == 0)


def test_hpa_goes_to_zero_after_the_keda_cooldown() -> None:
    ts, ds = _busy_then_idle(TargetTracking(), 100.0, 600.0)
    zero = _zero_at(ts, ds)
    # last active poll <= 100 s, cooldown 300 s, polls every 30 s
    assert 370.0 <= zero <= 100.0 + 300.0 + 30.0
    assert set(ds[ts.index(zero):]) == {0}


def test_kpa_goes_to_zero_after_the_stable_window_and_grace() -> None:
    ts, ds = _busy_then_idle(Knative(), 100.0, 400.0)
    zero = _zero_at(ts, ds)
    assert 100.0 + 60.0 + 30.0 <= zero <= 100.0 + 60.0 + 30.0 + 2 * 2.0


@pytest.mark.parametrize("make", [AIMD, Gradient2])
def test_limiters_keep_alive_30s_before_zero(make: Callable[[], AIMD | Gradient2]) -> None:
    ts, ds = _busy_then_idle(make(), 100.0, 200.0)
    zero = _zero_at(ts, ds)
    assert 130.0 <= zero <= 131.0
    assert min(ds[: ts.index(zero)]) > 0


def test_limiters_keep_their_limit_through_zero() -> None:
    ctl = AIMD(initial=12)
    _busy_then_idle(ctl, 10.0, 60.0)
    assert ctl.decide(sig(60.0, depth=5)).desired >= 12


def test_min_units_is_respected() -> None:
    for ctl in (TargetTracking(min=2), Knative(min=2), AIMD(min=2), Gradient2(min=2)):
        _, ds = _busy_then_idle(ctl, 50.0, 800.0)
        assert min(ds) == 2, ctl


# -- cadence ----------------------------------------------------------------------------------
def test_controllers_act_at_their_own_period() -> None:
    hpa = TargetTracking()
    drive(hpa, 0.0, 31.0, lambda t: sig(t, depth=100))
    a = hpa.decide(sig(31.0, depth=100))
    b = hpa.decide(sig(31.5, depth=5_000))   # next sync at 45.5
    assert b is a
    kpa = Knative()
    drive(kpa, 0.0, 10.0, lambda t: sig(t, depth=3, ready=5))
    first = kpa.decide(sig(10.0, depth=3, ready=5))
    assert kpa.decide(sig(10.5, depth=3, ready=5)) is first   # ticks every 2 s
