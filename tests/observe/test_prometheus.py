"""``/metrics`` reads snapshots only: the collector turns the latest ``RuntimeSnapshot`` into
metric families (a runtime's functions, and its trigger sources)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from swell import App
from swell.brokers.memory import MemoryBroker
from swell.observe.prometheus import SwellCollector
from swell.runtime import status
from swell.runtime.runtime import Runtime
from swell.runtime.status import FunctionSnapshot, RuntimeSnapshot
from swell.scaling.signals import Signals
from swell.triggers.base import SourceStatus


def text(latest: RuntimeSnapshot | None) -> str:
    registry = CollectorRegistry()
    registry.register(SwellCollector(lambda: latest))
    return generate_latest(registry).decode()


def test_metrics_come_from_the_snapshot() -> None:
    fn = FunctionSnapshot(name="charge", queue="orders", mode="inline", desired=3, reason="r",
                          share=3, in_flight=2, succeeded=7, dead_lettered=1,
                          signals=Signals(t=0.0, depth=5, in_flight=2, service_p99_s=None))
    out = text(RuntimeSnapshot(app="shop", node="n1", functions=(fn,)))
    labels = '{app="shop",function="charge",queue="orders"}'
    assert f"swell_desired_units{labels} 3.0" in out
    assert f"swell_events_succeeded_total{labels} 7.0" in out
    assert f"swell_queue_depth{labels} 5.0" in out
    assert "swell_service_time_p99_seconds{" not in out  # unknown: left out


def test_no_snapshot_yet_is_no_samples() -> None:
    assert "swell_desired_units{" not in text(None)


async def test_a_runtimes_snapshot_holds_its_functions_and_sources() -> None:
    app = App("shop")

    @app.function(app.queue("orders"))
    async def charge(order: dict[str, int]) -> None:
        pass

    app.webhook("hook", path="/hook", to="orders")
    broker = MemoryBroker()
    rt = Runtime(app, broker)
    await rt.start()
    try:
        snap = status.snapshot_of(rt)
        assert [f.name for f in snap.functions] == ["charge"]
        assert [(s.source, s.kind, s.target) for s in snap.sources] == [("hook", "webhook",
                                                                         "orders")]
        out = text(snap)
        assert 'swell_source_received_total{app="shop",kind="webhook",source="hook",' \
               'target="orders"} 0.0' in out
    finally:
        await rt.stop(1.0)
        await broker.close()


def test_a_change_stream_says_how_many_bytes_behind_it_is() -> None:
    def source(name: str, detail: dict[str, object]) -> SourceStatus:
        return SourceStatus(app="shop", source=name, kind="pg_changes", node="n1", target="cdc",
                            received=3, emitted=3, duplicates=0, errors=0, rejected={},
                            lag_s=0.5, pending=2, last_error=None, detail=detail, at=0.0)

    snap = RuntimeSnapshot(app="shop", node="n1", functions=(), sources=(
        source("pg", {"lag_bytes": 4096}), source("other", {"lag_bytes": None})))
    out = text(snap)
    assert 'swell_source_lag_bytes{app="shop",kind="pg_changes",source="pg",target="cdc"} ' \
           '4096.0' in out
    assert 'swell_source_lag_bytes{app="shop",kind="pg_changes",source="other"' not in out
    assert 'swell_source_pending{app="shop",kind="pg_changes",source="pg",target="cdc"} 2.0' in out
