"""The admin API of ``swell run``, over HTTP against a real Runtime: every endpoint of its OpenAPI
document answers every status it documents, with a body of the documented schema; a change
without the token (or with another) is a 401 and changes nothing; a paused function takes no
work on any node and says so; KEDA's endpoint serves the decision; nothing secret is served."""

from __future__ import annotations

import asyncio
import importlib
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema_rs
import pytest

from support.adminapp import TOKEN, legacy_saga, served
from support.eventually import until
from swell.brokers.base import Broker
from swell.brokers.memory import MemoryBroker
from swell.core.clock import ManualClock
from swell.core.errors import SwellError
from swell.patterns.sagas.log import encode, new_log
from swell.runtime.pause import pause
from swell.runtime.runtime import Runtime
from swell.runtime.status import FunctionSnapshot, RuntimeSnapshot, read_functions
from swell.scaling.signals import Signals
from swell.web.admin import ROUTES, openapi
from swell.web.admin_base import redact
from swell.web.history import SERIES, History
from swell.web.openapi import inline

AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: the order the changes run in (each leaves the state the next needs)
CHANGES = ["function_pause", "function_resume", "saga_skip", "saga_pause", "saga_resume",
           "saga_retry", "saga_abort", "dlq_redrive"]
BODIES: dict[str, Any] = {
    "function_pause": {"by": "alice", "reason": "a bad deploy"}, "function_resume": {},
    "saga_skip": {"by": "alice", "reason": "done by hand", "step": "reserve"},
    "saga_abort": {"by": "alice", "reason": "the customer left"},
    "dlq_redrive": {},
}
GOOD = {"name": "charge", "queue": "orders"}
UNKNOWN = {"name": "nope", "queue": "nope", "ref": "legacy/nope"}
BAD_QUERY = {"seconds": "soon", "since": "then", "limit": "-3"}


def url(path: str, params: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: quote(params[m.group(1)], safe=""), path)


def conforms(op: dict[str, Any], r: httpx.Response) -> None:
    """``r`` has a status ``op`` documents, and a JSON body of the schema it gives for it."""
    assert str(r.status_code) in op["responses"], (op["operationId"], r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    schema = op["responses"][str(r.status_code)]["content"]["application/json"]["schema"]
    jsonschema_rs.Draft202012Validator(inline(schema)).validate(r.json())


async def dead_letter(rt: Runtime) -> None:
    await rt.send("orders", {"bad": True})
    await until(lambda: _total(rt.broker, "orders.dlq"), "a dead letter")


async def _total(broker: Broker, queue: str) -> int:
    return (await broker.stats(queue)).total


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    doc = openapi()
    ops = [(path, method.upper(), op) for path, item in doc["paths"].items()
           for method, op in item.items()]
    reads = [o for o in ops if o[1] == "GET"]
    changes = sorted((o for o in ops if o[1] == "POST"),
                     key=lambda o: CHANGES.index(o[2]["operationId"]))
    return reads + changes


def test_the_document_is_the_route_table() -> None:
    """One row per endpoint: the document names every route, each once, each POST secured."""
    doc = openapi()
    assert doc["openapi"] == "3.1.0"
    documented = {(p, m.upper()) for p, item in doc["paths"].items() for m in item}
    assert documented == {(op.path, op.method) for op in ROUTES}
    assert len(documented) == len(ROUTES)
    assert sorted(op["operationId"] for _, m, op in operations() if m == "POST") == sorted(CHANGES)
    for _, method, op in operations():
        assert (op["security"] == [{"bearer": []}]) == (method == "POST")


async def test_every_endpoint_answers_every_status_it_documents() -> None:
    async with served() as (rt, server), httpx.AsyncClient(base_url=server.url) as http:
        await dead_letter(rt)
        good = {**GOOD, "ref": await legacy_saga(rt.broker, "s-1")}
        done = new_log("legacy", "s-done", {}, ["reserve"], 0.0, "test")
        done.state = "completed"
        await rt.broker.kv.put(done.key, encode(done))
        served_doc = (await http.get("/api/v1/openapi.json")).json()
        assert served_doc == openapi()
        for path, method, op in operations():
            oid, codes = op["operationId"], set(op["responses"])
            if oid == "function_history":
                await until(lambda: rt.functions["charge"].signals is not None, "a sample")
            r = await http.request(method, url(path, good), json=BODIES.get(oid, {"by": "alice"})
                                   if method == "POST" else None, headers=AUTH)
            assert r.status_code == 200, (oid, r.text)
            conforms(op, r)
            if oid == "dlq_redrive":
                assert r.json()["moved"] == 1
            if "404" in codes:
                r = await http.request(method, url(path, UNKNOWN), json=BODIES.get(
                    oid, {"by": "alice"}) if method == "POST" else None, headers=AUTH)
                assert r.status_code == 404, (oid, r.text)
                conforms(op, r)
            if "400" in codes:
                query = {p["name"]: BAD_QUERY[p["name"]] for p in op["parameters"]
                         if p["in"] == "query" and p["name"] in BAD_QUERY}
                r = await http.request(method, url(path, good), params=query, headers=AUTH,
                                       content=b"[1, 2]" if method == "POST" else None)
                assert r.status_code == 400, (oid, r.text)
                conforms(op, r)
            if "401" in codes:
                r = await http.post(url(path, good), json=BODIES.get(oid, {"by": "alice"}))
                assert r.status_code == 401
                conforms(op, r)
            if "409" in codes:
                conflict = {**good, "ref": "legacy/s-done", "queue": "clicks.g.dlq"}
                r = await http.post(url(path, conflict), json=BODIES.get(oid, {"by": "alice"}),
                                    headers=AUTH)
                assert r.status_code == 409, (oid, r.text)
                conforms(op, r)
        saga = (await http.get(f"/api/v1/sagas/{quote(good['ref'], safe='')}")).json()
        events = [(h["actor"], h["event"]) for h in saga["history"]]
        assert ("operator alice", "paused") in events and saga["state"] == "compensating"


WRONG = [None, "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer", f"bearer{TOKEN}"]


@pytest.mark.parametrize("header", WRONG, ids=["none", "wrong", "longer", "basic", "empty",
                                                "no-space"])
async def test_a_change_without_the_token_is_refused_and_changes_nothing(
        header: str | None) -> None:
    async with served() as (rt, server), httpx.AsyncClient(base_url=server.url) as http:
        await dead_letter(rt)
        ref = await legacy_saga(rt.broker, "s-1")

        async def state() -> tuple[Any, ...]:
            kv = rt.broker.kv
            return (sorted((e.key, e.value) for e in await kv.scan("swell/sagas/")),
                    sorted((e.key, e.value) for e in await kv.scan("swell/paused/")),
                    [await _total(rt.broker, q) for q in ("orders", "orders.dlq", "saga.legacy")])

        before = await state()
        headers = {} if header is None else {"Authorization": header}
        for path, method, op in operations():
            if method == "POST":
                r = await http.post(url(path, {**GOOD, "ref": ref}), headers=headers,
                                    json=BODIES.get(op["operationId"], {"by": "mallory"}))
                assert r.status_code == 401, (op["operationId"], r.text)
                assert r.json()["error"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
        await rt.tick()
        assert await state() == before


async def test_a_paused_function_takes_no_work_and_says_who_paused_it() -> None:
    async with served() as (rt, server), httpx.AsyncClient(base_url=server.url) as http:
        scale = "/api/v1/functions/charge/scale"
        await until(lambda: _said(http, scale, 2), "the fixed pool's 2 units for KEDA")
        r = await http.post("/api/v1/functions/charge/pause", headers=AUTH, json={"by": "alice"})
        assert r.json() == {"function": "charge", "paused": True}

        async def recorded() -> list[Any]:
            return [(f.desired, f.reason, f.signals.depth) for f in
                    await read_functions(rt.broker, "shop") if f.function == "charge"]

        await until(lambda: _said(http, scale, 0), "desiredUnits 0 while paused")
        for i in range(3):
            await rt.send("orders", {"id": i})
        # what `swell status` reads: no units, why, and the queue holding what came
        await until(lambda: _is(recorded(), [(0, "paused by alice", 3)]), "the record")
        assert rt.functions["charge"].dispatcher.metrics.succeeded == 0
        assert rt.functions["charge"].dispatcher.limit == 0
        fn = (await http.get("/api/v1/functions/charge")).json()
        assert (fn["paused"], fn["paused_by"], fn["desired"]) == (True, "alice", 0)
        await http.post("/api/v1/functions/charge/resume", headers=AUTH)
        await until(lambda: rt.functions["charge"].dispatcher.metrics.succeeded == 3, "drained")
        await until(lambda: _said(http, scale, 2), "desiredUnits back to 2")


async def test_a_paused_consumer_group_function_takes_no_work_either() -> None:
    async with served() as (rt, server), httpx.AsyncClient(base_url=server.url) as http:
        await http.post("/api/v1/functions/count/pause", headers=AUTH, json={"by": "bob"})
        await until(lambda: rt.functions["count"].decision.reason == "paused by bob", "paused")
        for i in range(5):
            await rt.publish("clicks", {"n": i}, key=str(i))

        async def lagging() -> bool:
            return [(f.reason, f.lags and sum(f.lags)) for f in
                    await read_functions(rt.broker, "shop") if f.function == "count"
                    ] == [("paused by bob", 5)]

        await until(lagging, "the record: paused, a lag of 5")
        for _ in range(3):  # ticks that would activate it from zero on the lag
            await rt.tick()
        assert rt.functions["count"].dispatcher.metrics.succeeded == 0
        await http.post("/api/v1/functions/count/resume", headers=AUTH)
        await until(lambda: rt.functions["count"].dispatcher.metrics.succeeded == 5, "drained")


async def test_a_pause_holds_from_the_start_of_a_node() -> None:
    """A node started while its function is paused starts no unit, not even its fixed pool's."""
    broker = MemoryBroker()
    await pause(broker.kv, "shop", "charge", by="carol", at=0.0, reason="maintenance")
    async with served(broker=broker) as (rt, server), httpx.AsyncClient(base_url=server.url) as http:
        await rt.send("orders", {"id": 1})
        for _ in range(3):
            await rt.tick()
        st = rt.functions["charge"]
        assert (st.decision.reason, st.dispatcher.limit) == ("paused by carol: maintenance", 0)
        assert st.dispatcher.metrics.succeeded == 0 and st.dispatcher.executor.ready() == 0
        assert (await http.get("/api/v1/functions/charge")).json()["paused_by"] == "carol"


async def _said(http: httpx.AsyncClient, path: str, units: int) -> bool:
    body: dict[str, int] = (await http.get(path)).json()
    return body == {"desiredUnits": units, "depth": body["depth"], "lag": 0}


async def _is(got: Any, expected: Any) -> bool:
    return bool(await got == expected)


async def test_the_keda_endpoint_serves_the_decision_and_the_backlog() -> None:
    """KEDA's metrics-api scaler reads ``desiredUnits``; a stream function's lag is there too."""
    async with served() as (rt, server), httpx.AsyncClient(base_url=server.url) as http:
        for i in range(5):
            await rt.publish("clicks", {"n": i}, key=str(i))
        await until(lambda: rt.functions["count"].dispatcher.metrics.succeeded == 5, "counted")
        r = await http.get("/api/v1/functions/count/scale")
        snap = next(f for f in rt.functions.values() if f.fn.name == "count")
        assert r.status_code == 200
        assert r.json()["desiredUnits"] == snap.decision.desired
        assert set(r.json()) == {"desiredUnits", "depth", "lag"}
        assert (await http.get("/api/v1/functions/nope/scale")).status_code == 404


async def test_nothing_secret_is_served_and_no_cors() -> None:
    async with served() as (rt, server), httpx.AsyncClient(base_url=server.url) as http:
        await dead_letter(rt)
        origin = {"Origin": "https://evil.example"}
        for path, method, _ in operations():
            if method == "GET":
                r = await http.get(url(path, {**GOOD, "ref": "legacy/x"}), headers=origin)
                assert TOKEN not in r.text
                assert not [h for h in r.headers if h.lower().startswith("access-control")]
        r = await http.options("/api/v1/functions/charge/pause", headers={
            **origin, "Access-Control-Request-Method": "POST"})
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    assert redact({"e": ["nats://ops:s3cret@n1:4222 down"]}) == {"e": ["nats://ops:***@n1:4222 down"]}


def test_the_history_keeps_an_hour_in_fixed_memory() -> None:
    clock = ManualClock(start=1000.0)
    depth = [0]

    def snapshot() -> RuntimeSnapshot:
        s = Signals(t=clock.monotonic(), depth=depth[0], in_flight=0, arrival_rate=None)
        f = FunctionSnapshot(name="charge", queue="orders", mode="inline", desired=depth[0],
                             reason="", share=0, in_flight=0, succeeded=0, dead_lettered=0,
                             signals=s)
        return RuntimeSnapshot(app="shop", node="n", functions=(f,))

    history = History(snapshot, clock, every_s=1.0, keep_s=5.0)
    for i in range(8):
        depth[0] = i
        history.sample()
        clock.advance(1.0)
    got = history.series("charge", 3600)
    assert got["series"]["depth"] == [3.0, 4.0, 5.0, 6.0, 7.0]  # the last 5 only
    assert got["t"] == [1003.0, 1004.0, 1005.0, 1006.0, 1007.0]
    assert got["series"]["arrival_rate"] == [None] * 5 and set(got["series"]) == set(SERIES)
    assert history.series("charge", 3600, since=1005.0)["series"]["desired"] == [6.0, 7.0]
    assert history.series("charge", 2.5)["t"] == [1006.0, 1007.0]
    assert not any(math.isnan(x) for x in got["t"])


def test_swell_run_prints_a_generated_token_once(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from support.adminapp import shop
    from swell.cli.run import web_server
    from swell.web.server import bind

    monkeypatch.delenv("SWELL_ADMIN_TOKEN", raising=False)
    for env in (None, "from-the-environment"):
        if env is not None:
            monkeypatch.setenv("SWELL_ADMIN_TOKEN", env)
        with bind("127.0.0.1", 0) as sock:
            web_server(Runtime(shop(), MemoryBroker()), sock)
        said = re.findall(r"swell: admin token (\S+)", capsys.readouterr().err)
        assert len(said) == (1 if env is None else 0)
        assert env is not None or len(said[0]) >= 32


async def test_an_unknown_path_or_method_is_a_json_error() -> None:
    async with served() as (_, server), httpx.AsyncClient(base_url=server.url) as http:
        for r in (await http.get("/api/v1/nope"), await http.delete("/api/v1/functions")):
            assert r.status_code in (404, 405) and r.json()["error"] in ("not_found",
                                                                          "method_not_allowed")
        r = await http.post("/api/v1/dlq/orders/redrive", headers=AUTH, json={"ids": [], "max": 1})
        assert r.status_code == 400
        r = await http.post("/api/v1/dlq/orders/redrive", headers=AUTH, json={"ids": []})
        assert r.json()["moved"] == 0
        await asyncio.sleep(0)


def test_the_keda_example_asks_the_scale_endpoint_for_what_it_serves() -> None:
    """deploy/k8s's ScaledObject: its URL is the scale route, its valueLocation a field of the
    Scale body, its Service the Deployment's port."""
    yaml: Any = importlib.import_module("yaml")  # (PyYAML comes with schemathesis; no stubs)
    k8s = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
    (scaled,) = yaml.safe_load_all((k8s / "keda-scaledobject.yaml").read_text())
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    path = re.sub(r"^http://[^/]+", "", meta["url"])
    assert re.fullmatch(r"/api/v1/functions/\w+/scale", path)
    assert trigger["type"] == "metrics-api"
    assert meta["valueLocation"] in openapi()["components"]["schemas"]["Scale"]["required"]
    kinds = {d["kind"]: d for d in yaml.safe_load_all((k8s / "swell.yaml").read_text())}
    assert scaled["spec"]["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    env = {e["name"]: e for e in
           kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SWELL_HTTP"]["value"].endswith(":9464") and "secretKeyRef" in str(
        env["SWELL_ADMIN_TOKEN"])


async def test_a_loopback_server_answers_only_loopback_hosts() -> None:
    """DNS rebinding: a page whose name now points at 127.0.0.1 sends its own name as Host."""
    async with served() as (_, server), httpx.AsyncClient(base_url=server.url) as http:
        for host in ("127.0.0.1:9464", "localhost", "[::1]:80"):
            assert (await http.get("/api/v1/functions", headers={"Host": host})).status_code == 200
        for path in ("/api/v1/functions", "/api/v1/dlq", "/"):
            r = await http.get(path, headers={"Host": "evil.example:9464"})
            assert r.status_code == 403 and r.json()["error"] == "forbidden_host"
        r = await http.post("/api/v1/functions/charge/pause", json={"by": "x"},
                            headers={"Host": "evil.example", "Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 403


async def test_a_broker_error_is_served_without_its_password(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    async with served() as (rt, server), httpx.AsyncClient(base_url=server.url) as http:
        async def down(*_: Any, **__: Any) -> Any:
            raise SwellError("cannot reach nats://ops:s3cret@n1:4222: connection refused")

        monkeypatch.setattr(rt.broker, "queues", down)
        r = await http.get("/api/v1/queues")
    assert r.status_code == 503 and "s3cret" not in r.text and "ops:***@n1" in r.text
    assert "s3cret" not in caplog.text
