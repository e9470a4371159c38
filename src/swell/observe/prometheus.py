"""``/metrics`` for Prometheus: the same signals the controllers see, so an outside autoscaler
(KEDA's prometheus or metrics-api scaler) can scale on them too.

The server runs on a thread of its own and never touches the Runtime: at scrape time it reads the
latest ``RuntimeSnapshot`` (an immutable value the runtime's loop built) through the function it
was given."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from typing import Any

from swell.core.errors import ConfigError
from swell.runtime.status import RuntimeSnapshot

Latest = Callable[[], RuntimeSnapshot | None]
"""Where the collector reads the latest snapshot (``None``: none yet)."""

log = logging.getLogger("swell.metrics")

#: gauge name, help, how to read it from Signals
_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("queue_depth", "Events ready and waiting.", "depth"),
    ("queue_delayed", "Events waiting out a delay (retry backoff, throttle).", "delayed"),
    ("queue_oldest_age_seconds", "Age of the oldest unfinished event.", "oldest_age_s"),
    ("in_flight", "Events being handled now.", "in_flight"),
    ("arrival_rate", "Events/s arriving (smoothed estimate).", "arrival_rate"),
    ("completion_rate", "Events/s finished (smoothed).", "completion_rate"),
    ("service_time_seconds", "Mean handler time over the last tick.", "service_time_s"),
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


def serve_metrics(latest: Latest, host: str, port: int, *, best_effort: bool = False) -> bool:
    """Serve ``/metrics`` on ``host:port`` in a background thread, from the snapshots ``latest``
    returns (``runtime.status.Snapshots(runtime).latest``, say).

    A port that is taken (or an address that cannot be bound) is a ``ConfigError``: a scraper
    pointed at it would read another process's numbers as this app's. With ``best_effort`` it is
    a warning instead, and the result is ``False``."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=True)
    registry.register(SwellCollector(latest))
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why += " (another process has the port)"
        if not best_effort:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {why}; choose another "
                              "address with --metrics HOST:PORT, turn them off with --metrics "
                              "off, or pass --metrics-best-effort to run without them if the "
                              "port is taken") from None
        log.warning("metrics not served on %s:%d: %s (best effort: running without them)",
                    host, port, why)
        return False
    log.info("metrics on http://%s:%d/metrics", host, port)
    return True
