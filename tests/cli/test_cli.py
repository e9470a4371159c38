"""The ``swell`` command, run as a user runs it: in a subprocess, on a SQLite file in tmp_path."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest

from support.servers import free_port
from swell import App, Event, QueueStats, Runtime
from swell.brokers.sqlite import SqliteBroker

pytestmark = pytest.mark.slow

APP = '''
from pydantic import BaseModel

from swell import App

app = App("cli")
orders = app.queue("orders", max_receives=3)


class Order(BaseModel):
    id: str
    amount: float


@app.function(orders)
async def charge(order: Order) -> None:
    pass
'''


@dataclass
class Swell:
    """Runs ``python -m swell ...`` in ``cwd`` against the SQLite file ``db``."""

    cwd: Path
    db: Path
    env: dict[str, str]

    def __call__(self, *args: str, stdin: str | None = None,
                 columns: int | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if columns is not None:  # a terminal this wide; otherwise rich's default for a pipe
            env["COLUMNS"] = str(columns)
        return subprocess.run([sys.executable, "-m", "swell", *args], cwd=self.cwd, env=env,
                              input=stdin, capture_output=True, text=True, timeout=60)

    def stats(self) -> dict[str, QueueStats]:
        """Every queue in the file, by name."""
        async def go() -> dict[str, QueueStats]:
            broker = SqliteBroker(str(self.db))
            try:
                return {s.name: await broker.stats(s.name) for s in await broker.queues()}
            finally:
                await broker.close()

        return asyncio.run(go())

    def stored(self) -> int:
        """How many messages the file holds, in every queue."""
        return sum(s.total for s in self.stats().values())

    def events(self, queue: str) -> list[Event[Any]]:
        async def go() -> list[Event[Any]]:
            broker = SqliteBroker(str(self.db))
            try:
                return [Event.from_json(d.body) for d in await broker.peek(queue)]
            finally:
                await broker.close()

        return asyncio.run(go())


@pytest.fixture
def swell(tmp_path: Path) -> Swell:
    (tmp_path / "app.py").write_text(APP)
    db = tmp_path / "s.db"
    env = {k: v for k, v in os.environ.items()
           if k not in {"COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "SWELL_BROKER"}}
    env["SWELL_BROKER"] = f"sqlite:///{db}"  # db is absolute: sqlite:////abs/path
    return Swell(tmp_path, db, env)


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """A user's mistake: a non-zero exit and one line ``error: ...`` on stderr, no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {lines!r}"
    assert lines[0].startswith("error:")
    return lines[0]


# -- help ------------------------------------------------------------------------------------------
def test_help_lists_the_commands(swell: Swell) -> None:
    result = swell("--help")

    assert result.returncode == 0
    for command in ("run", "send", "queues", "dlq", "demo"):
        assert f"  {command} " in result.stdout, command


# -- send ------------------------------------------------------------------------------------------
def test_send_declares_the_apps_queues_and_stores_one_event(swell: Swell) -> None:
    result = swell("send", "--app", "app.py", "orders", '{"id": "o-1", "amount": 12.5}',
                   "--key", "customer-7")

    assert result.returncode == 0, result.stderr
    assert "sent 1 event(s) to orders" in result.stderr
    (event,) = swell.events("orders")
    assert (event.data, event.key, event.type) == ({"id": "o-1", "amount": 12.5}, "customer-7",
                                                   "swell.orders")
    assert set(swell.stats()) == {"orders", "orders.dlq"}


def test_malformed_json_is_refused_and_nothing_is_stored(swell: Swell) -> None:
    result = swell("send", "--app", "app.py", "orders", '{"id": "o-1",')

    assert result.returncode == 2
    line = assert_one_line_error(result)
    assert "JSON" in line
    assert swell.stored() == 0


def test_stdin_with_one_bad_line_stores_nothing(swell: Swell) -> None:
    lines = '{"id": "o-1", "amount": 1}\n{"id": "o-2", amount: 2}\n{"id": "o-3", "amount": 3}\n'

    result = swell("send", "--app", "app.py", "orders", "-", stdin=lines)

    assert result.returncode == 2
    line = assert_one_line_error(result)
    assert "line 2" in line
    assert swell.stored() == 0


def test_stdin_json_lines_are_sent_as_one_event_each(swell: Swell) -> None:
    lines = '{"id": "o-1", "amount": 1}\n\n{"id": "o-2", "amount": 2}\n{"id": "o-3", "amount": 3}\n'

    result = swell("send", "--app", "app.py", "orders", "-", stdin=lines)

    assert result.returncode == 0, result.stderr
    assert "sent 3 event(s)" in result.stderr
    assert [e.data for e in swell.events("orders")] == [
        {"id": "o-1", "amount": 1}, {"id": "o-2", "amount": 2}, {"id": "o-3", "amount": 3}]
    assert swell.stats()["orders"].depth == 3


def test_send_reads_data_from_a_file(swell: Swell) -> None:
    payload = {"id": "o-9", "amount": 99.5, "lines": [{"sku": "a", "qty": 2}]}
    (swell.cwd / "order.json").write_text(json.dumps(payload, indent=2))

    result = swell("send", "--app", "app.py", "orders", "@order.json")

    assert result.returncode == 0, result.stderr
    assert [e.data for e in swell.events("orders")] == [payload]


def test_send_from_a_missing_file_is_a_clear_error(swell: Swell) -> None:
    result = swell("send", "--app", "app.py", "orders", "@missing.json")

    line = assert_one_line_error(result)
    assert "missing.json" in line
    assert swell.stored() == 0


def test_the_same_id_twice_is_stored_once(swell: Swell) -> None:
    first = swell("send", "--app", "app.py", "orders", '{"id": "o-1", "amount": 1}', "--id", "evt-1")
    second = swell("send", "--app", "app.py", "orders", '{"id": "o-1", "amount": 1}', "--id", "evt-1")

    assert (first.returncode, second.returncode) == (0, 0)
    assert "sent 1 event(s)" in first.stderr
    assert "sent 0 event(s)" in second.stderr and "1 duplicate(s)" in second.stderr
    assert [e.id for e in swell.events("orders")] == ["evt-1"]


def test_a_delayed_send_counts_as_delayed(swell: Swell) -> None:
    result = swell("send", "--app", "app.py", "orders", '{"id": "o-1", "amount": 1}', "--delay", "1m")

    assert result.returncode == 0, result.stderr
    stats = swell.stats()["orders"]
    assert (stats.depth, stats.in_flight, stats.delayed) == (0, 0, 1)


def test_a_bad_delay_is_a_clear_error(swell: Swell) -> None:
    result = swell("send", "--app", "app.py", "orders", "{}", "--delay", "soon")

    line = assert_one_line_error(result)
    assert "--delay" in line
    assert swell.stored() == 0


def test_send_to_an_unknown_queue_names_it(swell: Swell) -> None:
    result = swell("send", "--app", "app.py", "refunds.that.nobody.declared", "{}")

    line = assert_one_line_error(result)
    assert "refunds.that.nobody.declared" in line
    assert swell.stored() == 0


def test_send_without_any_declared_queue_names_the_queue(swell: Swell) -> None:
    result = swell("send", "orders", "{}")

    line = assert_one_line_error(result)
    assert "'orders'" in line


def test_an_oversize_payload_is_refused_and_nothing_is_stored(swell: Swell) -> None:
    # through a file: one argument of this size is over what Linux passes to a process
    (swell.cwd / "big.json").write_text(json.dumps({"id": "o-1", "blob": "x" * (256 * 1024 + 1)}))

    result = swell("send", "--app", "app.py", "orders", "@big.json")

    line = assert_one_line_error(result)
    assert "over the 262,144-byte limit of 'orders'" in line
    assert swell.stored() == 0


# -- run -------------------------------------------------------------------------------------------
def test_run_a_missing_app_file_is_a_clear_error(swell: Swell) -> None:
    result = swell("run", "nope.py")

    line = assert_one_line_error(result)
    assert "nope.py" in line


def test_run_a_missing_module_is_a_clear_error(swell: Swell) -> None:
    result = swell("run", "no_such_module_here")

    line = assert_one_line_error(result)
    assert "no_such_module_here" in line


def test_run_an_app_that_raises_at_import_is_a_clear_error(swell: Swell) -> None:
    (swell.cwd / "broken.py").write_text('raise RuntimeError("no config for the payment API")\n')

    result = swell("run", "broken.py")

    line = assert_one_line_error(result)
    assert "broken.py" in line
    assert "RuntimeError: no config for the payment API" in line


def test_run_a_file_without_an_app_is_a_clear_error(swell: Swell) -> None:
    (swell.cwd / "plain.py").write_text("x = 1\n")

    result = swell("run", "plain.py")

    line = assert_one_line_error(result)
    assert "found 0 swell Apps" in line


# -- queues and dead letters -----------------------------------------------------------------------
def test_queues_lists_each_queue_with_its_counts(swell: Swell) -> None:
    assert swell("send", "--app", "app.py", "orders", "-",
                 stdin='{"id": "a", "amount": 1}\n{"id": "b", "amount": 2}\n').returncode == 0

    result = swell("queues", columns=120)

    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line.split()[3] for line in result.stdout.splitlines()
            if line.startswith("│")}
    assert rows == {"orders": "2", "orders.dlq": "0"}


def test_queues_without_any_queue_says_so(swell: Swell) -> None:
    result = swell("queues")

    assert result.returncode == 0
    assert "no queues yet" in result.stdout


class Order(pydantic.BaseModel):
    id: str
    amount: float


def dead_letter_one(db: Path) -> str:
    """Run the app's function in this process until an invalid order is dead-lettered."""
    app = App("cli")
    orders = app.queue("orders", max_receives=3)

    @app.function(orders)
    async def charge(order: Order) -> None:
        pass

    async def go() -> str:
        broker = SqliteBroker(str(db))
        try:
            async with Runtime(app, broker) as rt:
                event_id = await rt.send("orders", {"id": "o-1", "amount": "lots"})
                deadline = time.monotonic() + 10
                while (await broker.stats("orders.dlq")).total == 0:
                    assert time.monotonic() < deadline, "no dead letter"
                    await asyncio.sleep(0.01)
            return event_id
        finally:
            await broker.close()

    return asyncio.run(go())


def test_dlq_list_show_and_redrive(swell: Swell) -> None:
    event_id = dead_letter_one(swell.db)

    listed = swell("dlq", "list", columns=120)
    shown = swell("dlq", "show", "orders", columns=200)
    redriven = swell("dlq", "redrive", "orders")

    assert listed.returncode == 0, listed.stderr
    assert any("orders.dlq" in line and " 1 " in line for line in listed.stdout.splitlines())
    assert shown.returncode == 0, shown.stderr
    (row,) = [line for line in shown.stdout.splitlines() if event_id in line]
    assert "invalid payload" in row
    assert "amount" in row
    assert redriven.returncode == 0, redriven.stderr
    assert "redrove 1 message(s) to orders" in redriven.stdout
    stats = swell.stats()
    assert (stats["orders"].depth, stats["orders.dlq"].total) == (1, 0)
    assert [e.id for e in swell.events("orders")] == [event_id]


def test_dlq_redrive_of_an_empty_dlq_moves_nothing(swell: Swell) -> None:
    assert swell("send", "--app", "app.py", "orders", '{"id": "a", "amount": 1}').returncode == 0

    result = swell("dlq", "redrive", "orders")

    assert result.returncode == 0, result.stderr
    assert "redrove 0 message(s)" in result.stdout
    assert swell.stats()["orders"].depth == 1


def test_dlq_show_of_an_unknown_queue_is_a_clear_error(swell: Swell) -> None:
    result = swell("dlq", "show", "ghosts")

    line = assert_one_line_error(result)
    assert "ghosts" in line


# -- demo ------------------------------------------------------------------------------------------
def test_demo_drains_its_burst(swell: Swell) -> None:
    result = swell("demo", "--events", "300")

    assert result.returncode == 0, result.stderr
    assert "drained" in result.stdout
    stats = swell.stats()
    assert stats["demo.orders"].total == 0
    assert stats["demo.orders.dlq"].total > 0  # the demo's bad payloads



# -- run on NATS: bad configuration ----------------------------------------------------------------
def test_run_on_an_unreachable_nats_server_is_a_clear_error(swell: Swell) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there

    line = assert_one_line_error(swell("run", "app.py", "--broker", url, "--http", "off"))
    assert "cannot reach NATS" in line and url in line


def test_run_on_a_stream_with_other_settings_is_a_clear_error(swell: Swell, nats_server: str) -> None:
    from swell.brokers.base import QueueSpec
    from swell.brokers.nats import NatsBroker

    url = f"{nats_server}?namespace=cli{time.time_ns()}"

    async def made_elsewhere() -> None:  # the same queue, kept in memory rather than in files
        broker = NatsBroker(f"{url}&storage=memory")
        try:
            await broker.declare_queue(QueueSpec(name="orders", max_receives=3))
        finally:
            await broker.close()

    asyncio.run(made_elsewhere())
    line = assert_one_line_error(swell("run", "app.py", "--broker", url, "--http", "off"))
    assert "exists with other settings" in line and "storage is 'memory'" in line


def test_run_with_a_queue_name_nats_cannot_take_is_a_clear_error(swell: Swell, nats_server: str) -> None:
    (swell.cwd / "dots.py").write_text(APP.replace('"orders"', '"orders..eu"'))
    url = f"{nats_server}?namespace=cli{time.time_ns()}"

    line = assert_one_line_error(swell("run", "dots.py", "--broker", url, "--http", "off"))
    # refused when declared, by the one naming rule of every backend, before NATS is asked
    assert "bad queue name 'orders..eu'" in line


# -- topics ----------------------------------------------------------------------------------------
TOPIC_APP = '''
from swell import App

app = App("cli")
orders = app.topic("orders")
billing = orders.subscribe("billing", subject="orders.*.created",
                           filter={"data": {"amount": [{"numeric": [">", 0]}]}})
audit = orders.subscribe("audit", filter={"region": ["eu"]})


@app.function(billing)
async def bill(data: dict) -> None:
    pass
'''


def test_send_publishes_to_a_topic_and_topics_shows_the_counts(swell: Swell) -> None:
    (swell.cwd / "topics.py").write_text(TOPIC_APP)
    first = swell("send", "orders", '{"amount": 5}', "--subject", "orders.eu.created",
                  "--attr", "region=eu", "--app", "topics.py")
    assert first.returncode == 0, first.stderr
    assert "published 1 event(s) to orders" in first.stderr
    swell("send", "orders", '{"amount": 0}', "--subject", "orders.us.created", "--attr", "region=us")
    swell("send", "orders", '{"amount": 9}', "--subject", "orders.us.paid")

    stats = swell.stats()
    assert (stats["orders.billing"].depth, stats["orders.audit"].depth) == (1, 1)
    out = swell("topics", columns=200).stdout
    cells = {row[3]: row[5:9] for row in ([c.strip() for c in line.split("│")]
                                            for line in out.splitlines() if "│" in line)}
    # ready, in flight, matched, filtered out: billing took the eu order, its filter kept out
    # the zero one, and the paid one's routing key did not match (not counted)
    assert cells["billing"] == ["1", "0", "1", "1"], out
    assert cells["audit"] == ["1", "0", "1", "2"], out
    assert "orders.billing filter:" in out and '"numeric":[">",0]' in out


def test_a_bad_routing_key_or_attribute_is_one_clear_error(swell: Swell) -> None:
    (swell.cwd / "topics.py").write_text(TOPIC_APP)
    line = assert_one_line_error(swell("send", "orders", "{}", "--subject", "orders eu",
                                       "--app", "topics.py"))
    assert "whitespace" in line
    line = assert_one_line_error(swell("send", "orders", "{}", "--attr", "Region=eu"))
    assert "'Region'" in line
    assert swell.stored() == 0


def test_run_an_app_with_an_invalid_filter_is_a_clear_error(swell: Swell) -> None:
    (swell.cwd / "bad.py").write_text(TOPIC_APP.replace('[">", 0]', '[">", "zero"]'))

    line = assert_one_line_error(swell("run", "bad.py", "--http", "off"))
    assert "PatternError" in line and "data.amount" in line
