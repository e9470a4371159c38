"""``swell send`` at its edges: it appends to a stream (``--key``, and JSON lines on stdin) that a
consumer group then reads in order per key, on SQLite and on NATS; and input it cannot take (JSON
nested too deep, bytes that are not UTF-8, half a surrogate pair, a broker URL without a host) is
one clear line, never a traceback. A UTF-8 byte order mark before the JSON is ignored."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from support.eventually import until
from support.sendcli import SendCli, broker_url, one_line_error
from swell import App, Event, Runtime
from swell.brokers.base import Message
from swell.brokers.url import open_broker
from swell.core.errors import BrokerUnavailable, SwellError, UnknownQueue

pytestmark = pytest.mark.slow

APP = '''
from swell import App

app = App("edges")
orders = app.queue("orders")
clicks = app.stream("clicks", partitions=4)
'''


class Cli(SendCli):
    def __init__(self, cwd: Path, url: str) -> None:
        super().__init__(cwd, url, APP)

    def __call__(self, *args: str | bytes, stdin: bytes | None = None,
                 app: bool = True) -> subprocess.CompletedProcess[str]:
        return self.send(*args, stdin=stdin, app=app)

    def depth(self) -> int:
        async def go() -> int:
            broker = open_broker(self.url)
            try:
                return (await broker.stats("orders")).depth
            except UnknownQueue:  # refused before the app was declared: nothing stored
                return 0
            finally:
                await broker.close()

        return asyncio.run(go())


@pytest.fixture(params=["sqlite", "nats"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    return Cli(tmp_path, broker_url(request, tmp_path, request.param))


@pytest.fixture
def sqlite_cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path, f"sqlite:///{tmp_path / 's.db'}")


# -- streams ---------------------------------------------------------------------------------------
def test_send_appends_to_a_stream_that_a_group_reads_in_order_per_key(cli: Cli) -> None:
    for n in range(3):
        sent = cli("clicks", json.dumps({"user": "ann", "n": n}), "--key", "ann")
        assert sent.returncode == 0 and "appended 1 event(s) to clicks" in sent.stderr, sent.stderr
    lines = "".join(json.dumps({"user": user, "n": n}) + "\n" for n in range(3, 300)
                    for user in ("bob",))
    piped = cli("clicks", "-", "--key", "bob", stdin=lines.encode())
    assert piped.returncode == 0 and "appended 297 event(s) to clicks" in piped.stderr, piped.stderr
    keyless = cli("clicks", "-", stdin=b'{"user": "cy", "n": 0}\n{"user": "cy", "n": 1}\n')
    assert keyless.returncode == 0, keyless.stderr

    app = App("edges")
    clicks = app.stream("clicks", partitions=4)
    seen: list[tuple[str, int, str | None]] = []

    @app.function(clicks.group("counts", checkpoint_every=50), concurrency=4)
    async def count(event: Event[dict[str, Any]]) -> None:
        assert event.data is not None
        seen.append((event.data["user"], event.data["n"], event.key))

    async def consume() -> None:
        async with Runtime(app, cli.url):
            await until(lambda: len(seen) >= 302, "302 clicks counted")

    asyncio.run(consume())
    assert [n for user, n, _ in seen if user == "ann"] == [0, 1, 2]
    assert [n for user, n, _ in seen if user == "bob"] == list(range(3, 300))
    assert {key for user, _, key in seen if user != "cy"} == {"ann", "bob"}
    assert sorted(n for user, n, key in seen if user == "cy" and key is None) == [0, 1]


def test_a_stream_takes_no_delay_and_refuses_an_oversize_line_whole(sqlite_cli: Cli) -> None:
    line = one_line_error(sqlite_cli("clicks", "{}", "--delay", "5s"))
    assert "cannot delay" in line

    lines = b'{"n": 1}\n' + json.dumps({"pad": "x" * 300_000}).encode() + b'\n'
    line = one_line_error(sqlite_cli("clicks", "-", stdin=lines))
    assert "stdin line 2" in line and "nothing was sent" in line


def test_an_unknown_target_names_queues_topics_and_streams(sqlite_cli: Cli) -> None:
    line = one_line_error(sqlite_cli("nope", "{}"))
    assert "'nope'" in line and "queues: orders" in line and "streams: clicks" in line


async def test_a_stream_send_cut_short_says_which_lines_to_send_again() -> None:
    from swell.cli.send import store_in_batches

    messages = [Message(body=b"{}") for _ in range(1200)]
    calls = 0

    async def put(target: str, batch: Any) -> list[bool]:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise BrokerUnavailable("NATS took no message")
        return [True] * len(batch)

    with pytest.raises(SwellError) as info:
        await store_in_batches(put, "clicks", messages, list(range(1, 1201)), batch=500,
                               dedup_window_s=None, atomic=True)
    message = str(info.value)
    assert "stored 1,000 of 1,200 event(s) (lines 1-1000)" in message
    assert "send only the lines after line 1000" in message and "dedup window" not in message


# -- input that is not JSON -----------------------------------------------------------------------
def test_json_nested_too_deep_is_one_line(sqlite_cli: Cli) -> None:
    (sqlite_cli.cwd / "deep.json").write_text("[" * 1500 + "]" * 1500)
    line = one_line_error(sqlite_cli("orders", "@deep.json"))
    assert "@deep.json" in line and "nested 1,500 levels deep" in line
    line = one_line_error(sqlite_cli("orders", "-", stdin=b"{}\n" + b"[" * 5000 + b"]" * 5000))
    assert "stdin line 2" in line and "nested 5,000 levels deep" in line
    assert sqlite_cli.depth() == 0


def test_bytes_that_are_not_utf8_are_one_line(sqlite_cli: Cli) -> None:
    line = one_line_error(sqlite_cli("orders", "-", stdin=b'{"a": 1}\n{"a": "caf\xe9"}\n'))
    assert "stdin line 2" in line and "not UTF-8" in line and "0xe9" in line
    line = one_line_error(sqlite_cli("orders", b'{"a": "\xff"}'))
    assert "not UTF-8" in line
    line = one_line_error(sqlite_cli("orders", "{}", "--key", b"k\xff"))
    assert "--key" in line and "not UTF-8" in line
    assert sqlite_cli.depth() == 0


@pytest.mark.parametrize("text", [r'"\ud800"', r'{"a": "x\udc00"}', r'["\ud83d", "\ude00"]'])
def test_half_a_surrogate_pair_is_named_not_called_truncated(sqlite_cli: Cli, text: str) -> None:
    line = one_line_error(sqlite_cli("orders", text))
    assert "surrogate" in line and "truncated" not in line


def test_a_whole_surrogate_pair_and_an_escaped_backslash_are_fine(sqlite_cli: Cli) -> None:
    result = sqlite_cli("orders", r'["\ud83d\ude00", "\\ud800"]')
    assert result.returncode == 0, result.stderr


def test_a_utf8_byte_order_mark_is_ignored(sqlite_cli: Cli) -> None:
    (sqlite_cli.cwd / "bom.json").write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert sqlite_cli("orders", "@bom.json").returncode == 0
    piped = sqlite_cli("orders", "-", stdin=b'\xef\xbb\xbf{"a": 2}\n{"a": 3}\n')
    assert piped.returncode == 0, piped.stderr
    assert sqlite_cli.depth() == 3


@pytest.mark.parametrize(("url", "says"), [
    ("nats://", "has no host"), ("nats://:4222", "has no host"),
    ("nats://127.0.0.1:99999", "not a number from 1 to 65535"),
    ("nats://127.0.0.1:abc", "not a number from 1 to 65535"),
    ("nats://127.0.0.1:4222,:5", "':5' has no host"), ("nats://[::1", "Invalid IPv6")])
def test_a_nats_url_without_host_or_with_a_bad_port_says_so(sqlite_cli: Cli, url: str,
                                                            says: str) -> None:
    started = time.monotonic()
    line = one_line_error(sqlite_cli("orders", "{}", "--broker", url, app=False))
    assert says in line and "no answer" not in line
    assert time.monotonic() - started < 30
