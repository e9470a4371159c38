"""The scaling benchmark of /work/shared/BENCH-SCALING.md: every shape, every controller, medians of seeds.

    python bench/scaling.py [--seeds 10] [--controllers auto,fixed:8,...] [--replay traffic.csv]
                            [--processes N] [--out bench/out/scaling] [--fault] [--strict]

Shapes: step, saw, diurnal and a replay (by default ``bursts``: a CSV of flash crowds that this script
writes, so the replay path is exercised; ``--replay`` takes your own). Controllers: ``auto`` (swell's
default, skipped with a note if it cannot be imported) and the baselines: static pools of 8 and 16,
KEDA + HPA, Knative KPA, AIMD, Gradient2.

Writes ``<out>/<shape>.png`` (arrivals, backlog and instances over time) and ``<out>/tables.md``, and
prints:

1. a table per shape (controller x metric, medians);
2. **model checks** against the floors of BENCH-SCALING.md: the step's excess of 3,000 drains at the
   80/s of spare quota in ~37.5 s, a static pool sized at the quota sees a p99 wait near the fluid
   floor (~31 s in BENCH-SCALING.md), no run costs less than its busy-seconds, a controller that scales
   down in all 10 of saw's idle gaps reverses at least 19 times, every controller saw the same
   arrivals. A failed check means the model is wrong: the exit status is 1;
3. **Auto's targets** ("What Auto must reach"), PASS/FAIL per target per shape; with ``--strict`` a
   FAIL makes the exit status 2.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from swell.core.errors import SwellError
from swell.scaling.report import DEFAULT_CONTROLLERS, rich_table, run_with_progress, write_report
from swell.scaling.sim import Floor, Shape, SimParams, Summary, fluid_floor, parse_shape

OUT = Path(__file__).resolve().parent / "out" / "scaling"
console = Console(width=None if sys.stdout.isatty() else 160)


@dataclass(frozen=True)
class Check:
    shape: str
    name: str
    ok: bool | None  # None: not applicable
    detail: str


def write_bursts(path: Path) -> Path:
    """A replay trace: 10/s of background for 840 s, and flash crowds of 1,500 messages in 3 s at
    t = 150, 420 and 690 s. Deterministic."""
    rng = random.Random("swell-bench:bursts")
    times, t = [], 0.0
    while True:
        t += rng.expovariate(10.0)
        if t >= 840:
            break
        times.append(t)
    for start in (150.0, 420.0, 690.0):
        times += [start + rng.uniform(0, 3) for _ in range(1500)]
    times.sort()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("timestamp_s\n" + "".join(f"{x:.4f}\n" for x in times), encoding="utf-8")
    return path


def quota_pool(p: SimParams) -> int:
    """The static pool whose unloaded throughput is the quota: quota x (CPU + mean latency)."""
    return math.floor(p.quota_rps * (p.cpu_s + p.latency_base_s * math.exp(p.latency_sigma ** 2 / 2)))


# -- model checks -----------------------------------------------------------------------------
def _within(x: float | None, lo: float, hi: float) -> bool:
    return x is not None and lo <= x <= hi


def model_checks(shapes: list[Shape], comparison: dict[str, dict[str, Summary]],
                 floors: dict[str, Floor], at_quota: Summary | None, p: SimParams) -> list[Check]:
    out: list[Check] = []
    if "step" in floors:
        f = floors["step"]
        excess, spare = 60 * (150 - p.quota_rps), p.quota_rps - 20
        out.append(Check("step", "excess drains at the spare quota",
                         _within(f.drain_s, 0.95 * excess / spare, 1.05 * excess / spare),
                         f"{excess:,.0f} messages / {spare:g}/s = {excess / spare:.1f} s; fluid model "
                         f"{f.drain_s:.1f} s (BENCH-SCALING.md: about 37.5 s)"))
    if at_quota is not None and "step" in floors:
        f, m = floors["step"], at_quota.median
        out.append(Check("step", f"{at_quota.controller} (pool at the quota) p99 wait near the floor",
                         _within(m.p99_wait_s, 0.9 * f.p99_wait_s, 1.25 * f.p99_wait_s),
                         f"measured {m.p99_wait_s:.1f} s, fluid floor {f.p99_wait_s:.1f} s "
                         "(BENCH-SCALING.md: near 31 s)"))
        out.append(Check("step", f"{at_quota.controller} drains in about the floor time",
                         _within(m.drain_s, 0.8 * f.drain_s, 1.3 * f.drain_s),
                         f"measured {m.drain_s or math.inf:.1f} s, floor {f.drain_s:.1f} s"))
    for sh in shapes:
        shape, rows, f = sh.name, comparison[sh.name], floors[sh.name]
        cheap = [name for name, s in rows.items()
                 if any(r.instance_s < r.busy_s - 1e-6 for r in s.runs_metrics)]
        out.append(Check(shape, "instance-seconds >= busy-seconds in every run", not cheap,
                         "violated by " + ", ".join(cheap) if cheap else
                         f"busy-seconds >= {f.busy_s:,.0f} expected work"))
        low = [name for name, s in rows.items()  # a pool that leaves work undone did less of it
               if s.served_runs == s.runs and s.median.busy_s < 0.9 * f.busy_s]
        out.append(Check(shape, "busy-seconds cover the expected work (served runs)", not low,
                         "below 0.9 x floor: " + ", ".join(low) if low else
                         f"median busy-s >= 0.9 x {f.busy_s:,.0f}"))
        # runs that overrun the shape to serve what is left have longer series: compare the shape
        arrivals = {s.series.arrivals[:math.ceil(sh.duration_s)] for s in rows.values()}
        out.append(Check(shape, "same arrivals for every controller (first seed)", len(arrivals) == 1,
                         f"{sum(next(iter(arrivals))):,} messages" if len(arrivals) == 1 else
                         f"{len(arrivals)} different arrival series"))
    out += [c for sh in shapes if sh.kind == "saw"
            for c in _saw_reversals(comparison[sh.name], sh, floors[sh.name])]
    return out


def _down_in_every_gap(s: Summary, shape: Shape) -> bool:
    inst = s.series.instances
    gaps = [(a, a + 30) for a in range(60, int(shape.duration_s), 90)]
    return all(b < len(inst) and min(inst[a:b + 1]) < inst[a] for a, b in gaps)


def _saw_reversals(rows: dict[str, Summary], shape: Shape, f: Floor) -> list[Check]:
    out = []
    for name, s in rows.items():
        if not _down_in_every_gap(s, shape):
            continue
        first = s.runs_metrics[0] if s.runs_metrics else s.median
        out.append(Check("saw", f"{name} scales down in every gap: reversals >= {f.min_reversals}",
                         first.reversals >= f.min_reversals,
                         f"first seed: {first.reversals:.0f} reversals"))
    return out


# -- Auto's targets ---------------------------------------------------------------------------
def auto_checks(shape: str, rows: dict[str, Summary], gaps: int) -> list[Check]:
    if "auto" not in rows:
        return []
    a, am = rows["auto"], rows["auto"].median
    base = {k: v for k, v in rows.items() if k != "auto"}
    good = {k: v for k, v in base.items()
            if v.served_runs == v.runs and v.median.throttle_rate <= 0.01}
    out = [Check(shape, "throttles <= 1 % and every message served",
                 am.throttle_rate <= 0.01 and a.served_runs == a.runs,
                 f"429 rate {am.throttle_rate:.2%}, served {a.served_runs}/{a.runs}")]
    if good:
        best_name, best = min(good.items(), key=lambda kv: kv[1].median.p99_e2e_s)
        out.append(Check(shape, "p99 e2e <= 1.15 x best good baseline",
                         am.p99_e2e_s <= 1.15 * best.median.p99_e2e_s,
                         f"{am.p99_e2e_s:.1f} s vs 1.15 x {best.median.p99_e2e_s:.1f} s ({best_name})"))
        cheap_name, cheap = min(good.items(), key=lambda kv: kv[1].median.instance_s)
        out.append(Check(shape, "instance-s below every good baseline",
                         am.instance_s < cheap.median.instance_s,
                         f"{am.instance_s:,.0f} vs {cheap.median.instance_s:,.0f} ({cheap_name})"))
    else:
        out.append(Check(shape, "p99 e2e / instance-s vs good baselines", None,
                         "no baseline keeps 429s <= 1 % and serves everything"))
    over = am.over_provisioning
    out.append(Check(shape, "over-provisioning <= 1.5", over is not None and over <= 1.5,
                     f"{over:.2f}" if over is not None else "no work"))
    aimd = rows["aimd"].median.reversals if "aimd" in rows else 0.0
    bound = max(aimd, 2 * gaps)
    out.append(Check(shape, "reversals <= max(AIMD's, 2 x idle gaps)", am.reversals <= bound,
                     f"{am.reversals:.0f} vs max({aimd:.0f}, 2 x {gaps})"))
    if shape == "step":
        z = am.to_zero_s
        out.append(Check(shape, "back to zero <= 60 s after the last message",
                         z is not None and z <= 60, "never" if z is None else f"{z:.1f} s"))
    return out


def checks_table(title: str, checks: list[Check]) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for col in ("shape", "check", "", "figures"):
        table.add_column(col)
    for c in checks:
        verdict = "[dim]n/a[/]" if c.ok is None else "[green]PASS[/]" if c.ok else "[bold red]FAIL[/]"
        table.add_row(c.shape, c.name, verdict, c.detail)
    return table


def checks_markdown(title: str, checks: list[Check]) -> str:
    rows = [f"## {title}", "", "| shape | check | | figures |", "|---|---|---|---|"]
    rows += [f"| {c.shape} | {c.name} | {'n/a' if c.ok is None else 'PASS' if c.ok else 'FAIL'} | "
             f"{c.detail} |" for c in checks]
    return "\n".join([*rows, ""])


# -- main -------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--controllers", default=DEFAULT_CONTROLLERS)
    ap.add_argument("--shapes", default="step,saw,diurnal", help="built-in shapes to run")
    ap.add_argument("--replay", default=None, help="a CSV of arrival timestamps (default: bursts)")
    ap.add_argument("--processes", type=int, default=None, help="default: one per CPU")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--fault", action="store_true", help="5 %% errors for 60 s from t=120 s")
    ap.add_argument("--strict", action="store_true", help="exit 2 if Auto misses a target")
    args = ap.parse_args()

    params = SimParams(fault=args.fault)
    controllers = [c.strip() for c in args.controllers.split(",") if c.strip()]
    if "auto" in controllers:
        try:
            import swell.scaling.auto  # noqa: F401
        except ImportError as exc:
            console.print(f"[yellow]auto skipped:[/] {exc}")
            controllers.remove("auto")
    replay = Path(args.replay) if args.replay else write_bursts(args.out / "bursts.csv")
    shapes = [parse_shape(s) for s in args.shapes.split(",") if s.strip()] + [parse_shape(str(replay))]
    runs = len(shapes) * len(controllers) * args.seeds
    console.print(f"[bold]swell scaling bench[/]: {len(shapes)} shapes x {len(controllers)} controllers "
                  f"x {args.seeds} seeds = {runs} runs ({', '.join(controllers)})", highlight=False)

    started = time.perf_counter()
    comparison = run_with_progress(console, shapes, controllers, args.seeds, params, args.processes)
    took = time.perf_counter() - started
    pool = f"fixed:{quota_pool(params)}"
    at_quota = run_with_progress(console, [Shape.step()], [pool], args.seeds, params,
                                 args.processes)["step"][pool] if any(
                                     s.name == "step" for s in shapes) else None
    floors = {s.name: fluid_floor(s, params) for s in shapes}

    for shape, rows in comparison.items():
        console.print(rich_table(shape, rows, floors[shape]))
    model = model_checks(shapes, comparison, floors, at_quota, params)
    console.print(checks_table("model checks (floors of BENCH-SCALING.md)", model))
    auto = [c for s in shapes for c in auto_checks(s.name, comparison[s.name], s.idle_gaps())]
    if auto:
        console.print(checks_table("Auto's targets (What Auto must reach)", auto))

    write_report(comparison, args.out, params, floors, title="swell scaling benchmark")
    md = args.out / "tables.md"
    text = md.read_text(encoding="utf-8")
    text += "\n" + checks_markdown("Model checks (floors of BENCH-SCALING.md)", model)
    if auto:
        text += "\n" + checks_markdown("Auto's targets", auto)
    text += f"\n{runs} runs in {took:.0f} s.\n"
    md.write_text(text, encoding="utf-8")
    console.print(f"{runs} runs in {took:.1f} s (+ {args.seeds} runs of {pool} on step); wrote "
                  f"{args.out}/tables.md and {len(shapes)} PNGs", highlight=False)
    if any(c.ok is False for c in model):
        return 1
    return 2 if args.strict and any(c.ok is False for c in auto) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SwellError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(1)
