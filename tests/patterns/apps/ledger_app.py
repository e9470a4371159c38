"""The app ``tests/patterns/test_idempotency_kills.py`` runs and kills: payments, each sent twice, whose
handler writes a ledger row through the dedup sink (the row and its key in one transaction)."""

from __future__ import annotations

import os
import random
import sqlite3
import time
from typing import Any

from swell import App, Event, Idempotency
from swell.patterns.sinks import claim

LEDGER = os.environ["SWELL_TEST_LEDGER"]


def payment_id(event: Event[Any]) -> Any:
    assert event.data is not None
    return event.data["payment_id"]


app = App("ledger")
payments = app.queue("payments", visibility_timeout=2, max_receives=0)


@app.function(payments, idempotency=Idempotency(key=payment_id), concurrency=8)
def pay(data: dict[str, Any]) -> None:
    time.sleep(random.uniform(0.001, 0.004))  # somewhere in here a SIGKILL may land
    conn = sqlite3.connect(LEDGER, timeout=30)
    try:
        with conn:  # the ledger row and its key commit together, or neither does
            if claim(conn, data["payment_id"], scope="pay"):
                conn.execute("INSERT INTO ledger (payment_id, amount) VALUES (?, ?)",
                             (data["payment_id"], data["amount"]))
    finally:
        conn.close()
