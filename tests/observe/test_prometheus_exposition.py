"""What ``/metrics`` serves, scraped over HTTP from a running runtime, held to its documentation
(docs/metrics.md: every family there with its type and labels, every row served), to Prometheus's
naming conventions (and ``promtool check metrics`` where it is installed), and to the Grafana
dashboard under deploy/grafana/, whose queries may name only what is served: a rename cannot
leave the table or the dashboard behind unnoticed."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.eventually import until
from support.servers import promtool as promtool_path
from swell import App, Event
from swell.brokers.memory import MemoryBroker
from swell.core.slo import SLO
from swell.runtime.runtime import Runtime
from swell.runtime.status import RuntimeSnapshot, snapshot_of
from swell.triggers.base import SourceStatus
from swell.triggers.webhook import Webhook
from swell.web.server import HttpServer, bind, routes_app

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "swell-dashboard.json"
#: the dashboard's panels over families of SLOs and cost: allowed while only documented
PLANNED = {"swell_slo_burn_rate", "swell_slo_error_budget_remaining_ratio",
           "swell_cost_dollars_total"}
#: unit column -> the suffix its name must end with (and the other way round)
UNIT_SUFFIX = {"seconds": "_seconds", "bytes": "_bytes", "ratio (0..1)": "_ratio",
               "events/s": "_per_second", "dollars": "_dollars"}


@dataclass(frozen=True)
class Family:
    name: str
    """As exposed: a counter with its ``_total``."""
    type: str
    labels: frozenset[str] | None
    """Of its samples (``None``: it has none)."""
    series: frozenset[str]
    """The series names it exposes (a histogram's ``_bucket``, ``_sum``, ``_count``...)."""


@dataclass(frozen=True)
class Row:
    name: str
    type: str
    labels: frozenset[str]
    unit: str


# -- a runtime with a queue function, a consumer group, a webhook; scraped over HTTP -------------
def shop(release: asyncio.Event) -> App:
    app = App("shop")
    orders = app.queue("orders", max_receives=1)
    clicks = app.stream("clicks", partitions=2)

    # concurrency: the test ticks once, before any event
    @app.function(orders, concurrency=4, slo=SLO(latency="2s"))
    async def charge(order: dict[str, int]) -> None:
        if order["id"] == 0:
            await release.wait()  # in flight while scraped: an oldest age, a busy instance
        elif order["id"] % 2:
            raise ValueError("declined")  # an error, a dead letter

    @app.function(clicks.group("g"), concurrency=2)
    async def count(event: Event[dict[str, int]]) -> None:
        pass

    @app.function(app.queue("refunds"), budget="$5/h")  # idle; a budget has a family
    async def refund(order: dict[str, int]) -> None:
        pass

    app.webhook("hook", path="/hook", to=orders)
    return app


def with_change_stream(snap: RuntimeSnapshot) -> RuntimeSnapshot:
    """``snap`` and a PostgreSQL change stream (its families' samples need a server: its status
    is all /metrics reads)."""
    pg = SourceStatus(app=snap.app, source="pg", kind="pg_changes", node=snap.node, target="cdc",
                      received=3, emitted=2, duplicates=0, errors=0, rejected={"too_large": 1},
                      lag_s=0.5, pending=1, last_error=None, detail={"lag_bytes": 4096}, at=0.0)
    return replace(snap, sources=(*snap.sources, pg))


async def scrape() -> str:
    release = asyncio.Event()
    app, broker = shop(release), MemoryBroker()
    rt = Runtime(app, broker, tick_s=3600.0)  # the test ticks
    hooks = [s for s in app.sources.values() if isinstance(s, Webhook)]
    server = HttpServer(routes_app(hooks, lambda: with_change_stream(snapshot_of(rt)),
                                   lambda: rt.running), bind("127.0.0.1", 0))
    await rt.start()
    try:
        await server.start()
        try:
            await rt.tick()
            for i in range(4):
                await rt.send("orders", {"id": i})
            for i in range(3):
                await app.publish("clicks", {"n": i}, key=str(i))

            def done() -> bool:
                fns = {f.name: f for f in snapshot_of(rt).functions}
                return (fns["charge"].succeeded, fns["charge"].dead_lettered, fns["count"].succeeded,
                        fns["charge"].in_flight) == (1, 2, 3, 1)

            async with httpx.AsyncClient(base_url=server.url) as client:
                reply = await client.post("/hook", content=b"{",
                                          headers={"content-type": "application/json"})
                assert reply.status_code == 400
                await until(done, "the events handled, one held in flight")
                counts = rt.functions["charge"].dispatcher.metrics.slo
                assert counts is not None
                counts.due_at = 0.0  # its SLO's counts flushed and read back now, not in 10 s
                await rt.tick()
                return (await client.get("/metrics")).text
        finally:
            await server.stop()
    finally:
        release.set()  # (the held handler ends)
        await rt.stop(1.0)
        await broker.close()


@pytest.fixture(scope="module")
def exposition() -> str:
    return asyncio.run(scrape())


@pytest.fixture(scope="module")
def served(exposition: str) -> dict[str, Family]:
    out = {}
    for f in text_string_to_metric_families(exposition):
        if not f.name.startswith("swell_"):
            continue
        name = f"{f.name}_total" if f.type == "counter" else f.name
        series = {name} | {f.name + s for s in {"histogram": ("_bucket", "_sum", "_count"),
                                                 "summary": ("_sum", "_count")}.get(f.type, ())}
        labels = {frozenset(s.labels) - {"le", "quantile"} for s in f.samples}
        assert len(labels) <= 1, f"{name}: samples with different labels {labels}"
        out[name] = Family(name, f.type, next(iter(labels), None), frozenset(series))
    return out


def documented() -> dict[str, Row]:
    """The rows of docs/metrics.md's table (every line that starts ``| `swell_...` |``)."""
    rows: dict[str, Row] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`(swell_\w+)`\s*\|(.*)\|\s*$", line)
        if m is None:
            continue
        cells = [c.strip() for c in m.group(2).split("|")]
        assert len(cells) == 4, f"docs/metrics.md: {line!r} is not name|type|labels|unit|meaning"
        assert m.group(1) not in rows, f"docs/metrics.md: {m.group(1)} has two rows"
        rows[m.group(1)] = Row(m.group(1), cells[0], frozenset(re.findall(r"`(\w+)`", cells[1])),
                               cells[2])
    return rows


# -- the table ---------------------------------------------------------------------------------
def test_every_family_served_is_in_the_table_with_its_type_and_labels(
        served: dict[str, Family]) -> None:
    rows = documented()
    wrong = []
    for f in served.values():
        row = rows.get(f.name)
        if row is None:
            wrong.append(f"{f.name} ({f.type}) is served and not in docs/metrics.md")
        elif row.type != f.type:
            wrong.append(f"{f.name}: served as a {f.type}, documented as a {row.type}")
        elif f.labels is None:
            wrong.append(f"{f.name}: no sample in this test's app, so its labels go unchecked: "
                         "give shop() what it needs")
        elif row.labels != f.labels:
            wrong.append(f"{f.name}: served with labels {sorted(f.labels)}, documented "
                         f"{sorted(row.labels)}")
    assert not wrong, "\n".join(wrong)


def test_every_row_of_the_table_is_served(served: dict[str, Family]) -> None:
    gone = sorted(set(documented()) - set(served))
    assert not gone, f"documented in docs/metrics.md and not served: {gone}"


def test_names_follow_prometheus_conventions() -> None:
    wrong = []
    for row in documented().values():
        if row.type == "counter" and not row.name.endswith("_total"):
            wrong.append(f"{row.name}: a counter's name ends with _total")
        if row.type != "counter" and row.name.endswith("_total"):
            wrong.append(f"{row.name}: only a counter's name ends with _total")
        base = row.name.removesuffix("_total")
        suffix = UNIT_SUFFIX.get(row.unit)
        if suffix is not None and not base.endswith(suffix):
            wrong.append(f"{row.name}: in {row.unit}, so its name ends with {suffix}")
        named = [u for u, s in UNIT_SUFFIX.items() if base.endswith(s)]
        if named and not row.unit.endswith(named[0]):  # ("unit-seconds" are seconds)
            wrong.append(f"{row.name}: its name says {named[0]}, its unit is {row.unit!r}")
        wrong += [f"{row.name}: label {label!r} is not lower snake case"
                  for label in sorted(row.labels) if not re.fullmatch(r"[a-z][a-z0-9_]*", label)]
        if not re.fullmatch(r"swell_[a-z][a-z0-9_]*", row.name):
            wrong.append(f"{row.name}: swell_ and lower snake case")
    assert not wrong, "\n".join(wrong)


def promtool(*args: str, stdin: str = "") -> None:
    """Run ``promtool args`` and fail with what it says unless it exits 0; skip where it is not
    installed (fail under ``CI=true``: .ci/run installs it)."""
    done = subprocess.run([promtool_path(), *args], input=stdin, text=True, capture_output=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_finds_nothing_to_say(exposition: str) -> None:
    promtool("check", "metrics", stdin=exposition)


# -- the Grafana dashboard ---------------------------------------------------------------------
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and template variable."""
    out = [(f"panel {p['title']!r}", t["expr"]) for p in board["panels"]
           for t in p.get("targets", [])]
    out += [(f"variable {v['name']!r}", v["definition"]) for v in board["templating"]["list"]
            if v["type"] == "query"]
    return out


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource", "prometheus")
    for name in ("app", "function"):
        assert variables[name]["type"] == "query"
        assert variables[name]["definition"].startswith("label_values(")
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    taken: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for cell in ((x, y) for x in range(g["x"], g["x"] + g["w"])
                     for y in range(g["y"], g["y"] + g["h"])):
            assert cell not in taken, f"{p['title']!r} overlaps {taken[cell]!r}"
            taken[cell] = p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']!r} has no query"
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"]["uid"] == "${datasource}", p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]


def test_the_dashboard_queries_only_what_is_served(served: dict[str, Family]) -> None:
    names = {s for f in served.values() for s in f.series} | (PLANNED & set(documented()))
    wrong = [f"{where}: {name} is not served" for where, expr in queries(dashboard())
             for name in re.findall(r"\bswell_\w+", expr) if name not in names]
    assert not wrong, "\n".join(wrong)
    assert queries(dashboard()), "no queries"


def test_the_dashboards_queries_are_promql(tmp_path: Path) -> None:
    """Each query, its Grafana variables given values (a variable's ``label_values(selector,
    label)``: its selector), as a recording rule promtool parses."""
    values = {"$__rate_interval": "5m", "$app": ".*", "$function": ".*"}
    rules = []
    for i, (_, query) in enumerate(queries(dashboard())):
        expr = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query)
        for name, value in values.items():
            expr = expr.replace(name, value)
        rules.append({"record": f"swell_dashboard_query_{i}", "expr": expr})
    path = tmp_path / "queries.yaml"  # (JSON is YAML)
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(path))


def test_the_readme_links_the_table_and_the_dashboard() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in ("docs/metrics.md", "deploy/grafana/README.md"):
        assert f"]({target})" in readme and (ROOT / target).is_file(), target
