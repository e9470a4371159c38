"""Dedup sinks: ``claim`` keys an effect in the caller's own transaction, so a replayed event writes
nothing new, and a rolled-back one keeps nothing."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from swell import ConfigError
from swell.patterns.sinks import claim, claim_async


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE emails (event_id TEXT, address TEXT)")
    conn.close()
    return path


@pytest.fixture
def conn(db: Path) -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(db)
    yield c
    c.close()


def handle(conn: sqlite3.Connection, event_id: str, address: str) -> bool:
    """A handler's body: the effect and its claim in one transaction."""
    with conn:
        if not claim(conn, event_id, scope="send_email"):
            return False
        conn.execute("INSERT INTO emails VALUES (?, ?)", (event_id, address))
    return True


def emails(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return conn.execute("SELECT event_id, address FROM emails ORDER BY rowid").fetchall()


def test_a_second_claim_of_a_key_is_refused_and_writes_nothing(conn: sqlite3.Connection) -> None:
    assert handle(conn, "e-1", "a@example.com") is True
    assert handle(conn, "e-1", "a@example.com") is False  # the replay
    assert handle(conn, "e-2", "b@example.com") is True
    assert emails(conn) == [("e-1", "a@example.com"), ("e-2", "b@example.com")]
    keys = conn.execute("SELECT scope, key FROM swell_effects ORDER BY key").fetchall()
    assert keys == [("send_email", "e-1"), ("send_email", "e-2")]


def test_a_rolled_back_transaction_keeps_neither_key_nor_effect(conn: sqlite3.Connection) -> None:
    with pytest.raises(RuntimeError), conn:
        assert claim(conn, "e-1")
        conn.execute("INSERT INTO emails VALUES ('e-1', 'a@example.com')")
        raise RuntimeError("the handler failed after its write")
    assert emails(conn) == []
    assert conn.execute("SELECT count(*) FROM swell_effects").fetchone() == (0,)
    assert handle(conn, "e-1", "a@example.com") is True  # the retry does the work
    assert emails(conn) == [("e-1", "a@example.com")]


def test_scopes_and_tables_keep_keys_apart(conn: sqlite3.Connection) -> None:
    with conn:
        assert claim(conn, "e-1", scope="billing")
        assert claim(conn, "e-1", scope="review")  # two subscriptions of one topic: one event id
        assert not claim(conn, "e-1", scope="review")
        assert claim(conn, "e-1", table="order")  # a keyword is a table name too (it is quoted)
        assert not claim(conn, "e-1", table="order")
    assert conn.execute('SELECT count(*) FROM "order"').fetchone() == (1,)


@pytest.mark.parametrize("table", ["", "1abc", "effects; DROP TABLE emails", 'a"b', "a-b",
                                   "a" * 64, "naïve"])
def test_a_table_name_that_is_not_a_plain_identifier_is_refused(conn: sqlite3.Connection,
                                                                table: str) -> None:
    with pytest.raises(ConfigError, match="bad table name"):
        claim(conn, "e-1", table=table)
    assert emails(conn) == []
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"emails"}


def test_an_autocommit_connection_with_no_transaction_open_is_refused(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        with pytest.raises(ConfigError, match="open transaction"):
            claim(conn, "e-1")  # the key would commit alone, before the effect
        conn.execute("BEGIN")
        assert claim(conn, "e-1")
        conn.execute("ROLLBACK")  # the table created in that transaction goes with it
        conn.execute("BEGIN")
        assert claim(conn, "e-1")
        conn.execute("COMMIT")
        assert conn.execute("SELECT key FROM swell_effects").fetchall() == [("e-1",)]
    finally:
        conn.close()


async def test_other_connections_and_keys_are_refused(conn: sqlite3.Connection) -> None:
    with pytest.raises(ConfigError, match="sqlite3 or psycopg"):
        claim(object(), "e-1")
    with pytest.raises(ConfigError, match="key"):
        claim(conn, "")
    with pytest.raises(ConfigError, match="use claim"):
        await claim_async(conn, "e-1")


def test_racing_deliveries_of_one_event_write_one_effect(db: Path) -> None:
    """Eight connections claim the same keys at once (a redelivery racing the first delivery):
    each key is claimed by exactly one of them, and each effect is written once."""
    wins: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        c = sqlite3.connect(db, timeout=30)
        try:
            start.wait()
            for i in range(50):
                if handle(c, f"e-{i}", f"{i}@example.com"):
                    with lock:
                        wins.append(f"e-{i}")
        finally:
            c.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(wins) == sorted(f"e-{i}" for i in range(50))
    check = sqlite3.connect(db)
    try:
        assert check.execute("SELECT count(*), count(DISTINCT event_id) FROM emails").fetchone() \
            == (50, 50)
    finally:
        check.close()
