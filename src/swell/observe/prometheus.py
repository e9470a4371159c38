"""``/metrics`` for Prometheus: the same signals the controllers see, so an outside autoscaler
(KEDA's prometheus or metrics-api scaler) can scale on them too.

Served by the HTTP server of ``swell run`` (``swell.web``) on the runtime's loop: at scrape time
the collector reads a ``RuntimeSnapshot`` (an immutable value built there) through the function it
was given.

Every family is in docs/metrics.md, with its type, labels and unit; a test
(tests/observe/test_prometheus_exposition.py) holds that table, this exposition and the Grafana
dashboard under deploy/grafana/ to each other. Names follow Prometheus's conventions: ``swell_``,
base units as suffixes (``_seconds``, ``_bytes``, ``_ratio`` for 0..1), counters exposed with
``_total``. Arrivals and completions per second are gauges, not counters to ``rate()``: they are
the controller's own smoothed estimates (arrivals are counted nowhere, but inferred from the
queue's growth plus what finished), served so that an outside autoscaler scales on the number swell
does; ``_per_second`` names their unit. The families read from ``Signals`` are the function's over
every node (each node serves the same); events acked and dead-lettered, and the sources', are this
node's own."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from swell.observe.cost import cost_families
from swell.observe.slo import slo_families
from swell.runtime.status import RuntimeSnapshot
from swell.triggers.base import SourceStatus

Latest = Callable[[], RuntimeSnapshot | None]
"""Where the collector reads the latest snapshot (``None``: none yet)."""

log = logging.getLogger("swell.metrics")

#: gauge name, help, how to read it from Signals
_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("queue_depth", "Events ready and waiting.", "depth"),
    ("queue_delayed", "Events waiting out a delay (retry backoff, throttle).", "delayed"),
    ("queue_oldest_age_seconds", "Age of the oldest unfinished event.", "oldest_age_s"),
    ("in_flight", "Events being handled now.", "in_flight"),
    ("arrivals_per_second", "Events/s arriving (smoothed estimate).", "arrival_rate"),
    ("completions_per_second", "Events/s finished (smoothed).", "completion_rate"),
    ("service_time_mean_seconds", "Mean handler time over the last tick.", "service_time_s"),
    ("service_time_p50_seconds", "Median handler time (recent).", "service_p50_s"),
    ("service_time_p99_seconds", "99th percentile handler time (recent).", "service_p99_s"),
    ("error_ratio", "Failed attempts / attempts (smoothed).", "error_rate"),
    ("throttle_ratio", "Throttled attempts / attempts (smoothed).", "throttle_rate"),
    ("instances_starting", "Instances cold-starting.", "starting"),
    ("instances_ready", "Instances ready (idle or busy).", "ready"),
    ("instances_busy", "Instances handling an event.", "busy"),
)
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("attempts", "Handler attempts that ended.", "attempts"),
    ("errors", "Failed, timed-out and crashed attempts.", "errors"),
    ("throttles", "Throttled attempts.", "throttles"),
    ("cold_starts", "Instances started.", "cold_starts"),
)


class SwellCollector:
    """A prometheus-client collector over the snapshots of a running Runtime."""

    def __init__(self, latest: Latest) -> None:
        self.latest = latest

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["app", "function", "queue"]
        snapshot = self.latest()
        app, functions = (snapshot.app, snapshot.functions) if snapshot is not None else ("", ())
        desired = GaugeMetricFamily("swell_desired_units", "The controller's decision.",
                                    labels=labels)
        done = CounterMetricFamily("swell_events_succeeded", "Events acked.", labels=labels)
        dead = CounterMetricFamily("swell_events_dead_lettered", "Events dead-lettered.",
                                   labels=labels)
        families: list[tuple[GaugeMetricFamily | CounterMetricFamily, str]] = [
            (GaugeMetricFamily(f"swell_{n}", h, labels=labels), a) for n, h, a in _GAUGES]
        families += [(CounterMetricFamily(f"swell_{n}", h, labels=labels), a)
                     for n, h, a in _COUNTERS]
        for fn in functions:
            values = [app, fn.name, fn.queue]
            desired.add_metric(values, fn.desired)
            done.add_metric(values, fn.succeeded)
            dead.add_metric(values, fn.dead_lettered)
            s = fn.signals
            if s is None:
                continue
            for family, attr in families:
                value = getattr(s, attr)
                if value is not None:
                    family.add_metric(values, float(value))
        yield desired
        yield done
        yield dead
        for family, _ in families:
            yield family
        yield from _sources(app, () if snapshot is None else snapshot.sources)
        # further families (each in docs/metrics.md) follow here
        yield from cost_families(snapshot)
        yield from slo_families(snapshot)


def _sources(app: str, sources: Iterable[SourceStatus]) -> Iterator[Any]:
    """The trigger sources' families: what each received, stored, refused (by reason), and how
    far behind it is."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = ["app", "source", "kind", "target"]
    counters = [(CounterMetricFamily(f"swell_source_{n}", h, labels=labels), n) for n, h in (
        ("received", "Occurrences a source saw (requests, firings, files)."),
        ("emitted", "Events a source stored on its channel."),
        ("duplicates", "Occurrences already stored once (retried deliveries)."),
        ("errors", "Failures to store (the broker down): retried by the sender or the source."))]
    rejected = CounterMetricFamily("swell_source_rejected", "Occurrences refused, by reason.",
                                   labels=[*labels, "reason"])
    lag = GaugeMetricFamily("swell_source_lag_seconds", "How far behind a source is (a "
                            "schedule's lateness, the oldest pending file).", labels=labels)
    pending = GaugeMetricFamily("swell_source_pending", "Occurrences seen, not yet stored.",
                                labels=labels)
    lag_bytes = GaugeMetricFamily("swell_source_lag_bytes", "How far behind a change stream is "
                                  "in bytes of the database's log (PostgreSQL: the server's "
                                  "current WAL position less the slot's).", labels=labels)
    for src in sources:
        values = [app, src.source, src.kind, src.target]
        for family, attr in counters:
            family.add_metric(values, float(getattr(src, attr)))
        for reason, n in sorted(src.rejected.items()):
            rejected.add_metric([*values, reason], float(n))
        if src.lag_s is not None:
            lag.add_metric(values, src.lag_s)
        pending.add_metric(values, float(src.pending))
        behind = src.detail.get("lag_bytes")
        if isinstance(behind, int | float) and not isinstance(behind, bool):
            lag_bytes.add_metric(values, float(behind))
    for family, _ in counters:
        yield family
    yield from (rejected, lag, pending, lag_bytes)


def metrics_app(latest: Latest) -> Any:
    """prometheus-client's ASGI app over the snapshots ``latest`` returns (the HTTP server of
    ``swell run`` mounts it at ``/metrics``)."""
    from prometheus_client import CollectorRegistry, make_asgi_app

    registry = CollectorRegistry(auto_describe=True)
    registry.register(SwellCollector(latest))
    return make_asgi_app(registry)
