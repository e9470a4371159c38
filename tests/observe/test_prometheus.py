"""``/metrics`` reads snapshots only: the collector turns the latest ``RuntimeSnapshot`` into
metric families, and ``Snapshots`` has each one built on the runtime's own loop."""

from __future__ import annotations

import asyncio
import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from swell import App
from swell.brokers.memory import MemoryBroker
from swell.observe.prometheus import SwellCollector
from swell.runtime import status
from swell.runtime.runtime import Runtime
from swell.runtime.status import FunctionSnapshot, RuntimeSnapshot, Snapshots
from swell.scaling.signals import Signals


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


async def test_snapshots_are_built_on_the_runtimes_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App("shop")

    @app.function(app.queue("orders"))
    async def charge(order: dict[str, int]) -> None:
        pass

    built_on: list[threading.Thread] = []
    real = status.snapshot_of

    def snapshot_of(rt: Runtime) -> RuntimeSnapshot:
        built_on.append(threading.current_thread())
        return real(rt)

    monkeypatch.setattr(status, "snapshot_of", snapshot_of)
    broker = MemoryBroker()
    rt = Runtime(app, broker)
    await rt.start()
    try:
        snap = await asyncio.to_thread(Snapshots(rt).latest)  # read from another thread
        assert snap is not None and [f.name for f in snap.functions] == ["charge"]
        assert built_on == [threading.current_thread()]
    finally:
        await rt.stop(1.0)
        await broker.close()


def test_a_closed_loop_gives_the_last_snapshot() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    assert Snapshots(object(), loop).latest() is None  # type: ignore[arg-type]
