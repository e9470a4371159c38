"""Tables and plots of a simulator comparison (``swell sim`` and ``bench/scaling.py`` show them)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from swell.core.errors import MissingDependency
from swell.scaling.sim import Floor, Shape, SimParams, SimResult, Summary, compare

__all__ = ["COLUMNS", "DEFAULT_CONTROLLERS", "markdown", "matplotlib", "plot_shape", "rich_table",
           "run_with_progress", "write_report"]

Comparison = dict[str, dict[str, Summary]]
DEFAULT_CONTROLLERS = "auto,fixed:8,fixed:16,hpa,kpa,aimd,gradient2"


# -- numbers ----------------------------------------------------------------------------------
def _s(x: float | None) -> str:
    if x is None:
        return "never"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}" if x == int(x) else f"{x:,.1f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %" if x >= 0.001 or x == 0 else f"{100 * x:.2f} %"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


COLUMNS: list[tuple[str, str, Callable[[Summary], str]]] = [
    ("wait p50 s", "wait\np50 s", lambda s: _s(s.median.p50_wait_s)),
    ("wait p99 s", "wait\np99 s", lambda s: _s(s.median.p99_wait_s)),
    ("e2e p99 s", "e2e\np99 s", lambda s: _s(s.median.p99_e2e_s)),
    ("peak backlog", "peak\nbacklog", lambda s: _n(s.median.peak_backlog)),
    ("drain s", "drain\ns", lambda s: _s(s.median.drain_s)),
    ("instance-s", "instance\nseconds", lambda s: _n(round(s.median.instance_s))),
    ("over-prov", "over-\nprov", lambda s: _ratio(s.median.over_provisioning)),
    ("cold starts", "cold\nstarts", lambda s: _n(s.median.cold_starts)),
    ("429 rate", "429\nrate", lambda s: _pct(s.median.throttle_rate)),
    ("error rate", "error\nrate", lambda s: _pct(s.median.error_rate)),
    ("reversals", "rever-\nsals", lambda s: _n(s.median.reversals)),
    ("served", "served", lambda s: f"{s.served_runs}/{s.runs}"),
    ("to zero s", "to zero\ns", lambda s: "-" if s.median.to_zero_s is None else _s(s.median.to_zero_s)),
]
"""The table's columns: name, a two-line header (the table stays under ~130 columns) and how to
show a summary (medians over seeds)."""


def _floor_note(floor: Floor) -> str:
    return (f"floor (quota-bound fluid queue): p99 wait {_s(floor.p99_wait_s)} s, peak backlog "
            f"{_n(round(floor.peak_backlog))}, drain {_s(floor.drain_s)} s, busy-s "
            f"{_n(round(floor.busy_s))}, reversals >= {floor.min_reversals} if down in every gap")


def rich_table(shape: str, rows: dict[str, Summary], floor: Floor | None = None) -> Table:
    """One shape: a row per controller, medians over seeds."""
    runs = max((s.runs for s in rows.values()), default=0)
    table = Table(title=f"{shape}: medians of {runs} seed(s)", title_justify="left",
                  header_style="bold", caption=_floor_note(floor) if floor else None,
                  caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("controller", no_wrap=True)
    for _, head, _ in COLUMNS:
        table.add_column(head, justify="right", no_wrap=True,
                         min_width=max(len(x) for x in head.splitlines()))
    for name, summary in rows.items():
        table.add_row(name, *(show(summary) for _, _, show in COLUMNS))
    return table


def markdown(comparison: Comparison, params: SimParams, floors: dict[str, Floor] | None = None,
             title: str = "swell sim") -> str:
    """The tables as markdown, a section per shape."""
    seeds = max((s.runs for rows in comparison.values() for s in rows.values()), default=0)
    out = [f"# {title}", "",
           f"Medians of {seeds} seed(s). Model: quota {params.quota_rps:g}/s (burst {params.burst}), "
           f"CPU {params.cpu_s * 1000:g} ms, downstream latency {params.latency_base_s * 1000:g} ms "
           f"(knee {params.latency_knee} in flight), cold start {params.cold_start_median_s:g} s "
           f"median, at most {params.max_instances} instances"
           + (f", fault: {params.fault_error_rate:.0%} errors for {params.fault_duration_s:g} s "
              f"from t={params.fault_start_s:g} s" if params.fault else "") + ".", ""]
    heads = ["controller", *(name for name, _, _ in COLUMNS)]
    for shape, rows in comparison.items():
        out += [f"## {shape}", "", "| " + " | ".join(heads) + " |",
                "|" + "|".join(["---"] + ["---:"] * len(COLUMNS)) + "|"]
        out += ["| " + " | ".join([name, *(show(s) for _, _, show in COLUMNS)]) + " |"
                for name, s in rows.items()]
        if floors and shape in floors:
            out += ["", _floor_note(floors[shape]) + "."]
        out.append("")
    return "\n".join(out)


# -- plots ------------------------------------------------------------------------------------
def matplotlib() -> Any:
    """matplotlib's ``Figure`` and ``FigureCanvasAgg``; ``MissingDependency`` without it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependency("matplotlib", "sim") from exc
    return Figure, FigureCanvasAgg


def plot_shape(shape: str, rows: dict[str, Summary], path: Path) -> Path:
    """A PNG of arrivals, backlog and instances over time, one line per controller (first seed)."""
    figure_cls, canvas_cls = matplotlib()
    fig = figure_cls(figsize=(11, 8.5), layout="constrained")
    canvas_cls(fig)
    ax_in, ax_q, ax_n = fig.subplots(3, 1, sharex=True)
    first = next(iter(rows.values()))
    ax_in.plot(range(len(first.series.arrivals)), first.series.arrivals, color="0.3", lw=0.8)
    ax_in.set_ylabel("arrivals / s")
    ax_in.set_title(f"{shape}: first seed of each controller", loc="left")
    for name, s in rows.items():
        xs = range(len(s.series.backlog))
        ax_q.plot(xs, s.series.backlog, lw=1.0, label=name)
        ax_n.plot(xs, s.series.instances, lw=1.0, label=name, drawstyle="steps-post")
    ax_q.set_yscale("symlog", linthresh=10)
    ax_q.set_ylabel("backlog (ready + delayed)")
    ax_n.set_ylabel("instances")
    ax_n.set_xlabel("t (s)")
    ax_n.legend(loc="upper right", fontsize="small", ncols=min(4, len(rows)))
    for ax in (ax_in, ax_q, ax_n):
        ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _file_name(shape: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", shape) or "shape"


def write_report(comparison: Comparison, out_dir: Path, params: SimParams,
                 floors: dict[str, Floor] | None = None, plots: bool = True,
                 title: str = "swell sim") -> list[Path]:
    """``tables.md`` and a ``<shape>.png`` per shape in ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if plots:
        written += [plot_shape(shape, rows, out_dir / f"{_file_name(shape)}.png")
                    for shape, rows in comparison.items()]
    md = out_dir / "tables.md"
    md.write_text(markdown(comparison, params, floors, title), encoding="utf-8")
    return [md, *written]


def run_with_progress(console: Console, shapes: Sequence[Shape | str], controllers: Sequence[str],
                      seeds: int, params: SimParams, processes: int | None = None) -> Comparison:
    """``compare`` with a rich progress bar."""
    total = len(shapes) * len(controllers) * seeds
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("simulating", total=total)

        def tick(r: SimResult) -> None:
            progress.update(task, advance=1, description=f"{r.shape} / {r.controller}")

        return compare(shapes, controllers, seeds, params, processes=processes, on_result=tick)
