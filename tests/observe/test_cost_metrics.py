"""Cost on ``/metrics``: the snapshot's cost per function, labelled with its workload, through the
collector ``swell run`` serves."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from swell.core.cost import Cost
from swell.observe.prometheus import SwellCollector
from swell.runtime.status import FunctionSnapshot, RuntimeSnapshot


def _text(latest: RuntimeSnapshot | None) -> str:
    registry = CollectorRegistry()
    registry.register(SwellCollector(lambda: latest))
    return generate_latest(registry).decode()


def _fn(name: str, cost: Cost | None) -> FunctionSnapshot:
    return FunctionSnapshot(name=name, queue="orders", mode="process", desired=1, reason="r",
                            share=1, in_flight=0, succeeded=0, dead_lettered=0, signals=None,
                            cost=cost)


def test_cost_families_come_from_the_snapshot() -> None:
    cost = Cost(workload="checkout", mode="process", unit_s=12.5, invocations=40, operations=80,
                events=40, dollars=0.002, dollars_per_h=0.75, budget_per_h=2.0)
    out = _text(RuntimeSnapshot(app="shop", node="n1",
                                functions=(_fn("charge", cost), _fn("old", None))))
    labels = '{app="shop",function="charge",mode="process",workload="checkout"}'
    for line in (f"swell_instance_seconds_total{labels} 12.5", f"swell_invocations_total{labels} 40.0",
                 f"swell_broker_operations_total{labels} 80.0", f"swell_cost_dollars_total{labels} 0.002",
                 f"swell_cost_dollars_per_hour{labels} 0.75", f"swell_budget_dollars_per_hour{labels} 2.0",
                 "# TYPE swell_cost_dollars_total counter"):
        assert line in out, (line, out)
    assert 'function="old"' not in out.split("swell_instance_seconds")[1]


def test_no_snapshot_is_no_cost_samples() -> None:
    out = _text(None)
    assert "# TYPE swell_cost_dollars_total counter" in out
    assert "swell_cost_dollars_total{" not in out
