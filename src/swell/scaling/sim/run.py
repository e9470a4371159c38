"""Runs of controllers on shapes: one (``simulate``), or every controller on every shape for every
seed in worker processes (``compare``)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence

from swell.core.errors import ConfigError
from swell.scaling.base import Controller
from swell.scaling.controllers import parse_controller
from swell.scaling.sim.model import Model
from swell.scaling.sim.params import SimParams
from swell.scaling.sim.results import SimResult, Summary, summarize
from swell.scaling.sim.shapes import Shape, parse_shape

ControllerSpec = str | Callable[[], Controller]


def simulate(shape: Shape | str, controller: ControllerSpec, seed: int = 0,
             params: SimParams | None = None) -> SimResult:
    """One run of ``controller`` (a name for ``parse_controller``, or a factory of a fresh one) on
    ``shape`` (a ``Shape`` or a name for ``parse_shape``) with ``seed``."""
    p = params or SimParams()
    sh = parse_shape(shape)
    if isinstance(controller, str):
        ctl, label = parse_controller(controller, p.max_instances), controller
    else:
        ctl = controller()
        label = repr(ctl)
    metrics, series = Model(sh, ctl, seed, p).run()
    return SimResult(sh.name, label, seed, metrics, series)


def _run_task(task: tuple[Shape, str, int, SimParams]) -> SimResult:
    return simulate(*task)


def compare(shapes: Sequence[Shape | str], controllers: Sequence[str], seeds: int | Sequence[int] = 10,
            params: SimParams | None = None, processes: int | None = None,
            on_result: Callable[[SimResult], None] | None = None) -> dict[str, dict[str, Summary]]:
    """Every controller on every shape for every seed; medians per shape and controller, in the
    order given. ``processes``: worker processes (default: one per CPU; 1 runs here).
    ``on_result`` is called as each run finishes (a progress bar)."""
    p = params or SimParams()
    resolved = [parse_shape(s) for s in shapes]
    names = [s.name for s in resolved]
    if len(set(names)) != len(names):
        raise ConfigError(f"shapes with the same name: {', '.join(names)}")
    for spec in controllers:
        parse_controller(spec, p.max_instances)  # a bad name fails here, not in a worker
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    tasks = [(sh, spec, seed, p) for sh in resolved for seed in seed_list for spec in controllers]
    results: dict[tuple[str, str], list[SimResult]] = {}

    def collect(r: SimResult) -> None:
        results.setdefault((r.shape, r.controller), []).append(r)
        if on_result is not None:
            on_result(r)

    workers = processes or multiprocessing.cpu_count()
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            collect(_run_task(task))
    else:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else None)
        with ctx.Pool(min(workers, len(tasks))) as pool:
            for r in pool.imap_unordered(_run_task, tasks):
                collect(r)
    return {sh.name: {spec: summarize(results[sh.name, spec]) for spec in controllers}
            for sh in resolved}

