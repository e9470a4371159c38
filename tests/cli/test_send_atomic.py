"""``swell send QUEUE -`` is all or nothing: every line is checked before anything is stored; each
event's id comes from the input, so the same command again (after a crash, a full disk, a lost
connection) stores nothing twice; a failure says exactly what was stored. On SQLite and on NATS
(a server the tests start)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from support.sendcli import SendCli, broker_url, one_line_error
from swell.brokers.base import Message
from swell.brokers.url import open_broker
from swell.core.errors import BrokerUnavailable, SwellError

pytestmark = pytest.mark.slow

APP = '''
from swell import App

app = App("cli")
orders = app.queue("orders", max_message_bytes=4096)
'''


class Sender(SendCli):
    """``python -m swell send ...`` against one broker URL, and a look at what it stored."""

    def __init__(self, cwd: Path, url: str) -> None:
        super().__init__(cwd, url, APP)

    def stored(self, queue: str = "orders") -> list[int]:
        """The ``n`` of every event stored in ``queue``."""
        async def go() -> list[int]:
            broker = open_broker(self.url)
            try:
                depth = (await broker.stats(queue)).depth
                got = await broker.receive(queue, depth + 10, 60) if depth else []
                if got:  # looked at, not taken
                    await broker.release([d.receipt for d in got], count=False)
                return sorted(json.loads(d.body)["data"]["n"] for d in got)
            finally:
                await broker.close()

        return asyncio.run(go())


@pytest.fixture(params=["sqlite", "nats"])
def sender(request: pytest.FixtureRequest, tmp_path: Path) -> Sender:
    return Sender(tmp_path, broker_url(request, tmp_path, request.param))


def lines(n: int, big: int | None = None) -> str:
    """``n`` JSON lines ``{"n": i}``; line ``big`` (1-based) is over the queue's 4 KiB."""
    return "".join(json.dumps({"n": i, "pad": "x" * 5000} if i + 1 == big else {"n": i}) + "\n"
                   for i in range(n))


def test_an_oversize_line_stores_nothing_and_is_named(sender: Sender) -> None:
    result = sender.send("orders", "-", stdin=lines(1000, big=701))

    line = one_line_error(result)
    assert "line 701" in line and "4,096-byte limit" in line and "nothing was sent" in line
    assert sender.stored() == []


def test_the_same_command_again_stores_nothing_twice(sender: Sender) -> None:
    first = sender.send("orders", "-", "--key", "k", stdin=lines(1200))
    again = sender.send("orders", "-", "--key", "k", stdin=lines(1200))

    assert first.returncode == 0 and "sent 1200 event(s) to orders" in first.stderr, first.stderr
    assert again.returncode == 0, again.stderr
    assert "sent 0 event(s)" in again.stderr and "1200 duplicate(s)" in again.stderr
    assert sender.stored() == list(range(1200))


def test_a_send_cut_short_then_repeated_stores_each_line_once(sender: Sender) -> None:
    # what a crash after the first 700 leaves: those 700 stored; then the whole command again
    assert sender.send("orders", "-", stdin=lines(700)).returncode == 0

    again = sender.send("orders", "-", stdin=lines(1000))

    assert again.returncode == 0, again.stderr
    assert "sent 300 event(s)" in again.stderr and "700 duplicate(s)" in again.stderr
    assert sender.stored() == list(range(1000))


def test_other_content_on_a_line_is_another_event(sender: Sender) -> None:
    assert sender.send("orders", "-", stdin=lines(3)).returncode == 0
    changed = lines(3).replace('{"n": 1}', '{"n": 11}')

    again = sender.send("orders", "-", stdin=changed)

    assert "sent 1 event(s)" in again.stderr and "2 duplicate(s)" in again.stderr
    assert sender.stored() == [0, 1, 2, 11]


def test_a_memory_broker_is_refused(tmp_path: Path) -> None:
    result = Sender(tmp_path, "memory://").send("orders", '{"n": 1}')

    line = one_line_error(result)
    assert "memory://" in line


class FailingPut:
    """A broker's send that stores ``ok`` batches, then fails (a lost connection)."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.stored: list[Message] = []

    async def __call__(self, target: str, messages: Sequence[Message]) -> list[bool]:
        if not self.ok:
            raise BrokerUnavailable("NATS at nats://127.0.0.1:4222 took no message")
        self.ok -= 1
        self.stored += messages
        return [True] * len(messages)


async def test_a_failure_mid_send_says_exactly_what_was_stored() -> None:
    from swell.cli.send import store_in_batches

    messages = [Message(body=b"{}", dedup_id=str(i)) for i in range(1200)]
    put = FailingPut(ok=2)

    with pytest.raises(SwellError) as info:
        await store_in_batches(put, "orders", messages, list(range(1, 1201)), batch=500,
                               dedup_window_s=300.0)

    message = str(info.value)
    assert len(put.stored) == 1000
    assert "took no message" in message
    assert "stored 1,000 of 1,200 event(s) (lines 1-1000)" in message
    assert "run the same command again" in message and "300 s" in message


async def test_an_interrupted_send_says_what_was_stored(capsys: pytest.CaptureFixture[str]) -> None:
    from swell.cli.send import store_in_batches

    messages = [Message(body=b"{}", dedup_id=str(i)) for i in range(1200)]
    stored: list[Any] = []

    async def put(target: str, batch: Sequence[Message]) -> list[bool]:
        if stored:
            raise asyncio.CancelledError  # Ctrl-C while the second batch is on its way
        stored.extend(batch)
        return [True] * len(batch)

    with pytest.raises(asyncio.CancelledError):
        await store_in_batches(put, "orders", messages, list(range(1, 1201)), batch=500,
                               dedup_window_s=300.0)
    assert "stored 500 of 1,200 event(s) (lines 1-500)" in capsys.readouterr().err


def test_a_send_killed_at_any_moment_on_sqlite_stores_all_or_nothing(tmp_path: Path) -> None:
    n = 60_000
    payload = lines(n)
    outcomes = []
    for k, delay_s in enumerate((0.3, 0.6, 0.9)):
        cwd = tmp_path / f"k{k}"
        cwd.mkdir()
        sender = Sender(cwd, f"sqlite:///{cwd / 's.db'}")
        proc = subprocess.Popen([sys.executable, "-m", "swell", "send", "--app", "app.py", "orders",
                                 "-"], cwd=sender.cwd, env=sender.env, stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.close()
        try:
            proc.wait(timeout=delay_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
        if not (sender.cwd / "s.db").exists():
            outcomes.append(0)  # killed before it opened the file
            continue
        stored = len(sender.stored())
        outcomes.append(stored)
        assert stored in (0, n), f"killed after {delay_s} s: {stored} of {n} stored"
        again = sender.send("orders", "-", stdin=payload)
        assert again.returncode == 0, again.stderr
        assert len(sender.stored()) == n, (again.stderr, stored)
    print(f"stored when killed: {outcomes}")
