"""``swell dlq``: list takes queues, show shows payloads, purge asks first, redrive takes ids."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swell import App, Event
from swell.brokers.base import Message
from swell.brokers.producer import Producer
from swell.brokers.sqlite import SqliteBroker
from swell.runtime.app import declare

pytestmark = pytest.mark.slow

LONG = "x" * 500


class Dlq:
    """A SQLite file with queues ``orders`` and ``jobs`` whose dead-letter queues hold what a
    test puts there, and ``swell`` run on it in a subprocess."""

    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path
        self.db = tmp_path / "s.db"
        self.env = {k: v for k, v in os.environ.items()
                    if k not in {"COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "SWELL_APP"}}
        self.env["SWELL_BROKER"] = f"sqlite:///{self.db}"
        app = App("dlq")
        app.queue("orders", max_receives=3)
        app.queue("jobs")
        app.queue("empty")

        async def go() -> None:
            broker = SqliteBroker(str(self.db))
            try:
                await declare(app, broker)
            finally:
                await broker.close()
        asyncio.run(go())

    def dead_letter(self, queue: str, payloads: list[object]) -> list[str]:
        """Put events with ``payloads`` into ``queue``'s dead-letter queue; their ids."""
        async def go() -> list[str]:
            broker = SqliteBroker(str(self.db))
            try:
                producer = Producer(broker, source="/t")
                events = [producer.event(queue, p) for p in payloads]
                await broker.send(queue, [Message(body=e.to_json()) for e in events])
                for d in await broker.receive(queue, len(events)):
                    await broker.dead_letter(d.receipt, "failed after 3 attempt(s)", "Boom: no")
                return [e.id for e in events]
            finally:
                await broker.close()
        return asyncio.run(go())

    def ids(self, queue: str) -> list[str]:
        async def go() -> list[str]:
            broker = SqliteBroker(str(self.db))
            try:
                return [Event.from_json(d.body).id for d in await broker.peek(queue, 1000)]
            finally:
                await broker.close()
        return asyncio.run(go())

    def __call__(self, *args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "swell", *args], cwd=self.cwd,
                              env={**self.env, "COLUMNS": str(columns)}, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def dlq(tmp_path: Path) -> Dlq:
    return Dlq(tmp_path)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:")
    return line


def test_list_takes_the_queues_whose_dead_letters_to_count(dlq: Dlq) -> None:
    dlq.dead_letter("orders", [{"n": 1}, {"n": 2}])

    some = dlq("dlq", "list", "orders", "empty")
    every = dlq("dlq", "list")
    unknown = dlq("dlq", "list", "ghosts")

    assert some.returncode == 0, some.stderr
    rows = {line.split()[1]: line.split()[3] for line in some.stdout.splitlines()
            if line.startswith("│")}
    assert rows == {"orders.dlq": "2", "empty.dlq": "0"}
    assert "jobs.dlq" in every.stdout
    assert "ghosts" in one_line_error(unknown)


def test_show_shows_each_payload_cut_and_full_with_full(dlq: Dlq) -> None:
    short, long = dlq.dead_letter("orders", [{"n": 1}, {"n": 2, "note": LONG}])

    shown = dlq("dlq", "show", "orders")
    full = dlq("dlq", "show", "orders", "--full", columns=1000)

    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert short in out and long in out
    assert '{"n":1}' in out
    assert LONG not in out.replace("│", "").replace(" ", "").replace("\n", "")
    assert "--full shows all" in out
    assert full.returncode == 0, full.stderr
    assert LONG in full.stdout
    assert "Boom: no" in full.stdout


def test_purge_asks_first_and_yes_skips_the_question(dlq: Dlq) -> None:
    dlq.dead_letter("orders", [{"n": 1}, {"n": 2}])

    asked = dlq("dlq", "purge", "orders")  # stdin is not a terminal: it cannot ask
    assert "--yes" in one_line_error(asked)
    assert len(dlq.ids("orders.dlq")) == 2

    purged = dlq("dlq", "purge", "orders", "--yes")

    assert purged.returncode == 0, purged.stderr
    assert "purged 2 message(s) from orders.dlq" in purged.stdout
    assert dlq.ids("orders.dlq") == []


def test_purge_answers_the_question_on_a_terminal(dlq: Dlq) -> None:
    import pty

    dlq.dead_letter("orders", [{"n": 1}])
    for answer, left in (("n", 1), ("y", 0)):
        pid, fd = pty.fork()
        if pid == 0:  # the child: swell on a terminal
            os.chdir(dlq.cwd)
            os.execve(sys.executable, [sys.executable, "-m", "swell", "dlq", "purge", "orders"],
                      dlq.env)
        seen = b""
        while b"[y/N]" not in seen:
            seen += os.read(fd, 1024)
        os.write(fd, f"{answer}\n".encode())
        with contextlib.suppress(OSError):  # the child is gone: its end of the pty closed
            while os.read(fd, 1024):
                pass
        os.waitpid(pid, 0)
        os.close(fd)
        assert len(dlq.ids("orders.dlq")) == left, seen


def test_redrive_moves_only_the_dead_letters_named_by_id(dlq: Dlq) -> None:
    a, b, c = dlq.dead_letter("orders", [{"n": 1}, {"n": 2}, {"n": 3}])

    moved = dlq("dlq", "redrive", "orders", "--id", a, "--id", c)

    assert moved.returncode == 0, moved.stderr
    assert "redrove 2 message(s) to orders" in moved.stdout
    assert sorted(dlq.ids("orders")) == sorted([a, c])
    assert dlq.ids("orders.dlq") == [b]
    again = dlq("dlq", "show", "orders")
    assert json.dumps({"n": 2}, separators=(",", ":")) in again.stdout


def test_redrive_of_an_id_not_there_says_so_and_moves_the_others(dlq: Dlq) -> None:
    (a,) = dlq.dead_letter("orders", [{"n": 1}])
    (other,) = dlq.dead_letter("jobs", [{"n": 9}])

    result = dlq("dlq", "redrive", "orders", "--id", a, "--id", other)

    line = one_line_error(result)
    assert repr(other) in line and "orders.dlq" in line
    assert "redrove 1 message(s) to orders" in result.stdout
    assert dlq.ids("orders") == [a]
    assert dlq.ids("jobs.dlq") == [other]
    assert dlq.ids("orders.dlq") == []
