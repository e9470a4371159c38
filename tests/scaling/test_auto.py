"""Auto, the default controller, on hand-built signals (a manual clock: increasing ``Signals.t``)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from swell.core.errors import ConfigError
from swell.scaling.auto import PROBE_AFTER_S, QUIET_S, Auto
from swell.scaling.base import Controller
from swell.scaling.signals import Signals
from swell.scaling.sim import reversals, simulate

TICK = 0.5


def sig(t: float, depth: int | None = 0, in_flight: int = 0, **kw: Any) -> Signals:
    return Signals(t=t, depth=depth, in_flight=in_flight, **kw)


def test_auto_is_a_controller_with_checked_knobs() -> None:
    assert isinstance(Auto(), Controller)
    assert (Auto().min_units, Auto().max_units) == (0, 64)
    for bad in ({"min": -1}, {"max": 0}, {"min": 5, "max": 4}, {"target_wait": 0},
                {"idle": "soon"}):
        with pytest.raises(ConfigError):
            Auto(**bad)
    assert Auto(target_wait="30s", idle="2m").idle_s == 120


def test_burst_from_zero_scales_up_fast_but_only_on_proven_units() -> None:
    auto = Auto(max=64)
    wanted: list[int] = []
    ready = 0
    for i in range(20):  # 1,000 waiting, 200 ms handlers; a unit is ready one tick after asked
        d = auto.decide(sig(i * TICK, depth=1000, in_flight=ready, ready=ready, busy=ready,
                            arrival_rate=0.0, service_time_s=0.2 if ready else None))
        wanted.append(d.desired)
        ready = d.desired
    assert wanted[0] >= 1
    assert all(b <= max(math.ceil(1.5 * max(a, 1)), a + 4) for a, b in itertools.pairwise(wanted))
    # demand: 0.2 s x 1,000 / 10 s = 20 units
    assert wanted[-1] == 20
    assert "backlog 1,000" in auto.decide(sig(10.0, depth=1000, in_flight=20, ready=20)).reason


def test_a_downstream_that_starts_throttling_sets_a_limit_near_its_quota() -> None:
    auto = Auto(max=64)
    t, attempts, throttles = 0.0, 0, 0
    for _ in range(40):  # calm: 20 units at 0.2 s, 100 calls/s
        attempts += 50
        auto.decide(sig(t, depth=5000, in_flight=20, ready=20, busy=20, arrival_rate=150,
                        service_time_s=0.2, attempts=attempts, throttles=throttles))
        t += TICK
    assert math.isinf(auto.limit)
    for _ in range(6):  # now 40 units, but the downstream lets only 100/s through
        attempts += 50 + 150
        throttles += 150
        d = auto.decide(sig(t, depth=5000, in_flight=40, ready=40, busy=40, arrival_rate=150,
                            service_time_s=0.2, attempts=attempts, throttles=throttles))
        t += TICK
    # 100/s at a calm 0.2 s is 20 units; the limit sits just under it
    assert 17 <= auto.limit <= 20
    assert d.desired == math.floor(auto.limit)
    assert "limit" in d.reason


def test_the_limit_is_probed_upward_after_a_quiet_spell() -> None:
    auto = Auto(max=64)
    t, attempts, throttles = 0.0, 0, 0
    for step in range(8):
        attempts += 100
        throttles += 50 if step >= 4 else 0
        auto.decide(sig(t, depth=3000, in_flight=30, ready=30, busy=30, arrival_rate=120,
                        service_time_s=0.2, attempts=attempts, throttles=throttles))
        t += TICK
    learned = auto.limit
    units = math.floor(learned)
    while t < 8 + PROBE_AFTER_S + 11:  # no more throttles, still more demand than the limit
        attempts += 50
        auto.decide(sig(t, depth=3000, in_flight=units, ready=units, busy=units, arrival_rate=120,
                        service_time_s=0.2, attempts=attempts, throttles=throttles, current=units))
        units = math.floor(auto.limit)
        t += TICK
    assert learned + 1 <= auto.limit <= learned + 3


def test_a_disappearing_signal_holds_and_never_scales_to_zero() -> None:
    auto = Auto()
    auto.decide(sig(0.0, depth=200, in_flight=0, arrival_rate=10, service_time_s=0.2))
    before = auto.decide(sig(0.5, depth=200, in_flight=4, ready=4, arrival_rate=10,
                             service_time_s=0.2)).desired
    assert before > 0
    for i in range(2, 600):  # five minutes without data
        d = auto.decide(sig(i * TICK, depth=None, in_flight=0))
        assert d.desired == before
        assert "no signal" in d.reason


def test_idle_keeps_one_warm_unit_then_goes_to_zero_after_the_idle_period() -> None:
    auto = Auto(idle=30)
    t = 0.0
    for _ in range(20):  # busy: 5 units
        auto.decide(sig(t, depth=10, in_flight=5, ready=5, busy=5, arrival_rate=25,
                        service_time_s=0.2, attempts=int(t * 25)))
        t += TICK
    last_busy = t
    seen: list[tuple[float, int]] = []
    while t < last_busy + 40:
        seen.append((t - last_busy, auto.decide(sig(t, depth=0, in_flight=0, arrival_rate=0.0,
                                                    attempts=int(last_busy * 25))).desired))
        t += TICK
    assert all(d >= 1 for since, d in seen if since < 30 - TICK)  # the idle period
    assert all(d <= 1 for since, d in seen if since > QUIET_S + TICK)
    assert seen[-1][1] == 0


def test_min_units_are_kept_when_idle() -> None:
    auto = Auto(min=2, idle=1)
    for i in range(30):
        d = auto.decide(sig(i * TICK, depth=0, in_flight=0, arrival_rate=0.0))
    assert d.desired == 2


def test_flapping_input_does_not_flap_the_units() -> None:
    auto = Auto()
    targets = []
    for i in range(600):  # 5 minutes of a rate flapping 8 <-> 12 /s every tick, ~2 units of work
        rate = 12.0 if i % 2 else 8.0
        targets.append(auto.decide(sig(i * TICK, depth=i % 3, in_flight=2, ready=3, busy=2,
                                       arrival_rate=rate, service_time_s=0.2,
                                       attempts=i * 5)).desired)
    settled = targets[20:]
    assert reversals(settled) <= 2
    assert max(settled) - min(settled) <= 1


@pytest.mark.parametrize("shape", ["step", "saw"])
def test_auto_in_the_simulator_keeps_throttles_low_and_serves_everything(shape: str) -> None:
    r = simulate(shape, "auto", seed=3)
    assert r.metrics.served
    assert r.metrics.throttle_rate <= 0.01
    assert r.metrics.over_provisioning is not None and r.metrics.over_provisioning <= 1.5


def test_a_pause_of_this_process_is_not_taken_for_a_sick_downstream() -> None:
    auto = Auto(max=64)
    t, attempts = 0.0, 0
    for _ in range(20):  # calm: 10 units at 0.2 s
        attempts += 25
        auto.decide(sig(t, depth=500, in_flight=10, ready=10, busy=10, arrival_rate=50,
                        service_time_s=0.2, attempts=attempts))
        t += TICK
    # the event loop stood still for 2 s: the next tick is late and its handler times stretched
    t += 2.0
    attempts += 25
    auto.decide(sig(t, depth=900, in_flight=10, ready=10, busy=10, arrival_rate=50,
                    service_time_s=2.2, attempts=attempts))
    assert math.isinf(auto.limit)
