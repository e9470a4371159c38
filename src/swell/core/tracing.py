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
    from contextvars import Token

    from opentelemetry.context import Context as OtelContext
    from opentelemetry.trace import Span, SpanContext, Tracer, TracerProvider

__all__ = [
    "ON",
    "ProcessSpan",
    "TraceFields",
    "detect",
    "failed",
    "incoming",
    "producer_span",
    "receive_span",
    "settle_span",
    "step_span",
    "traceparent_of",
    "use",
]

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
    _bind()
    _tracer = provider.get_tracer("swell", own)
    ON = True


class _Api:
    """The OpenTelemetry names used per event, imported once (``use``), not at each call."""

    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import (
            Link,
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            Status,
            StatusCode,
            TraceFlags,
            TraceState,
        )

        self.Context = context.Context
        self.attach, self.detach = context.attach, context.detach
        self.set_span_in_context = trace.set_span_in_context
        self.Link, self.NonRecordingSpan, self.SpanContext = Link, NonRecordingSpan, SpanContext
        self.SpanKind, self.Status, self.StatusCode = SpanKind, Status, StatusCode
        self.TraceFlags, self.TraceState = TraceFlags, TraceState


_api: _Api


def _bind() -> None:
    global _api
    if "_api" not in globals():
        _api = _Api()


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
# W3C Trace Context: list members key=value, at most 32 (checked here, so that a bad one from an
# event or a request is dropped quietly rather than logged by OpenTelemetry at every use)
_MEMBER = re.compile(r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
                     r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def valid_tracestate(value: str) -> bool:
    """Whether ``value`` is a well-formed W3C ``tracestate`` (1-32 list members)."""
    members = [m.strip(" \t") for m in value.split(",")]
    members = [m for m in members if m]
    return 0 < len(members) <= 32 and all(_MEMBER.fullmatch(m) for m in members)


def incoming(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The W3C trace context (``traceparent``, ``tracestate``) of an HTTP request (header names in
    lowercase); ``None`` for what is absent or not well formed (a caller's bad header never fails
    its request)."""
    parent = headers.get("traceparent", "").strip()
    if not _TRACEPARENT.fullmatch(parent):
        return None, None
    state = headers.get("tracestate", "").strip()
    return parent, state if state and len(state) <= 8192 and valid_tracestate(state) else None


# -- context in and out of events ----------------------------------------------------------------
def _parent(traceparent: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The span an event's ``traceparent`` names (``None``: none, or not well formed: an event
    from another writer never fails its attempt over it)."""
    if not traceparent or len(traceparent) != 55 or not _TRACEPARENT.fullmatch(traceparent):
        return None
    state = None
    if tracestate and valid_tracestate(tracestate):
        state = _api.TraceState.from_header([tracestate])
    return _api.SpanContext(int(traceparent[3:35], 16), int(traceparent[36:52], 16), True,
                            _api.TraceFlags(int(traceparent[53:55], 16)), state)


def _context(sc: SpanContext | None) -> OtelContext:
    """A context whose current span is ``sc`` (none: a new trace)."""
    if sc is None:
        return _api.Context()
    return _api.set_span_in_context(_api.NonRecordingSpan(sc), _api.Context())


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
    request's) when given and well formed, else the current span."""
    assert _tracer is not None
    attrs = _base(operation, "send" if operation == "send" else "create", destination)
    if message_id:
        attrs["messaging.message.id"] = message_id
    if correlation_id:
        attrs["messaging.message.conversation_id"] = correlation_id
    sc = _parent(parent, parent_state)
    with _tracer.start_as_current_span(
            f"{operation} {destination}", context=None if sc is None else _context(sc),
            kind=_api.SpanKind.PRODUCER, attributes=attrs) as span:
        yield span


def receive_span(destination: str, bodies: Sequence[bytes], started_ns: int,
                 function: str | None = None) -> None:
    """A CLIENT span for one lease of ``bodies`` (begun at ``started_ns``), linked to each
    event's creation context; a trace of its own (a receive is no part of what ran before)."""
    assert _tracer is not None
    links = []
    for body in bodies:
        f = fields_of(body)
        sc = _parent(f.traceparent, f.tracestate)
        if sc is not None:
            links.append(_api.Link(sc, {"messaging.message.id": f.id}))
    attrs = _base("receive", "receive", destination)
    attrs["messaging.batch.message_count"] = len(bodies)
    if function:
        attrs["messaging.consumer.group.name"] = function
    _tracer.start_span(f"receive {destination}", context=_api.Context(),
                       kind=_api.SpanKind.CLIENT, attributes=attrs, links=links,
                       start_time=started_ns).end()


class ProcessSpan:
    """The CONSUMER span of one attempt at the event in ``body``, current while it runs: a child
    of the event's creation context, and linked to it (retries are each a span, all linked to the
    one creation). ``outcome`` records how the attempt ended."""

    __slots__ = ("span", "token")

    def __init__(self, destination: str, body: bytes, *, attempt: int, group: str,
                 partition: int | None = None, subscription: str | None = None) -> None:
        assert _tracer is not None
        f = fields_of(body)
        sc = _parent(f.traceparent, f.tracestate)
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
        self.span = _tracer.start_span(
            f"process {destination}", context=_context(sc), kind=_api.SpanKind.CONSUMER,
            attributes=attrs, links=() if sc is None else (_api.Link(sc),))
        self.token: Token[OtelContext] | None = None

    def __enter__(self) -> ProcessSpan:
        self.token = _api.attach(_api.set_span_in_context(self.span))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            _api.detach(self.token)
        self.span.end()

    @property
    def traceparent(self) -> str:
        """What the handler's publishes carry: this attempt's context."""
        return traceparent_of(self.span)[0]

    def outcome(self, kind: str, error: str | None) -> None:
        """How the attempt ended: a failure sets ``error.type`` and the span's error status."""
        if kind not in ("ok", "duplicate"):
            failed(self.span, error_type(kind, error), error or kind)


def error_type(kind: str, error: str | None) -> str:
    """``error.type`` of a failed attempt: the exception's class when the handler raised one
    (its error reads ``ClassName: message``), else the outcome (``timeout``, ``invalid``...)."""
    if kind == "failed" and error:
        head = error.split(":", 1)[0].strip()
        if head.replace(".", "").replace("_", "").isalnum():
            return head
    return kind


def settle_span(destination: str, action: str = "settle") -> Span:
    """A CLIENT span for what became of an attempt (``ack``, ``retry``, ``throttle``,
    ``dead_letter``: its ``messaging.operation.name``), a child of the current (process) span;
    the caller ends it once the broker has been told."""
    assert _tracer is not None
    return _tracer.start_span(f"settle {destination}", kind=_api.SpanKind.CLIENT,
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


def failed(span: Span, error_type: str, error: str) -> None:
    """Mark ``span`` failed: ``error.type`` and the error status."""
    span.set_attribute("error.type", error_type)
    span.set_status(_api.Status(_api.StatusCode.ERROR, error))
