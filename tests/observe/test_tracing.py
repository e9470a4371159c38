"""One event's trace across every hop: a webhook, a queue function that fails once and retries,
its publish to a topic, two subscriptions, a stream's consumer group and a saga step; spans
exported to OpenTelemetry's in-memory exporter, checked for the messaging conventions' attributes,
their parents and their links."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from support.eventually import until
from support.running import running
from support.swellprocs import Swell, wait_for
from swell import App, Context, Retry
from swell.brokers.base import Message
from swell.core import logs, tracing
from swell.patterns.sagas import SagaContext
from swell.triggers.webhook import Request, Webhook

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER = f"00-{CALLER_TRACE}-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)


def traced_app(done: asyncio.Event, handled: list[str]) -> App:
    app = App("traced")
    orders = app.queue("orders", visibility_timeout=5)
    receipts = app.topic("receipts")
    mail = receipts.subscribe("mail")
    audit = receipts.subscribe("audit")
    ledger = app.stream("ledger", partitions=2)
    book = app.saga("book", step_timeout="5s")
    app.webhook("in", path="/in", to=orders)

    @app.function(orders, retry=Retry(attempts=3, backoff=0.01))
    async def charge(order: dict[str, Any], ctx: Context) -> None:
        if ctx.attempt == 1:
            raise ValueError("card declined, once")
        await ctx.publish(receipts, order, subject="paid")

    @app.function(mail)
    async def send_mail(order: dict[str, Any]) -> None:
        handled.append("mail")

    @app.function(audit)
    async def record(order: dict[str, Any], ctx: Context) -> None:
        await ctx.publish(ledger, order, key=order["id"])

    @app.function(ledger.group("books"))
    async def books(order: dict[str, Any]) -> None:
        await book.start(order, id=order["id"])

    @book.step()
    async def reserve(order: dict[str, Any], ctx: SagaContext) -> dict[str, str]:
        done.set()
        return {"hold": order["id"]}

    return app


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def check_messaging(span: ReadableSpan, operation: str, kind: str, destination: str) -> None:
    attrs = span.attributes or {}
    assert attrs["messaging.system"] == "swell"
    assert attrs["messaging.operation.name"] == operation
    assert attrs["messaging.operation.type"] == kind
    assert attrs["messaging.destination.name"] == destination


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


async def test_one_events_trace_across_every_hop(tmp_path: Path, spans: InMemorySpanExporter) -> None:
    done, handled = asyncio.Event(), list[str]()
    app = traced_app(done, handled)
    async with running(app, f"sqlite:///{tmp_path / 'swell.db'}") as rt:
        hook = app.sources["in"]
        assert isinstance(hook, Webhook)
        await until(lambda: hook.admit() is None, "the webhook to start")
        reply = await hook.accept(Request(
            {"content-type": "application/json", "traceparent": CALLER},
            json.dumps({"id": "o-1", "amount": 12}).encode()))
        assert reply.status == 202, reply
        await asyncio.wait_for(done.wait(), 20)
        await until(lambda: handled == ["mail"])
        assert rt.running
    got = spans.get_finished_spans()
    trace_ids = {s.context.trace_id for s in got if not s.name.startswith("receive ")}
    assert trace_ids == {int(CALLER_TRACE, 16)}, "every hop is one trace, the caller's"

    # the webhook's event: created as a child of the caller's span
    created = one(got, "create orders")
    assert created.kind is SpanKind.PRODUCER and parent_of(created) == int(CALLER[36:52], 16)
    check_messaging(created, "create", "create", "orders")
    event_id = (created.attributes or {})["messaging.message.id"]

    # two attempts at it, each a child of its creation and linked to it; the first failed
    attempts = sorted(by_name(got, "process orders"), key=lambda s: s.start_time or 0)
    assert len(attempts) == 2
    for n, span in enumerate(attempts, 1):
        assert span.kind is SpanKind.CONSUMER
        check_messaging(span, "process", "process", "orders")
        attrs = span.attributes or {}
        assert attrs["messaging.message.id"] == event_id
        assert attrs["messaging.message.conversation_id"] == event_id  # its own correlation id
        assert attrs["messaging.consumer.group.name"] == "charge"
        assert attrs["messaging.message.delivery_count"] == n
        assert parent_of(span) == created.context.span_id
        assert [link.context.span_id for link in span.links] == [created.context.span_id]
    assert (attempts[0].attributes or {})["error.type"] == "ValueError"
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert "error.type" not in (attempts[1].attributes or {})
    settles = {parent_of(s): str((s.attributes or {})["messaging.operation.name"])
               for s in by_name(got, "settle orders")}
    assert settles == {attempts[0].context.span_id: "retry", attempts[1].context.span_id: "ack"}
    for s in by_name(got, "settle orders"):
        assert s.kind is SpanKind.CLIENT and (s.attributes or {})["messaging.operation.type"] == "settle"

    # the retry's publish to the topic: a send span under the second attempt
    sent = one(got, "send receipts")
    assert sent.kind is SpanKind.PRODUCER and parent_of(sent) == attempts[1].context.span_id
    check_messaging(sent, "send", "send", "receipts")
    assert (sent.attributes or {})["messaging.message.conversation_id"] == event_id

    # both subscriptions process it, each a child of that send
    subs = by_name(got, "process receipts")
    assert sorted(str((s.attributes or {})["messaging.destination.subscription.name"]) for s in subs) \
        == ["audit", "mail"]
    for s in subs:
        assert parent_of(s) == sent.context.span_id
        assert [link.context.span_id for link in s.links] == [sent.context.span_id]
    audit = next(s for s in subs if (s.attributes or {})["messaging.destination.subscription.name"]
                 == "audit")

    # the audit's append to the stream, and the consumer group's attempt at it
    appended = one(got, "send ledger")
    assert parent_of(appended) == audit.context.span_id
    grouped = one(got, "process ledger")
    attrs = grouped.attributes or {}
    assert attrs["messaging.consumer.group.name"] == "books"
    assert attrs["messaging.destination.partition.id"] in ("0", "1")
    assert parent_of(grouped) == appended.context.span_id
    assert [link.context.span_id for link in grouped.links] == [appended.context.span_id]
    assert one(got, "settle ledger").parent is not None

    # the saga: started from the group's handler, its message processed, its step run under it
    wake = one(got, "create saga.book")
    assert parent_of(wake) == grouped.context.span_id
    moved = by_name(got, "process saga.book")
    assert moved and all(parent_of(s) == wake.context.span_id for s in moved[:1])
    step = one(got, "saga book.reserve")
    assert step.kind is SpanKind.INTERNAL
    assert (step.attributes or {})["swell.saga.step"] == "reserve"
    assert (step.attributes or {})["swell.saga.phase"] == "action"
    assert parent_of(step) in {s.context.span_id for s in moved}

    # receives: a batch span each, linked to the creation contexts of what they leased
    receives = by_name(got, "receive orders")
    assert receives and all(s.kind is SpanKind.CLIENT for s in receives)
    linked = {link.context.span_id for s in receives for link in s.links}
    assert created.context.span_id in linked


async def test_tracing_off_makes_no_spans(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    tracing.use(None)  # on, then off: nothing may still hold the tracer
    app = App("quiet")
    q = app.queue("q")
    seen: list[tuple[str | None, Any]] = []

    @app.function(q)
    async def handle(data: dict[str, Any], ctx: Context) -> None:
        seen.append((ctx.event.traceparent, ctx.event.extensions.get("tracestate")))
        if data["n"] == 1:
            await ctx.publish(q, {"n": 2})

    async with running(app, f"sqlite:///{tmp_path / 'swell.db'}"):
        await app.publish(q, {"n": 1}, traceparent=CALLER, tracestate="vendor=abc")
        await until(lambda: len(seen) == 2)
    assert seen == [(CALLER, "vendor=abc")] * 2  # carried on untouched, hop after hop
    assert exporter.get_finished_spans() == ()


async def test_a_malformed_trace_context_never_fails_an_attempt(
        tmp_path: Path, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture) -> None:
    app = App("odd")
    q = app.queue("q")
    seen: list[int] = []

    @app.function(q)
    async def handle(data: dict[str, int]) -> None:
        seen.append(data["n"])

    bad = [("garbage", None), (CALLER.upper(), None), (f"00-{'0' * 32}-b7ad6b7169203331-01", None),
           (CALLER, "Not A=valid,,state"), ("ff" + CALLER[2:], "x" * 600)]
    with caplog.at_level(logging.WARNING):
        async with running(app, f"sqlite:///{tmp_path / 'swell.db'}"):
            for n, (parent, state) in enumerate(bad):
                await app.publish(q, {"n": n}, traceparent=parent, tracestate=state)
            await until(lambda: sorted(seen) == list(range(len(bad))))
    process = by_name(spans.get_finished_spans(), "process q")
    assert len(process) == len(bad) and all(s.status.status_code is not StatusCode.ERROR
                                             for s in process)
    # each came as a child of the client's send span, whatever it carried: a bad parent is
    # never taken, a bad tracestate is dropped quietly
    sends = {s.context.span_id for s in by_name(spans.get_finished_spans(), "send q")}
    assert all(parent_of(s) in sends for s in process)
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]


async def test_json_logs_name_the_attempt(tmp_path: Path, spans: InMemorySpanExporter) -> None:
    app = App("logged")
    q = app.queue("q")

    @app.function(q, retry=Retry(attempts=2, backoff=0.01))
    async def handle(data: dict[str, Any], ctx: Context) -> None:
        logging.getLogger("user.code").info("charging %s", data["id"])
        if ctx.attempt == 1:
            raise RuntimeError("once")

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())  # formats as each line is logged, in its context
    watched = [logging.getLogger(n) for n in ("user.code", "swell.executor", "swell.dispatcher")]
    for logger in watched:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        async with running(app, f"sqlite:///{tmp_path / 'swell.db'}") as rt:
            event_id = await app.publish(q, {"id": "o-9"}, correlationid="cart-7")
            await until(lambda: out.getvalue().count("charging o-9") == 2)
            await rt.broker.send("q", [Message(body=b"not an event")])  # malformed, after it
            await until(lambda: "dead-lettered" in out.getvalue())
    finally:
        for logger in watched:
            logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    process = sorted((s for s in by_name(spans.get_finished_spans(), "process q")
                      if (s.attributes or {}).get("messaging.message.id") == event_id),
                     key=lambda s: s.start_time or 0)
    assert len(process) == 2
    user = [ln for ln in lines if ln["logger"] == "user.code"]
    assert [(ln["message"], ln["attempt"]) for ln in user] == [("charging o-9", 1), ("charging o-9", 2)]
    for ln in user:
        assert ln["function"] == "handle" and ln["event_id"] == event_id
        assert ln["correlation_id"] == "cart-7"
        assert ln["trace_id"] == f"{process[0].context.trace_id:032x}"
    failure = next(ln for ln in lines if ln["logger"] == "swell.executor")
    assert failure["attempt"] == 1 and failure["event_id"] == event_id
    assert "RuntimeError: once" in failure["exception"]  # the handler's traceback, in the line
    dead = next(ln for ln in lines if "dead-lettered" in ln["message"])
    assert "event_id" not in dead  # not named after the event before it


APP = '''
import logging
from swell import App

app = App("run_traced")
jobs = app.queue("jobs")

@app.function(jobs)
async def handle(job: dict) -> None:
    logging.getLogger("user.code").info("handled %s", job["id"])
'''


@dataclass(frozen=True)
class Traced:
    """``swell run --trace console --log-format json``, said through the environment."""

    def env(self, sink: Path) -> dict[str, str]:
        return {"SWELL_TRACE": "console", "SWELL_LOG_FORMAT": "json"}


def test_swell_run_exports_spans_and_json_logs(tmp_path: Path) -> None:
    app = tmp_path / "run_traced.py"
    app.write_text(APP)
    procs = Swell(tmp_path)
    try:
        proc = procs.start(Traced(), app=app)
        procs.wait_ready(proc)
        procs.send(3)
        wait_for(lambda: procs.log(proc).count("handled ") == 3, 20, "three events handled")
        assert procs.terminate(proc) == 0  # spans still batched are exported as it exits
        out = procs.log(proc)
    finally:
        procs.cleanup()
    lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith('{"time"')]
    handled = [ln for ln in lines if ln["logger"] == "user.code"]
    assert len(handled) == 3 and all(ln["function"] == "handle" and ln["attempt"] == 1
                                     for ln in handled)
    spans = [json.loads(s) for s in re.findall(r"^\{\n.*?^\}$", out, re.S | re.M)]
    process = [s for s in spans if s["name"] == "process jobs"]
    assert len(process) == 3
    assert {s["context"]["trace_id"][2:] for s in process} == {ln["trace_id"] for ln in handled}
    assert all(s["resource"]["attributes"]["service.name"] == "run_traced" for s in process)
