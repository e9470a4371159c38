"""Cost accounting in the runtime: unit-seconds integrated at each change (on the runtime's
clock: a run on a ``ManualClock`` whose units are scripted adds up to what the script says), what
a function declares (memory, budget, workload) checked where it is declared, prices read from
``[tool.swell.cost]`` before anything starts, the budget given to ``Auto`` and priced per event at
what its events measured, and the cost in the status record."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from support.eventually import until
from swell import App, AppError, Auto, ConfigError, Context, ManualClock, Retry
from swell.brokers.memory import MemoryBroker
from swell.core.cost import Prices
from swell.runtime.cluster import FunctionStatus
from swell.runtime.cost import Usage, budgeted, cost_record, pricing, reprice
from swell.runtime.runtime import Runtime
from swell.runtime.status import read_functions, snapshot_of
from swell.scaling.base import Decision
from swell.scaling.controllers import Fixed
from swell.scaling.signals import Signals


def test_unit_seconds_are_integrated_at_each_change() -> None:
    clock = ManualClock()
    usage = Usage(clock.monotonic)
    clock.advance(5.0)  # nothing held yet
    usage.held(2)
    clock.advance(1.5)
    assert usage.seconds() == pytest.approx(3.0)  # the units held now, counted up to now
    usage.held(4)
    clock.advance(0.25)
    usage.held(0)
    clock.advance(10.0)
    assert usage.seconds() == pytest.approx(4.0)
    assert usage.units == 0


def test_what_was_recent_is_the_last_minute() -> None:
    clock = ManualClock()
    usage = Usage(clock.monotonic)
    clock.advance(10.0)
    assert usage.recent((1.0, 4.0)) == (10.0, (1.0, 4.0))  # the first: since the start, from 0
    for _ in range(20):  # then flat for 100 s
        clock.advance(5.0)
        span, grown = usage.recent((1.0, 4.0))
    assert 60.0 <= span <= 65.0 and grown == (0.0, 0.0)


class Script:
    """Units by decision, so what they add up to is known before the run."""

    min_units, max_units = 0, 8

    def __init__(self, plan: list[int]) -> None:
        self.plan, self.made = plan, 0

    def decide(self, s: Signals) -> Decision:
        self.made += 1
        return Decision(self.plan[min(self.made - 1, len(self.plan) - 1)], "scripted")


async def test_unit_seconds_are_the_units_scaled_to_on_the_runtimes_clock() -> None:
    """Not the executor's count integrated again (that would agree by construction): the units a
    script asked for, times the seconds the test moved the clock, against the status record."""
    plan = [2, 2, 5, 1, 3, 8, 4]
    gaps = [0.5, 0.5, 1.25, 0.5, 2.0, 0.75, 3.0]  # after each decision, until the next
    app = App("scripted")
    app.queue("q")

    @app.function("q", concurrency=Script(plan))
    async def work(data: dict[str, object]) -> None:
        pass

    clock = ManualClock()
    rt = Runtime(app, MemoryBroker(clock=clock), clock=clock)
    await rt.start()  # the first decision, at once
    assert rt._scaler is not None
    rt._scaler.cancel()  # the test ticks it
    await asyncio.gather(rt._scaler, return_exceptions=True)
    try:
        for gap in gaps[:-1]:
            clock.advance(gap)
            await asyncio.sleep(0)
            await rt.tick()
        clock.advance(gaps[-1])
        st = rt.functions["work"]
        assert isinstance(st.controller, Script) and st.controller.made == len(plan)
        cost = cost_record(st, Prices())
        assert cost.unit_s == pytest.approx(sum(u * g for u, g in zip(plan, gaps, strict=True)))
        assert cost.unit_s == pytest.approx(32.75)
    finally:
        await rt.stop(0.0)


async def test_a_bad_price_stops_the_start_before_anything_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(tmp_path, "gb_secnd = 0.1\n")
    monkeypatch.chdir(tmp_path)
    rt = Runtime(_app(), MemoryBroker())
    with pytest.raises(ConfigError, match="gb_secnd: unknown key"):
        await rt.start()
    await asyncio.sleep(0.05)  # (a task started would be running by now)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    assert not rt.running and rt.functions == {}


def _app(**kw: object) -> App:
    app = App("shop")
    app.queue("orders")

    @app.function("orders", **kw)  # type: ignore[arg-type]
    async def charge(order: dict[str, object]) -> None:
        pass

    return app


def test_what_a_function_declares_is_checked_there() -> None:
    fn = _app(mode="process", memory="512MiB", budget="$2/h").functions["charge"]
    assert (fn.memory, fn.budget_per_h, fn.workload) == (512 * 1024**2, 2.0, "charge")
    assert _app(workload="checkout", budget=0.5).functions["charge"].workload == "checkout"
    assert _app().functions["charge"].budget_per_h is None
    with pytest.raises(ConfigError, match="function 'charge': budget 'lots' is not a spend"):
        _app(budget="lots")
    with pytest.raises(AppError, match="memory= prices a process instance"):
        _app(memory="1GiB")
    with pytest.raises(ConfigError, match="function 'charge': memory"):
        _app(mode="process", memory="a bit")
    with pytest.raises(AppError, match=r"budget= caps Auto's max.*Fixed\(4\)"):
        _app(concurrency=4, budget="$1/h")
    with pytest.raises(AppError, match="workload must be a non-empty name"):
        _app(workload=" ")


def _project(folder: Path, cost: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(f'[tool.swell]\napp = "shop.py"\n\n[tool.swell.cost]\n{cost}')
    return folder


def test_prices_come_from_the_projects_pyproject(tmp_path: Path) -> None:
    assert pricing(_project(tmp_path / "none", "")) == Prices()
    given = pricing(_project(tmp_path / "given", 'gb_second = 0.00001\nmemory = "1GiB"\n'))
    assert (given.gb_second, given.memory, given.invocation) == (0.00001, 1024**3, 0.0000002)
    below = tmp_path / "given" / "src" / "deep"
    below.mkdir(parents=True)
    assert pricing(below) == given  # the nearest pyproject.toml upward
    with pytest.raises(ConfigError, match=r"pyproject.toml: \[tool.swell.cost\] invocaton: "
                                          "unknown key"):
        pricing(_project(tmp_path / "typo", "invocaton = 0.1\n"))


def test_the_budget_caps_the_runtimes_copy_of_auto() -> None:
    prices = Prices()
    fn = _app(mode="process", memory="256MiB", budget="$2/h").functions["charge"]
    auto = budgeted(fn, fn.controller(), prices)
    assert isinstance(auto, Auto) and auto.cap is not None
    assert auto.cap.per_hour == 2.0
    assert auto.cap.unit_second == pytest.approx(prices.gb_second / 4)
    assert auto.cap.per_event == prices.invocation + 2 * prices.broker_operation  # (until measured)
    assert isinstance(fn.concurrency, Auto) and fn.concurrency.cap is None  # the prototype: not
    plain = _app().functions["charge"]
    assert budgeted(plain, plain.controller(), prices).cap is None  # type: ignore[attr-defined]
    fixed = Fixed(2)
    assert budgeted(fn, fixed, prices) is fixed


async def test_the_cost_goes_in_the_status_record_and_the_snapshot() -> None:
    app = App("shop")
    app.queue("orders")
    app.queue("receipts")

    @app.function("orders", budget="$1/h", workload="checkout")
    async def charge(order: dict[str, object], ctx: Context) -> None:
        await ctx.publish("receipts", order)

    broker = MemoryBroker()
    async with Runtime(app, broker) as rt:
        for i in range(20):
            await rt.send("orders", {"i": i})
        await until(lambda: rt.functions["charge"].dispatcher.metrics.succeeded == 20)
        cost = snapshot_of(rt).functions[0].cost
        assert cost is not None
        assert (cost.workload, cost.mode, cost.invocations, cost.events) == (
            "checkout", "inline", 20, 20)
        assert cost.operations == 60  # a receive, an ack and a send each
        assert cost.unit_s > 0 and cost.dollars > 0 and cost.budget_per_h == 1.0

        async def recorded() -> bool:
            views = await read_functions(broker)
            c = views[0].nodes[0].cost if views else None
            return c is not None and c.invocations == 20
        await until(recorded, "a status record with the cost", timeout_s=10)
    await broker.close()


async def test_the_budget_prices_an_event_at_what_the_functions_events_took() -> None:
    """A handler that sends three events on per input, one that fails each event's first attempt:
    the cap's price per event is what the accounting charged them per event, not the least."""
    app = App("shop")
    app.queue("orders")
    app.queue("refunds")
    app.queue("receipts")

    @app.function("orders", budget="$1/h")
    async def fan(order: dict[str, object], ctx: Context) -> None:
        for part in ("receipt", "invoice", "ship"):
            await ctx.publish("receipts", {**order, "part": part})

    @app.function("refunds", budget="$1/h", retry=Retry(backoff=0.01))
    async def flaky(refund: dict[str, object], ctx: Context) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("payment API hiccup")

    p = Prices()
    broker = MemoryBroker()
    async with Runtime(app, broker) as rt:
        for i in range(10):
            await rt.send("orders", {"i": i})
            await rt.send("refunds", {"i": i})
        await until(lambda: all(st.dispatcher.metrics.finished == 10
                                for st in rt.functions.values()), timeout_s=10)
        for name, invocations, operations in (("fan", 1, 5), ("flaky", 2, 4)):
            st = rt.functions[name]
            reprice(st, p)
            assert isinstance(st.controller, Auto) and st.controller.cap is not None
            per_event = st.controller.cap.per_event
            assert per_event == pytest.approx(p.per_event(invocations, operations)), name
            cost = cost_record(st, p)
            charged = (cost.dollars - cost.unit_s * p.inline_unit_second) / cost.events
            assert per_event == pytest.approx(charged), name
            assert per_event > p.per_event()  # (the least: an invocation, a receive, an ack)
    await broker.close()


def test_a_status_record_without_a_cost_still_decodes() -> None:
    old = {"app": "a", "function": "f", "node": "n", "queue": "q", "mode": "inline",
           "controller": "Auto()", "desired": 1, "share": 1, "nodes": 1, "leader": "n",
           "decided_at": 0.0, "reason": "", "signals": {}, "succeeded": 0, "dead_lettered": 0,
           "at": 0.0, "obs": {"t": 0.0, "depth": 0, "in_flight": 0}}
    assert msgspec.json.decode(msgspec.json.encode(old), type=FunctionStatus).cost is None
