"""The app that ``tests/patterns/test_outbox.py`` runs under ``swell run``, configured by environment.

Its relay publishes the outbox of ``SWELL_TEST_DB`` to the queue ``emails``; its one function
"sends" each e-mail by writing a row to ``SWELL_TEST_EFFECTS`` under a ``claim`` of the event id,
and appends a line per call to ``SWELL_TEST_CALLS`` (calls may repeat; effects may not).

``SWELL_TEST_CRASH=before-mark`` kills the process (SIGKILL, from inside the relay's database
connection) the moment the relay marks its first rows sent: after they were published, before
the mark is written.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from typing import Any, Self

from swell import App, Context
from swell.patterns.sinks import claim

DB = os.environ["SWELL_TEST_DB"]
EFFECTS = os.environ["SWELL_TEST_EFFECTS"]
CALLS = os.open(os.environ["SWELL_TEST_CALLS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
CRASH = os.environ.get("SWELL_TEST_CRASH", "")

app = App("outbox-test")
emails = app.queue("emails", visibility_timeout=2, max_receives=20)


class KillOnMark(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        if sql.startswith("UPDATE swell_outbox"):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().execute(sql, parameters)


class Crashing(sqlite3.Connection):
    def cursor(self, factory: Any = KillOnMark) -> Any:
        return super().cursor(factory)


def connect() -> sqlite3.Connection:
    if CRASH == "before-mark":
        return sqlite3.connect(DB, timeout=10, factory=Crashing)
    return sqlite3.connect(DB, timeout=10)


app.outbox_relay(connect, interval="50ms", batch=20)


@app.function(emails, concurrency=4)
def send_email(data: dict[str, Any], ctx: Context) -> None:
    os.write(CALLS, ctx.event.id.encode() + b"\n")
    conn = sqlite3.connect(EFFECTS, timeout=10)
    try:
        with conn:
            if claim(conn, ctx.event.id, scope="send_email"):
                conn.execute("INSERT INTO sent (event_id, address) VALUES (?, ?)",
                             (ctx.event.id, data["to"]))
    finally:
        conn.close()
