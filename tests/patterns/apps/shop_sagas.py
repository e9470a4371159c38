"""The saga app the process tests run (``swell run``): a checkout of three steps — reserve money,
reserve stock, capture the payment — each with its compensation, over a SQLite ledger that
outlives every process (``SWELL_TEST_LEDGER``).

Every run of an action or compensation adds a row to ``runs``; every effect is a row of
``effects`` keyed by the run's idempotency key, written with ``INSERT OR IGNORE``, so a repeated
run has no second effect and the test can count attempts against effects. A compensation undoes
its action's effect if there is one (looked up by ``ctx.action_key``), and nothing otherwise.

What fails is in each order's data: ``fail_at`` names a step that fails on every attempt (after
its effect if ``fail_after_effect``), ``flaky`` makes every step fail that many first attempts,
``poison`` makes the stock's compensation fail forever.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3

from pydantic import BaseModel

from swell import App, Retry
from swell.patterns.sagas import SagaContext

SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, saga TEXT NOT NULL, kind TEXT NOT NULL,
                                    amount INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, key TEXT NOT NULL, saga TEXT NOT NULL,
                                 kind TEXT NOT NULL, outcome TEXT NOT NULL, pid INTEGER NOT NULL);
"""

app = App("shop")
checkout = app.saga("checkout", step_timeout="1s", visibility_timeout=1.0, concurrency=32,
                    retry=Retry(attempts=3, backoff=0.05, max_backoff=0.2),
                    compensation_retry=Retry(attempts=3, backoff=0.05, max_backoff=0.2))


class Order(BaseModel):
    order: str
    amount: int
    qty: int = 1
    fail_at: str | None = None
    fail_after_effect: bool = False
    flaky: int = 0
    poison: bool = False


class Injected(Exception):
    """A failure the test asked for."""


def create_ledger(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA)
    conn.close()


def _record(key: str, saga: str, kind: str, amount: int | None, look_up: str | None) -> str:
    """One run in one transaction: its row in ``runs`` and, if it has one, its effect."""
    conn = sqlite3.connect(os.environ["SWELL_TEST_LEDGER"], isolation_level=None, timeout=10.0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if look_up is not None and conn.execute("SELECT 1 FROM effects WHERE key = ?",
                                                    (look_up,)).fetchone() is None:
                outcome = "nothing to undo"
            elif amount is None:
                outcome = "failed"
            else:
                cur = conn.execute("INSERT OR IGNORE INTO effects VALUES (?, ?, ?, ?)",
                                   (key, saga, kind, amount))
                outcome = "effect" if cur.rowcount else "absorbed"
            conn.execute("INSERT INTO runs (key, saga, kind, outcome, pid) VALUES (?, ?, ?, ?, ?)",
                         (key, saga, kind, outcome, os.getpid()))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return outcome
    finally:
        conn.close()


async def act(order: Order, ctx: SagaContext, kind: str, amount: int) -> dict[str, int]:
    await asyncio.sleep(random.uniform(0.0, 0.03))  # long enough for a kill to land mid-step
    if ctx.attempt <= order.flaky or (order.fail_at == ctx.step and not order.fail_after_effect):
        await asyncio.to_thread(_record, ctx.idempotency_key, ctx.saga_id, kind, None, None)
        raise Injected(f"{ctx.step} failed (attempt {ctx.attempt})")
    await asyncio.to_thread(_record, ctx.idempotency_key, ctx.saga_id, kind, amount, None)
    await asyncio.sleep(random.uniform(0.0, 0.03))  # and between the effect and its record
    if order.fail_at == ctx.step:
        raise Injected(f"{ctx.step} failed after its effect (attempt {ctx.attempt})")
    return {kind: amount}


async def undo(order: Order, ctx: SagaContext, kind: str, amount: int) -> None:
    await asyncio.sleep(random.uniform(0.0, 0.03))
    if order.poison and ctx.step == "reserve_stock":
        await asyncio.to_thread(_record, ctx.idempotency_key, ctx.saga_id, kind, None, None)
        raise Injected("the warehouse refuses every release")
    await asyncio.to_thread(_record, ctx.idempotency_key, ctx.saga_id, kind, amount, ctx.action_key)
    await asyncio.sleep(random.uniform(0.0, 0.03))


@checkout.step()
async def reserve_money(order: Order, ctx: SagaContext) -> dict[str, int]:
    return await act(order, ctx, "money reserved", order.amount)


@checkout.compensation("reserve_money")
async def release_money(order: Order, result: dict[str, int] | None, ctx: SagaContext) -> None:
    await undo(order, ctx, "money released", order.amount)


@checkout.step()
async def reserve_stock(order: Order, ctx: SagaContext) -> dict[str, int]:
    return await act(order, ctx, "stock reserved", order.qty)


@checkout.compensation("reserve_stock")
async def release_stock(order: Order, result: dict[str, int] | None, ctx: SagaContext) -> None:
    await undo(order, ctx, "stock released", order.qty)


@checkout.step()
async def capture_payment(order: Order, ctx: SagaContext) -> dict[str, int]:
    return await act(order, ctx, "money captured", order.amount)


@checkout.compensation("capture_payment")
async def refund_payment(order: Order, result: dict[str, int] | None, ctx: SagaContext) -> None:
    await undo(order, ctx, "money refunded", order.amount)
