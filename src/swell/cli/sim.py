"""``swell sim``: controllers compared on traffic shapes, on a virtual clock.

    swell sim --shape step --shape traffic.csv --controllers auto,fixed:8,hpa --quota 50/s
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click
from rich.console import Console

from swell.core.config import per_second, seconds
from swell.core.errors import ConfigError, SwellError
from swell.scaling.controllers import parse_controller
from swell.scaling.report import (
    DEFAULT_CONTROLLERS,
    matplotlib,
    rich_table,
    run_with_progress,
    write_report,
)
from swell.scaling.sim import SimParams, fluid_floor, parse_shape


def _split(values: Sequence[str]) -> list[str]:
    return [x.strip() for v in values for x in v.split(",") if x.strip()]


@click.command("sim")
@click.option("--shape", "shapes", multiple=True, default=("step",), show_default=True,
              help="step, saw, diurnal, or a .csv of arrival timestamps (s); repeat or comma-separate.")
@click.option("--controllers", default=DEFAULT_CONTROLLERS, show_default=True,
              help="Comma list: auto, fixed:N, hpa, kpa, aimd, gradient2.")
@click.option("--seeds", default=10, show_default=True, type=click.IntRange(1),
              help="Runs per shape and controller; the table shows medians.")
@click.option("--quota", default="100/s", show_default=True, help="Downstream rate limit.")
@click.option("--burst", default=20, show_default=True, type=click.IntRange(1),
              help="Downstream token bucket size.")
@click.option("--cpu", "--service-time", "cpu", default="50ms", show_default=True,
              help="Handler time before the downstream call.")
@click.option("--latency", default="150ms", show_default=True,
              help="Downstream latency when not loaded.")
@click.option("--cold-start", default="2s", show_default=True, help="Median cold start.")
@click.option("--max-instances", default=64, show_default=True, type=click.IntRange(1))
@click.option("--fault", is_flag=True, help="5 % of downstream calls fail for 60 s from t=120 s.")
@click.option("--out", "out_dir", default="swell-sim", show_default=True,
              type=click.Path(file_okay=False), help="Where the PNGs and tables.md go.")
@click.option("--no-plot", is_flag=True, help="Tables only (no matplotlib needed).")
@click.option("--processes", type=click.IntRange(1), default=None,
              help="Worker processes (default: one per CPU).")
def sim(shapes: tuple[str, ...], controllers: str, seeds: int, quota: str, burst: int, cpu: str,
        latency: str, cold_start: str, max_instances: int, fault: bool, out_dir: str,
        no_plot: bool, processes: int | None) -> None:
    """Compare controllers on traffic shapes, on a virtual clock, before production does."""
    console = Console(width=max(140, shutil.get_terminal_size().columns))
    try:
        params = SimParams(quota_rps=per_second(quota, name="--quota"), burst=burst,
                           cpu_s=seconds(cpu, name="--cpu"),
                           latency_base_s=seconds(latency, name="--latency"),
                           cold_start_median_s=seconds(cold_start, name="--cold-start"),
                           max_instances=max_instances, fault=fault)
        specs = _split([controllers])
        if not specs:
            raise ConfigError("--controllers names no controller")
        for spec in specs:
            parse_controller(spec, max_instances)
        resolved = [parse_shape(s) for s in _split(shapes)]
        if not no_plot:
            matplotlib()
        started = time.perf_counter()
        comparison = run_with_progress(console, resolved, specs, seeds, params, processes)
        floors = {s.name: fluid_floor(s, params) for s in resolved}
        for shape, rows in comparison.items():
            console.print(rich_table(shape, rows, floors[shape]))
        paths = write_report(comparison, Path(out_dir), params, floors, plots=not no_plot)
    except SwellError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    took = time.perf_counter() - started
    console.print(f"{len(resolved) * len(specs) * seeds} runs in {took:.1f} s; wrote "
                  + ", ".join(str(p) for p in paths), highlight=False)
