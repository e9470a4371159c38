"""``swell run --trace otlp|console`` (or ``SWELL_TRACE``): an OpenTelemetry SDK set up for the
process, so a user with no tracing code of their own gets traces.

``otlp`` exports over OTLP/HTTP to what the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) names, ``http://localhost:4318`` by default (a collector,
Jaeger, Tempo...); ``console`` prints each span as JSON on stderr. The service is named after the
app unless ``OTEL_SERVICE_NAME`` says otherwise; ``OTEL_TRACES_SAMPLER`` and its argument choose
the sampling as usual. A user who sets a ``TracerProvider`` up in their own code needs none of
this: swell uses the one set.
"""

from __future__ import annotations

import os
import sys

from swell.core import tracing
from swell.core.errors import ConfigError, MissingDependency

__all__ = ["EXPORTERS", "setup"]

EXPORTERS = ("otlp", "console")


def setup(exporter: str, service: str) -> None:
    """Set a global ``TracerProvider`` exporting with ``exporter``, and turn swell's spans on.
    Spans are flushed when the process exits."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"--trace must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError as exc:
        raise MissingDependency("the OpenTelemetry SDK (for --trace)", "otel") from exc
    out: SpanExporter
    if exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise MissingDependency("the OTLP exporter (for --trace otlp)", "otel") from exc
        out = OTLPSpanExporter()
    else:
        out = ConsoleSpanExporter(out=sys.stderr)
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(out))
    trace.set_tracer_provider(provider)
    tracing.detect()
