"""Idempotency under SIGKILL: payments sent twice each, the runtime killed at random points in a
loop, the handler writing its ledger row through the dedup sink. Exactly one row per payment."""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from support.swellprocs import EXIT_S, AppConfig, Swell, wait_for
from swell import Broker, Producer

pytestmark = pytest.mark.slow

APP = Path(__file__).parent / "apps" / "ledger_app.py"
CONFIG = AppConfig(visibility_s=2, max_receives=0, sleep_s=0, concurrency=8)




@pytest.mark.timeout(240)
def test_sigkill_in_a_loop_leaves_exactly_one_ledger_row_per_payment(swell: Swell,
                                                                     monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    n = 1000
    ledger = swell.dir / "ledger.db"
    with sqlite3.connect(ledger) as conn:
        conn.execute("CREATE TABLE ledger (payment_id TEXT NOT NULL, amount REAL NOT NULL)")
    monkeypatch.setenv("SWELL_TEST_LEDGER", str(ledger))

    first = swell.start(CONFIG, app=APP)
    swell.wait_ready(first)

    async def send(broker: Broker) -> None:
        producer = Producer(broker, source="/tests/ledger")
        ids = [f"p-{i}" for i in range(n)]
        for batch in (ids, random.Random(7).sample(ids, n)):  # every payment twice, two events
            for k in range(0, n, 250):
                await producer.send_events("payments", [
                    producer.event("payments", {"payment_id": p, "amount": 1.0})
                    for p in batch[k:k + 250]])

    swell._run(send)
    rng = random.Random(11)
    kills, proc = 0, first
    while True:
        time.sleep(rng.uniform(0.2, 1.2))
        left = swell.stats("payments").total
        if left == 0:
            break
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(EXIT_S) == -signal.SIGKILL
        kills += 1
        proc = swell.start(CONFIG, app=APP)
        swell.wait_ready(proc)
        if kills >= 12:  # enough kills: let the last one finish the work
            wait_for(lambda: swell.stats("payments").total == 0, 90, "the queue to drain")
            break
    assert swell.terminate(proc) == 0

    with sqlite3.connect(ledger) as conn:
        rows = dict(conn.execute("SELECT payment_id, count(*) FROM ledger GROUP BY payment_id"))
    lost = n - len(rows)
    duplicated = sum(c - 1 for c in rows.values())
    print(f"\n{2 * n} deliveries of {n} payments, {kills} SIGKILLs: ledger rows "
          f"{sum(rows.values())}, lost {lost}, duplicated {duplicated}")
    assert kills >= 3, "the work finished before the kills could prove anything"
    assert lost == 0 and duplicated == 0
