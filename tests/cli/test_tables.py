"""Every table of ``swell`` is readable in an 80-column terminal (a table whose columns fit, else one
block per row: no header cut to ``fun… rea…``), and a table when there is room."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swell.brokers.base import Message
from swell.brokers.producer import Producer
from swell.brokers.sqlite import SqliteBroker

pytestmark = pytest.mark.slow

APP = '''
from typing import Any

from swell import App

app = App("tables")
orders = app.queue("orders.incoming.europe-west", max_receives=2)
clicks = app.stream("clicks", partitions=4)
events = app.topic("events")
billing = events.subscribe("billing", subject="orders.*.created")
big = events.subscribe("big-eu", filter={"data": {"amount": [{"numeric": [">=", 100]}]}})
checkout = app.saga("checkout")


@checkout.step()
async def reserve_money(order: dict[str, Any]) -> dict[str, Any]:
    return {"hold": f"hold-for-{order['id']}"}


@app.function(orders, concurrency=4)
async def charge_the_customer(order: dict[str, Any]) -> None:
    if order.get("bad"):
        raise RuntimeError("the payment API said no: " + "card declined " * 10)


@app.function(clicks.group("analytics"))
async def count(click: dict[str, Any]) -> None:
    pass


@app.function(billing)
async def bill(event: dict[str, Any]) -> None:
    pass


@app.function(big)
async def review(event: dict[str, Any]) -> None:
    pass
'''
QUEUE = "orders.incoming.europe-west"


class Project:
    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path
        self.db = tmp_path / "s.db"
        (tmp_path / "app.py").write_text(APP)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in {"COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "SWELL_APP"}}
        self.env |= {"SWELL_BROKER": f"sqlite:///{self.db}", "SWELL_METRICS": "off"}

    def __call__(self, *args: str, columns: int = 80) -> str:
        result = subprocess.run([sys.executable, "-m", "swell", *args], cwd=self.cwd,
                                env={**self.env, "COLUMNS": str(columns)}, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def feed(self) -> None:
        """Orders (two that fail for good), clicks, topic events and a saga."""
        async def go() -> None:
            broker = SqliteBroker(str(self.db))
            try:
                p = Producer(broker, source="/t")
                await broker.send(QUEUE, [Message(body=p.event(QUEUE, {"id": f"o-{i}",
                                                                        "bad": i < 2}).to_json())
                                          for i in range(20)])
                await broker.append("clicks", [
                    Message(body=p.event("clicks", {"i": i}, key=f"user-{i % 7}").to_json(),
                            key=f"user-{i % 7}") for i in range(50)])
                await broker.publish("events", [
                    Message(body=p.event("events", {"amount": 50 * i},
                                         subject=f"orders.{r}.created").to_json(),
                            subject=f"orders.{r}.created") for i, r in enumerate(["eu", "us"] * 3)])
            finally:
                await broker.close()
            sys.path.insert(0, str(self.cwd))
            try:
                from swell.runtime.loader import load_app

                app = load_app(str(self.cwd / "app.py"))
                await sys.modules["app"].checkout.start({"id": "o-1"}, id="o-1",
                                                        broker=f"sqlite:///{self.db}")
                await app.close()
            finally:
                sys.path.remove(str(self.cwd))
                sys.modules.pop("app", None)

        asyncio.run(go())

    def dead(self) -> int:
        async def go() -> int:
            broker = SqliteBroker(str(self.db))
            try:
                return (await broker.stats(f"{QUEUE}.dlq")).total
            finally:
                await broker.close()
        return asyncio.run(go())


def readable(out: str, headers: list[str], width: int = 80) -> None:
    """Nothing cut, nothing wider than the terminal, the headers shown whole (those of every
    column but the first, which heads each row's block when the table does not fit)."""
    assert "…" not in out, out
    wide = [line for line in out.splitlines() if len(line.rstrip()) > width]
    assert not wide, out
    for header in headers:
        assert header in out, (header, out)


def test_every_table_reads_at_80_columns_and_is_a_table_when_there_is_room(tmp_path: Path) -> None:
    project = Project(tmp_path)
    log = (tmp_path / "run.log").open("w")
    run = subprocess.Popen([sys.executable, "-m", "swell", "run", "app.py"], cwd=tmp_path,
                           env=project.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "running tables" not in (tmp_path / "run.log").read_text():
            assert run.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "run.log").read_text()
            time.sleep(0.05)
        project.feed()
        while project.dead() < 2 or "charge_the_customer" not in project("status"):
            assert time.monotonic() < deadline, project("status")
            time.sleep(0.2)
        time.sleep(1.0)  # a tick or two of signals and checkpoints

        status = project("status")
        readable(status, ["tables.charge_the_customer", "ready", "in flight", "oldest", "in/s",
                          "out/s", "p99", "errors", "throttled", "units", "nodes",
                          "group clicks/analytics"])
        assert "┃" not in status  # at 80 columns: a block per function
        wide = project("status", columns=200)
        assert "┃ function" in wide and "throttled" in wide and "…" not in wide
        readable(project("nodes"), ["app", "host", "pid", "up", "last beat", "in flight",
                                    "units"])
        readable(project("queues"), ["ready", "in flight", "delayed", "oldest", QUEUE])
        readable(project("topics"), ["events", "sent", "subscription", "subject", "ready",
                                     "in flight", "matched", "filtered", "big-eu"])
        readable(project("streams"), ["kept", "analytics lag", "analytics node"])
        readable(project("dlq", "list"), ["ready", f"{QUEUE}.dlq"])
        readable(project("dlq", "show", QUEUE), ["dead-lettered", "attempts",
                                                  "reason", "error", "payload", "card declined"])
        readable(project("saga", "list"), ["saga", "state", "step", "updated", "o-1"])
        readable(project("saga", "show", "o-1"), ["state", "runs", "failures", "lost", "result",
                                                  "reserve_money", "actor", "event"])
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=30)
        log.close()

    replayed = project("replay", "clicks", "--group", "analytics", "--from", "1h",
                       "--app", "app.py")
    readable(replayed, ["from", "to", "events", "failures", "duplicates suppressed",
                        "state", "done"])
