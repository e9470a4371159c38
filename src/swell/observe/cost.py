"""Cost on ``/metrics``: what each function ran and what it cost, from a ``RuntimeSnapshot``.

The counters are this node's since it started (Prometheus sums nodes and takes rates); each
carries the function's ``workload`` tag, so ``sum by (workload) (rate(swell_cost_dollars_total[5m]))
* 3600`` is a workload's spend per hour.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from swell.runtime.status import RuntimeSnapshot

__all__ = ["cost_families"]

#: counter name (``_total`` added by the exposition), help, unit, the ``Cost`` field it reads
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("swell_instance_seconds", "Unit-seconds held: inline slots, or process instances from their "
     "start to their reap.", "unit_s"),
    ("swell_invocations", "Handler attempts that ended (what is priced per invocation).",
     "invocations"),
    ("swell_broker_operations", "Broker operations on the function's events: receives, the acks, "
     "releases and dead letters that settled them, and the events its handlers sent.",
     "operations"),
    ("swell_cost_dollars", "What the function ran, priced by [tool.swell.cost].", "dollars"),
)


def cost_families(snapshot: RuntimeSnapshot | None) -> Iterator[Any]:
    """The cost families of ``snapshot`` (empty families before the first)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = ["app", "function", "workload", "mode"]
    counters = [(CounterMetricFamily(name, text, labels=labels), attr)
                for name, text, attr in _COUNTERS]
    rate = GaugeMetricFamily("swell_cost_dollars_per_hour", "Spend per hour at the recent rate "
                             "(the last minute).", labels=labels)
    budget = GaugeMetricFamily("swell_budget_dollars_per_hour", "The function's budget= (what "
                               "caps its Auto controller).", labels=labels)
    for fn in () if snapshot is None else snapshot.functions:
        c = fn.cost
        if c is None:
            continue
        values = [snapshot.app if snapshot else "", fn.name, c.workload, c.mode]
        for family, attr in counters:
            family.add_metric(values, float(getattr(c, attr)))
        rate.add_metric(values, c.dollars_per_h)
        if c.budget_per_h is not None:
            budget.add_metric(values, c.budget_per_h)
    for family, _ in counters:
        yield family
    yield rate
    yield budget
