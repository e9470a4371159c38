"""The simulator: the scaling benchmark's model (BENCH-SCALING.md) on a virtual clock, with the real
controllers.

A run is event-driven and deterministic per seed (``model`` says how); every controller sees the same
arrivals for a seed.

    result = simulate("step", "hpa", seed=0)
    table = compare(["step", "saw"], ["auto", "fixed:8", "kpa"], seeds=10)

The parts: ``params`` (the model's knobs), ``shapes`` (traffic), ``model`` (one run), ``results``
(metrics, series, medians over seeds), ``run`` (``simulate``, ``compare``) and ``floor`` (what no
controller can beat).
"""

from swell.scaling.sim.floor import Floor, fluid_floor
from swell.scaling.sim.model import TokenBucket
from swell.scaling.sim.params import DRAINED, DT_S, SimParams
from swell.scaling.sim.results import Metrics, Series, SimResult, Summary, reversals, summarize
from swell.scaling.sim.run import ControllerSpec, compare, simulate
from swell.scaling.sim.shapes import SHAPES, Shape, parse_shape

__all__ = ["DRAINED", "DT_S", "SHAPES", "ControllerSpec", "Floor", "Metrics", "Series", "Shape", "SimParams",
           "SimResult", "Summary", "TokenBucket", "compare", "fluid_floor", "parse_shape", "reversals",
           "simulate", "summarize"]
