"""The simulator: the model of BENCH-SCALING.md, its floors, determinism, the report and ``swell sim``."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from swell.cli.sim import sim
from swell.core.config import per_second as parse_rate
from swell.core.errors import ConfigError
from swell.scaling.base import Decision
from swell.scaling.controllers import Fixed
from swell.scaling.report import markdown, rich_table, write_report
from swell.scaling.signals import Signals
from swell.scaling.sim import (
    Shape,
    SimParams,
    SimResult,
    TokenBucket,
    compare,
    fluid_floor,
    parse_shape,
    reversals,
    simulate,
)

P = SimParams()
STEP = Shape.step().until(320.0)  # the burst and its drain, without the long tail


def quota_pool(p: SimParams) -> int:
    """The static pool whose unloaded throughput is the quota."""
    return math.floor(p.quota_rps * (p.cpu_s + p.latency_base_s * math.exp(p.latency_sigma ** 2 / 2)))


# -- shapes -----------------------------------------------------------------------------------
def test_shapes_follow_the_spec() -> None:
    step, saw, diurnal = Shape.step(), Shape.saw(), Shape.diurnal()
    assert [step.rate(t) for t in (0, 119.9, 120, 179.9, 180, 599.9, 600, 899)] == [
        20, 20, 150, 150, 20, 20, 0, 0]
    assert (step.duration_s, saw.duration_s, diurnal.duration_s) == (900, 900, 1200)
    assert [saw.rate(t) for t in (0, 30, 59.5, 60, 89, 90, 120)] == [0, 60, 119, 0, 0, 0, 60]
    assert diurnal.rate(0) == pytest.approx(5.0)
    assert diurnal.rate(300) == pytest.approx(80.0)
    assert diurnal.rate(710) == pytest.approx(42.5 - 37.5 * math.cos(2 * math.pi * 710 / 600) + 250)
    assert (step.idle_gaps(), saw.idle_gaps(), diurnal.idle_gaps()) == (1, 10, 0)


def test_arrivals_are_poisson_at_the_rate_and_fixed_per_seed() -> None:
    shape = Shape.step()
    a = shape.arrivals(1)
    assert a == shape.arrivals(1) and a != shape.arrivals(2)
    assert a == sorted(a) and a[0] >= 0 and a[-1] < 600
    expected = 20 * 600 + 130 * 60
    assert abs(len(a) - expected) < 4 * math.sqrt(expected)
    burst = sum(120 <= t < 180 for t in a)
    assert abs(burst - 9_000) < 4 * math.sqrt(9_000)


def test_parse_shape(tmp_path: Path) -> None:
    assert parse_shape("STEP").name == "step"
    good = tmp_path / "traffic.csv"
    good.write_text("timestamp,who\n100.5,a\n\n101,b\n100.0,c\n")
    shape = parse_shape(str(good))
    assert shape.name == "traffic" and shape.times == (0.0, 0.5, 1.0)
    assert shape.duration_s == 1.0 + 300.0
    no_header = tmp_path / "plain.csv"
    no_header.write_text("3\n1\n")
    assert parse_shape(str(no_header)).times == (0.0, 2.0)


@pytest.mark.parametrize(("text", "message"), [
    ("t\n1\nx\n", "bad.csv:3: 'x' is not a timestamp"),
    ("t\n", "holds no arrival timestamps"),
    ("1\nnan\n", "bad.csv:2"),
])
def test_parse_shape_rejects_bad_csv(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse_shape(str(bad))


def test_parse_shape_rejects_unknown_names_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown shape 'sine'.*step, saw, diurnal"):
        parse_shape("sine")
    with pytest.raises(ConfigError, match="cannot read shape"):
        parse_shape(str(tmp_path / "missing.csv"))


def test_params_are_checked() -> None:
    with pytest.raises(ConfigError, match="quota_rps"):
        SimParams(quota_rps=0)
    with pytest.raises(ConfigError, match="tick_s"):
        SimParams(tick_s=0.25)


# -- the downstream ---------------------------------------------------------------------------
def test_token_bucket_never_exceeds_quota_plus_burst_over_any_window() -> None:
    rng = random.Random(7)
    bucket = TokenBucket(100.0, 20)
    calls, t = [], 0.0
    for _ in range(20_000):  # bursts and lulls, far above the quota on average
        t += rng.expovariate(400.0) if rng.random() < 0.9 else rng.uniform(0, 0.5)
        if bucket.take(t):
            calls.append(t)
    assert len(calls) > 1_000
    for w in (0.01, 0.1, 0.5, 1.0, 5.0):
        j = 0
        for i in range(len(calls)):
            while calls[i] - calls[j] > w:
                j += 1
            assert i - j + 1 <= 20 + 100.0 * w + 1e-9


# -- runs -------------------------------------------------------------------------------------
def test_same_seed_same_run() -> None:
    a = simulate(STEP, "hpa", seed=3)
    b = simulate(STEP, "hpa", seed=3)
    assert a == b
    assert simulate(STEP, "hpa", seed=4).metrics != a.metrics


def test_every_controller_sees_the_same_arrivals() -> None:
    runs = [simulate(STEP, spec, seed=5) for spec in ("fixed:4", "kpa", "aimd")]
    n = math.ceil(STEP.duration_s)
    assert len({r.series.arrivals[:n] for r in runs}) == 1
    assert len({r.metrics.messages for r in runs}) == 1
    assert sum(runs[0].series.arrivals) == len(STEP.arrivals(5))


def test_a_pool_at_the_quota_meets_the_floor() -> None:
    floor = fluid_floor(STEP)
    assert floor.peak_backlog == pytest.approx(3_000, rel=0.01)
    assert floor.drain_s == pytest.approx(3_000 / 80, rel=0.02)
    assert 28 <= floor.p99_wait_s <= 31
    m = simulate(STEP, f"fixed:{quota_pool(P)}", seed=0).metrics
    assert m.served and m.throttle_rate < 0.01
    assert 0.5 * floor.p99_wait_s <= m.p99_wait_s <= 2 * floor.p99_wait_s
    assert 0.8 * floor.drain_s <= (m.drain_s or math.inf) <= 1.5 * floor.drain_s
    assert m.peak_backlog >= 0.9 * floor.peak_backlog


def test_a_pool_of_26_overruns_the_quota_and_pays_in_retries() -> None:
    """BENCH-SCALING.md's "about 26 instances": in this model 26 call faster than the quota, so
    throttled messages go back (1 s, then behind the backlog): the excess still drains at the quota,
    and end-to-end latency, retries included, stays within 2x the floor."""
    floor = fluid_floor(STEP)
    m = simulate(STEP, "fixed:26", seed=0).metrics
    assert m.throttle_rate > 0.05
    assert 0.8 * floor.drain_s <= (m.drain_s or math.inf) <= 1.5 * floor.drain_s
    assert 0.5 * floor.p99_wait_s <= m.p99_e2e_s <= 2 * floor.p99_wait_s


def test_too_small_a_pool_is_late_and_leaves_work_unserved() -> None:
    m = simulate(STEP, "fixed:8", seed=0).metrics
    assert m.throttle_rate == 0 and m.over_provisioning is not None and m.over_provisioning < 1.5
    # 8 units serve ~39/s: the burst's backlog is still there when the (cut) shape ends
    assert not m.served and m.unserved > 1_000 and m.drain_s is None
    assert m.p99_e2e_s > 2 * fluid_floor(STEP).p99_wait_s
    # with the whole shape it catches up during the 20/s that follows the burst
    full = simulate(Shape.step(), "fixed:8", seed=0).metrics
    assert full.served and (full.drain_s or math.inf) > 5 * fluid_floor(STEP).drain_s


def test_calls_through_never_exceed_quota_plus_burst_per_second() -> None:
    r = simulate(STEP, "fixed:64", seed=1)
    assert r.metrics.throttle_rate > 0 or max(r.series.calls_ok) < 100
    assert max(r.series.calls_ok) <= P.quota_rps + P.burst
    assert sum(r.series.calls_ok) >= r.metrics.messages


def test_cost_counts_from_the_ask_and_bounds_busy_time() -> None:
    shape = Shape.replay([0.0, 10.0], tail_s=100.0)
    m = simulate(shape, lambda: Fixed(4), seed=0).metrics
    assert m.instance_s == pytest.approx(4 * 110.0, abs=0.5)  # cold starts included
    assert m.busy_s > 0 and m.over_provisioning == pytest.approx(m.instance_s / m.busy_s)
    assert m.cold_starts == 4 and m.reversals == 0 and m.served


def test_hpa_scales_to_zero_on_the_idle_tail() -> None:
    shape = Shape.replay([i / 20 for i in range(60 * 20)], tail_s=500.0)
    m = simulate(shape, "hpa", seed=0).metrics
    # KEDA: polled every 30 s, zero 300 s after the last active poll
    assert m.to_zero_s is not None and 270 <= m.to_zero_s <= 340
    fast = simulate(shape, "aimd", seed=0).metrics
    assert fast.to_zero_s is not None and 29 <= fast.to_zero_s <= 33


class Scripted:
    """A controller that asks for 10 units until t=20, then 2."""

    min_units, max_units = 0, 64

    def decide(self, s: Signals) -> Decision:
        return Decision(10 if s.t < 20 else 2, "script")


def test_scale_down_removes_idle_instances_at_once() -> None:
    shape = Shape.replay([i / 5 for i in range(5 * 40)], tail_s=20.0)
    r = simulate(shape, Scripted, seed=0)
    assert r.series.instances[15] == 10
    assert r.series.instances[21] == 2  # idle ones go at once; busy ones within their attempt
    assert r.metrics.reversals == 0 and r.metrics.served


def test_reversals_count_changes_of_direction() -> None:
    assert reversals([0, 4, 4, 2, 5, 5, 0]) == 3
    assert reversals([0, 1, 2, 3, 3, 1, 0]) == 1
    assert reversals([5, 5, 5]) == 0
    saw_like = [x for _ in range(10) for x in (0, 8, 0)]
    assert reversals(saw_like) == 19


def test_fault_errors_are_retried_until_served() -> None:
    p = dataclasses.replace(P, fault=True, fault_start_s=20.0, fault_duration_s=60.0)
    m = simulate(Shape.step().until(120.0), "fixed:10", seed=2, params=p).metrics
    assert 0.02 < m.error_rate < 0.08
    assert m.served


def test_compare_gives_medians_per_shape_and_controller() -> None:
    short = Shape.step().until(150.0)
    seen: list[SimResult] = []
    table = compare([short], ["fixed:6", "aimd"], seeds=3, processes=1, on_result=seen.append)
    assert len(seen) == 6 and list(table) == ["step"] and list(table["step"]) == ["fixed:6", "aimd"]
    s = table["step"]["aimd"]
    assert s.runs == 3 and len(s.runs_metrics) == 3
    waits = sorted(m.p99_wait_s for m in s.runs_metrics)
    assert s.median.p99_wait_s == waits[1]
    with pytest.raises(ConfigError, match="unknown controller"):
        compare([short], ["fixed:6", "nope"], seeds=1, processes=1)


# -- report and command -----------------------------------------------------------------------
def test_tables_and_plots(tmp_path: Path) -> None:
    short = Shape.step().until(200.0)
    table = compare([short], ["fixed:6", "kpa"], seeds=1, processes=1)
    floors = {"step": fluid_floor(short)}
    assert rich_table("step", table["step"], floors["step"]).row_count == 2
    md = markdown(table, P, floors)
    assert "| kpa |" in md and "e2e p99 s" in md and "floor" in md
    pytest.importorskip("matplotlib")
    paths = write_report(table, tmp_path / "out", P, floors)
    assert sorted(p.name for p in paths) == ["step.png", "tables.md"]
    assert (tmp_path / "out" / "step.png").read_bytes()[:4] == b"\x89PNG"


def test_parse_rate() -> None:
    assert parse_rate("100/s") == 100.0
    assert parse_rate("6000/min") == 100.0
    assert parse_rate("50") == 50.0
    for bad in ("fast", "0/s", "-3/s", "10/x"):
        with pytest.raises(ConfigError):
            parse_rate(bad, name="--quota")


def _cli(*args: str) -> tuple[int, str]:
    group = click.Group(commands={"sim": sim})
    result = CliRunner().invoke(group, ["sim", *args])
    return result.exit_code, result.output


def test_sim_command(tmp_path: Path) -> None:
    traffic = tmp_path / "t.csv"
    traffic.write_text("".join(f"{i / 10}\n" for i in range(300)))
    code, out = _cli("--shape", str(traffic), "--controllers", "fixed:2,aimd", "--seeds", "2",
                     "--quota", "50/s", "--cold-start", "1s", "--no-plot", "--out", str(tmp_path / "o"))
    assert code == 0, out
    assert "aimd" in out and "2/2" in out
    assert (tmp_path / "o" / "tables.md").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--shape", "sine"], "unknown shape 'sine'"),
    (["--controllers", "hpa,foo"], "unknown controller 'foo'"),
    (["--quota", "lots"], "--quota 'lots' is not a rate"),
    (["--cold-start", "soon"], "--cold-start 'soon' is not a duration"),
])
def test_sim_command_errors_are_one_line(args: list[str], message: str) -> None:
    code, out = _cli(*args, "--no-plot", "--seeds", "1")
    assert code == 1
    assert out.startswith("error:") and message in out
    assert "Traceback" not in out
