"""Webhooks against a real ``swell run`` and its HTTP server on a free loopback port, driven by an
HTTP client as a sender would: every reply of the route's table, the same delivery twice (stored
once), the broker down (503, then 202 once it is back), and every 202 in its queue after a
SIGKILL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from support.servers import NatsProcess, free_port
from support.swellprocs import NO_ENV, Swell, wait_for
from swell.core.event import Event

pytestmark = pytest.mark.slow

GH_SECRET = "It's a Secret to Everybody"
STD_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-test-key").decode()
STRIPE_SECRET = "whsec_stripe_test"
TOKEN = "minio-token"

APP = f'''
from swell import App
from swell.triggers.verify import Bearer, GitHub, StandardWebhooks, Stripe

app = App("hooks")
events = app.queue("events")
app.webhook("gh", path="/hooks/github", to=events, verify=GitHub(secret={GH_SECRET!r}),
            max_body="1KiB", rate="1000/s")
app.webhook("std", path="/hooks/std", to=events, verify=StandardWebhooks(secret={STD_SECRET!r}))
app.webhook("stripe", path="/hooks/stripe", to=events,
            verify=Stripe(secret=["whsec_old", {STRIPE_SECRET!r}]))
app.webhook("slow", path="/hooks/slow", to=events, rate="1/s")
app.object_events("s3", path="/hooks/s3", to=events, verify=Bearer({TOKEN!r}), suffix=".csv")
'''


def github(body: bytes, delivery: str, secret: str = GH_SECRET) -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-hub-signature-256": f"sha256={sig}",
            "x-github-event": "push", "x-github-delivery": delivery}


def standard(body: bytes, msg_id: str, at: float) -> dict[str, str]:
    key = base64.b64decode(STD_SECRET.removeprefix("whsec_"))
    ts = str(int(at))
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body,
                                    hashlib.sha256).digest()).decode()
    return {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": ts,
            "webhook-signature": f"v1,{sig}"}


def stripe(body: bytes, at: float) -> dict[str, str]:
    t = str(int(at))
    sig = hmac.new(STRIPE_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "stripe-signature": f"t={t},v1={sig}"}


class Running:
    """One ``swell run`` of ``APP`` with its HTTP server, and a client for it."""

    def __init__(self, tmp_path: Path, url: str | None = None) -> None:
        (tmp_path / "hooks.py").write_text(APP)
        self.swell = Swell(tmp_path, url)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.base, timeout=10)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self.swell.start(NO_ENV, app=self.swell.dir / "hooks.py",
                                     http=f"127.0.0.1:{self.port}", grace="5s")
        self.swell.wait_http(self.proc, self.base)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.client.post(path, content=body, headers=headers)

    def stored(self) -> list[Event[object]]:
        return [Event.from_json(d.body) for d in self.swell.deliveries("events")]

    def close(self) -> None:
        self.client.close()
        self.swell.cleanup()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    made: list[Running] = []

    def make(url: str | None = None) -> Running:
        r = Running(tmp_path, url)
        made.append(r)
        r.start()
        return r

    yield make
    for r in made:
        r.close()


def test_each_request_gets_its_answer_and_only_good_ones_are_stored(
        running: Callable[..., Running]) -> None:
    r = running()
    body = json.dumps({"ref": "main"}).encode()
    # valid, then the same delivery again: 202 twice, stored once
    first = r.post("/hooks/github", body, github(body, "d-1"))
    again = r.post("/hooks/github", body, github(body, "d-1"))
    assert first.status_code == again.status_code == 202, first.text
    assert first.json() == {"id": "d-1", "duplicate": False}
    assert again.json() == {"id": "d-1", "duplicate": True}
    # unsigned, badly signed (another secret), tampered body: 401, nothing stored
    unsigned = {k: v for k, v in github(body, "d-2").items() if k != "x-hub-signature-256"}
    assert r.post("/hooks/github", body, unsigned).status_code == 401
    bad = r.post("/hooks/github", body, github(body, "d-3", secret="wrong"))
    assert (bad.status_code, bad.json()["error"]) == (401, "bad_signature")
    assert r.post("/hooks/github", body + b" ", github(body, "d-4")).status_code == 401
    # oversize (1 KiB), wrong content type, malformed JSON (signed, so they pass the signature)
    big = json.dumps({"x": "y" * 2000}).encode()
    assert r.post("/hooks/github", big, github(big, "d-5")).status_code == 413
    def chunks() -> Iterator[bytes]:  # no Content-Length: the server stops reading at the limit
        yield b'{"x": "'
        for _ in range(100):
            yield b"y" * 100
        yield b'"}'

    chunked = r.client.post("/hooks/github", content=chunks(), headers=github(b"", "d-5b"))
    assert chunked.status_code == 413 and chunked.json()["error"] == "too_large"
    text = b"hello"
    assert r.post("/hooks/github", text, {**github(text, "d-6"),
                                          "content-type": "text/plain"}).status_code == 415
    broken = b'{"ref": '
    malformed = r.post("/hooks/github", broken, github(broken, "d-7"))
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["detail"]
    # Standard Webhooks: fresh, stale (a replay 10 min later), and a rotation-free mismatch
    now = time.time()
    good = r.post("/hooks/std", body, standard(body, "msg_1", now))
    stale = r.post("/hooks/std", body, standard(body, "msg_1", now - 600))
    assert good.status_code == 202 and (stale.status_code, stale.json()["error"]) == (401, "stale")
    # Stripe, signed with the second of two secrets (rotation); its id and type come from the body
    charge = json.dumps({"id": "evt_1", "type": "charge.succeeded", "data": {}}).encode()
    assert r.post("/hooks/stripe", charge, stripe(charge, now)).status_code == 202
    # over the route's rate: 429 with Retry-After
    plain = {"content-type": "application/json", "idempotency-key": "k-1"}
    replies = [r.post("/hooks/slow", body, plain) for _ in range(3)]
    assert replies[0].status_code == 202
    assert [x.status_code for x in replies[1:]] == [429, 429]
    assert int(replies[1].headers["retry-after"]) >= 1
    # object-store notifications: one event per .csv record; a test event stored nothing
    s3 = json.dumps({"Records": [_s3_record("in/a%281%29.csv", "0A"),
                                 _s3_record("in/b.txt", "0B")]}).encode()
    bearer = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
    assert r.post("/hooks/s3", s3, bearer).status_code == 202
    assert r.post("/hooks/s3", s3, bearer).json()["stored"] == 0  # the same records again
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}).encode()
    assert r.post("/hooks/s3", test_event, bearer).json() == {"stored": 0}
    assert r.post("/hooks/s3", s3, {**bearer, "authorization": "Bearer no"}).status_code == 401

    stored = r.stored()
    by_id = {e.id: e for e in stored}
    assert len(stored) == len(by_id) == 5, [e.id for e in stored]
    gh = by_id["d-1"]
    assert (gh.type, gh.source, gh.data) == ("push", "/hooks/github", {"ref": "main"})
    assert gh.extensions["xgithubevent"] == "push"
    assert by_id["msg_1"].source == "/hooks/std"
    assert by_id["evt_1"].type == "charge.succeeded"
    assert "k-1" in by_id
    (obj,) = [e for e in stored if e.type == "s3.ObjectCreated:Put"]
    assert obj.subject == "uploads/in/a(1).csv"
    # the route's counts, on /metrics and in swell status
    metrics = r.client.get("/metrics").text
    assert 'swell_source_rejected_total{app="hooks",kind="webhook",reason="bad_signature",' \
           'source="gh",target="events"} 2.0' in metrics
    assert 'swell_source_rejected_total{app="hooks",kind="webhook",reason="rate",' in metrics


def _s3_record(key: str, sequencer: str) -> dict[str, object]:
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-west-1",
            "eventTime": "2026-12-07T10:00:00.000Z", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "uploads"},
                   "object": {"key": key, "size": 10, "eTag": "e", "sequencer": sequencer}}}


def test_every_202_is_in_the_queue_after_a_sigkill(running: Callable[..., Running]) -> None:
    """Eight senders post as fast as they can; SIGKILL comes while requests are in flight."""
    r = running()
    accepted: list[str] = []
    stop = threading.Event()

    def sender(k: int) -> None:
        with httpx.Client(base_url=r.base, timeout=5) as client:
            i = 0
            while not stop.is_set():
                body = json.dumps({"sender": k, "n": i}).encode()
                try:
                    reply = client.post("/hooks/github", content=body,
                                        headers=github(body, f"k-{k}-{i}"))
                except httpx.HTTPError:
                    return  # the server is gone: this request got no 202
                if reply.status_code == 202:
                    accepted.append(f"k-{k}-{i}")
                i += 1

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(accepted) >= 300, 30, "300 accepted requests")
    assert r.proc is not None
    r.proc.send_signal(signal.SIGKILL)
    r.proc.wait()
    stop.set()
    for t in threads:
        t.join(10)
    stored = {e.id for e in r.stored()}
    assert set(accepted) <= stored, sorted(set(accepted) - stored)[:5]
    assert len(stored) - len(accepted) <= 8  # at most the ones in flight: stored, no reply


def test_a_broker_down_is_503_with_retry_after_then_202_once_back(
        running: Callable[..., Running], nats_servers: Callable[..., NatsProcess]) -> None:
    nats = nats_servers()
    r = running(nats.url)
    body = json.dumps({"n": 1}).encode()
    assert r.post("/hooks/github", body, github(body, "before")).status_code == 202
    nats.stop()
    down = r.post("/hooks/github", body, github(body, "during"))
    assert down.status_code == 503 and int(down.headers["retry-after"]) > 0, down.text
    nats.start()

    def back() -> bool:  # the sender's retry, as it would after Retry-After
        return r.post("/hooks/github", body, github(body, "during")).status_code == 202

    wait_for(back, 30, "a 202 once the broker is back")
    ids = [e.id for e in r.stored()]
    assert sorted(ids) == ["before", "during"], ids


def test_stored_events_decode_as_cloudevents(running: Callable[..., Running]) -> None:
    r = running()
    body = b'{"a": 1}'
    r.post("/hooks/github", body, github(body, "ce-1"))
    (event,) = r.stored()
    wire = msgspec.json.decode(event.to_json())
    assert wire["specversion"] == "1.0" and wire["id"] == "ce-1" and wire["data"] == {"a": 1}
