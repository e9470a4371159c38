"""Traces through the OpenTelemetry API, following its messaging semantic conventions.

Tracing is off unless a ``TracerProvider`` is set in the process (``opentelemetry.trace.
set_tracer_provider``, by the user's own setup or by ``swell run --trace``) or given to ``use``.
Off, it costs one module attribute read per event (``ON``), and OpenTelemetry is never imported.

What swell makes, per event (``{destination}`` is a queue, topic or stream name):

- ``send {destination}`` (PRODUCER): a publish from a handler or a client, the event's creation
  context; events stored in a batch (a source's, a saga's wake-ups) get a ``create
  {destination}`` span each instead. Its context travels in the event's ``traceparent`` (and a
  ``tracestate`` extension attribute when there is one), so a trace follows the event across
  queues, topics, streams and retries;
- ``receive {queue}`` (CLIENT): one lease of a batch, linked to each event's creation context;
- ``process {destination}`` (CONSUMER): one attempt, a child of the creation context and linked to
  it; a failed one carries ``error.type``. Spans the handler makes are its children, and what it
  publishes continues the trace from it;
- ``settle {destination}`` (CLIENT): what became of the attempt (``ack``, ``retry``, ``throttle``,
  ``dead_letter``), a child of ``process``;
- saga steps and compensations: ``saga {saga}.{step}`` (INTERNAL) under the process span of the
  saga's message.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from opentelemetry.context import Context as OtelContext
    from opentelemetry.trace import Span, SpanContext, Tracer, TracerProvider

__all__ = ["ON", "TraceFields", "detect", "process_span", "producer_span", "receive_span",
           "settle_span", "step_span", "traceparent_of", "use"]

ON = False
"""Whether spans are made (read per event: keep it a plain module attribute)."""
_tracer: Tracer | None = None
SYSTEM = "swell"


class TraceFields(msgspec.Struct):
    """The few attributes of an event its spans need, read from its body without the rest."""

    id: str = ""
    traceparent: str | None = None
    correlationid: str | None = None
    tracestate: str | None = None


_fields = msgspec.json.Decoder(TraceFields).decode


def fields_of(body: bytes) -> TraceFields:
    """An event body's trace fields; empty ones for a body that does not decode (it will be
    dead-lettered as malformed: its span still shows the attempt)."""
    try:
        return _fields(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return TraceFields()


def use(provider: TracerProvider | None) -> None:
    """Make spans with ``provider`` (``None``: stop). ``detect`` does this for the provider set
    globally; tests and embedders may pass one of their own."""
    global ON, _tracer
    if provider is None:
        ON, _tracer = False, None
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("swell")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        own = None
    _tracer = provider.get_tracer("swell", own)
    ON = True


def detect() -> bool:
    """Turn tracing on if the process has an OpenTelemetry ``TracerProvider`` set (a user's own
    setup, or ``swell run --trace``); whether it is on. Without OpenTelemetry imported by anyone,
    nothing is imported here."""
    if ON:
        return True
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return False
    provider = api.get_tracer_provider()
    if isinstance(provider, api.ProxyTracerProvider | api.NoOpTracerProvider):
        return False
    use(provider)
    return True


_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE = re.compile(r"[\x20-\x7e]{1,512}")


def incoming(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The W3C trace context (``traceparent``, ``tracestate``) of an HTTP request (header names in
    lowercase); ``None`` for what is absent or not well formed (a caller's bad header never fails
    its request)."""
    parent = headers.get("traceparent", "").strip()
    if not _TRACEPARENT.fullmatch(parent):
        return None, None
    state = headers.get("tracestate", "").strip()
    return parent, state if state and _TRACESTATE.fullmatch(state) else None


# -- context in and out of events ----------------------------------------------------------------
def _context(traceparent: str | None, tracestate: str | None = None) -> OtelContext | None:
    """The OpenTelemetry context an event's ``traceparent`` names (``None``: none, or not valid)."""
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    ctx = TraceContextTextMapPropagator().extract(carrier)
    from opentelemetry import trace

    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def _span_context(ctx: OtelContext | None) -> SpanContext | None:
    if ctx is None:
        return None
    from opentelemetry import trace

    return trace.get_current_span(ctx).get_span_context()


def traceparent_of(span: Span) -> tuple[str, str | None]:
    """The W3C ``traceparent`` (and ``tracestate``, if any) that carries ``span`` onward."""
    sc = span.get_span_context()
    header = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"
    state = sc.trace_state.to_header() if sc.trace_state else None
    return header, state or None


def _base(operation: str, kind: str, destination: str) -> dict[str, Any]:
    return {"messaging.system": SYSTEM, "messaging.operation.name": operation,
            "messaging.operation.type": kind, "messaging.destination.name": destination}


# -- spans ----------------------------------------------------------------------------------------
@contextmanager
def producer_span(operation: str, destination: str, *, parent: str | None = None,
                  parent_state: str | None = None, message_id: str | None = None,
                  correlation_id: str | None = None) -> Iterator[Span]:
    """A PRODUCER span (``send``, or ``create`` for one event of a batch): the event's creation
    context. Its parent is ``parent`` (a ``traceparent``: the handler's process span, an HTTP
    request's) when given, else the current span."""
    from opentelemetry.trace import SpanKind

    assert _tracer is not None
    attrs = _base(operation, "send" if operation == "send" else "create", destination)
    if message_id:
        attrs["messaging.message.id"] = message_id
    if correlation_id:
        attrs["messaging.message.conversation_id"] = correlation_id
    with _tracer.start_as_current_span(f"{operation} {destination}", context=_context(
            parent, parent_state), kind=SpanKind.PRODUCER, attributes=attrs) as span:
        yield span


def receive_span(destination: str, bodies: Sequence[bytes], started_ns: int,
                 function: str | None = None) -> None:
    """A CLIENT span for one lease of ``bodies`` (begun at ``started_ns``), linked to each
    event's creation context."""
    from opentelemetry.trace import Link, SpanKind

    assert _tracer is not None
    links = []
    for body in bodies:
        f = fields_of(body)
        sc = _span_context(_context(f.traceparent, f.tracestate))
        if sc is not None:
            links.append(Link(sc, {"messaging.message.id": f.id}))
    attrs = _base("receive", "receive", destination)
    attrs["messaging.batch.message_count"] = len(bodies)
    if function:
        attrs["messaging.consumer.group.name"] = function
    span = _tracer.start_span(f"receive {destination}", context=_root(), kind=SpanKind.CLIENT,
                              attributes=attrs, links=links, start_time=started_ns)
    span.end()


def _root() -> OtelContext:
    """A context with no span in it: a receive is no part of whatever ran before it."""
    from opentelemetry.context import Context

    return Context()


class Attempt:
    """The process span of one attempt, as it goes: ``outcome`` records how it ended."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    @property
    def traceparent(self) -> str:
        """What the handler's publishes carry: this attempt's context."""
        return traceparent_of(self.span)[0]

    def outcome(self, kind: str, error: str | None) -> None:
        """How the attempt ended: a failure sets ``error.type`` and the span's error status."""
        if kind in ("ok", "duplicate"):
            return
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("error.type", error_type(kind, error))
        self.span.set_status(Status(StatusCode.ERROR, error or kind))


def error_type(kind: str, error: str | None) -> str:
    """``error.type`` of a failed attempt: the exception's class when the handler raised one
    (its error reads ``ClassName: message``), else the outcome (``timeout``, ``invalid``...)."""
    if kind == "failed" and error:
        head = error.split(":", 1)[0].strip()
        if head.replace(".", "").replace("_", "").isalnum():
            return head
    return kind


@contextmanager
def process_span(destination: str, body: bytes, *, attempt: int, group: str,
                 partition: int | None = None, subscription: str | None = None
                 ) -> Iterator[Attempt]:
    """The CONSUMER span of one attempt at the event in ``body``: a child of its creation
    context, and linked to it (retries are each a span, all linked to the one creation)."""
    from opentelemetry.trace import Link, SpanKind

    assert _tracer is not None
    f = fields_of(body)
    parent = _context(f.traceparent, f.tracestate)
    sc = _span_context(parent)
    attrs = _base("process", "process", destination)
    attrs["messaging.consumer.group.name"] = group
    attrs["messaging.message.delivery_count"] = attempt
    if f.id:  # (an event with no correlation id starts its own conversation: its id)
        attrs["messaging.message.id"] = f.id
        attrs["messaging.message.conversation_id"] = f.correlationid or f.id
    if partition is not None:
        attrs["messaging.destination.partition.id"] = str(partition)
    if subscription is not None:
        attrs["messaging.destination.subscription.name"] = subscription
    with _tracer.start_as_current_span(
            f"process {destination}", context=parent if parent is not None else _root(),
            kind=SpanKind.CONSUMER, attributes=attrs, links=[Link(sc)] if sc is not None else (),
            record_exception=False, set_status_on_exception=False) as span:
        yield Attempt(span)


def settle_span(destination: str, action: str = "settle") -> Span:
    """A CLIENT span for what became of an attempt (``ack``, ``retry``, ``throttle``,
    ``dead_letter``: its ``messaging.operation.name``), a child of the current (process) span;
    the caller ends it once the broker has been told."""
    from opentelemetry.trace import SpanKind

    assert _tracer is not None
    return _tracer.start_span(f"settle {destination}", kind=SpanKind.CLIENT,
                              attributes=_base(action, "settle", destination))


@contextmanager
def step_span(saga: str, saga_id: str, step: str, phase: str, attempt: int) -> Iterator[Span]:
    """An INTERNAL span around one run of a saga's step (``phase``: action or compensation)."""
    assert _tracer is not None
    with _tracer.start_as_current_span(
            f"saga {saga}.{step}", record_exception=False, set_status_on_exception=False,
            attributes={"swell.saga.name": saga, "swell.saga.id": saga_id, "swell.saga.step": step,
                        "swell.saga.phase": phase, "swell.saga.attempt": attempt,
                        "messaging.message.conversation_id": saga_id}) as span:
        yield span


def failed(span: Span, error_kind: str, error: str) -> None:
    """Mark ``span`` failed."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_kind)
    span.set_status(Status(StatusCode.ERROR, error))
