"""The dashboard (``swell/web/static/``) in headless Chromium, against a running Runtime and the
admin API on a free loopback port, as an operator uses it: the page loads with no console error;
a burst of events shows on the depth and units charts within 3 s (read from the data the charts
expose, not from pixels), and a screenshot of the page under that load is saved for the README; a
parcel for a warehouse nobody configured is dead-lettered, found in the DLQ browser with its
error, and handled once the warehouse exists and the letter is redriven by a click; a saga is
paused and resumed from the page, its log saying who and why; a function's intake is paused and
resumed; a wrong token gets a 401 that the page shows as one, and changes nothing; on a phone the
page needs no sideways scrolling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import pytest_asyncio
from pydantic import BaseModel

from support.browser import chromium
from support.eventually import until
from swell import App, Auto
from swell.brokers.memory import MemoryBroker
from swell.patterns.sagas import Saga, SagaContext
from swell.runtime.runtime import Runtime
from swell.runtime.status import read_saga
from swell.web.admin import runtime_server
from swell.web.server import bind

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "a-test-admin-token"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"
BURST = 120
CHARTS_WITHIN_MS = 3000  # the bound: a burst is on the charts within 3 s


class Order(BaseModel):
    id: str
    amount: int


class Parcel(BaseModel):
    id: str
    warehouse: str


@dataclass
class Shop:
    """The app under the page, and what its handlers did."""

    app: App
    checkout: Saga
    packing: asyncio.Event = field(default_factory=asyncio.Event)
    """``pack`` waits on it: a burst stays in the queue (and the units busy) while it is clear."""
    reserving: asyncio.Event = field(default_factory=asyncio.Event)
    """The checkout saga's first step waits on it."""
    warehouses: set[str] = field(default_factory=lambda: {"leeds"})
    shipped: list[str] = field(default_factory=list)
    captured: list[str] = field(default_factory=list)


def shop() -> Shop:
    app = App("dash")
    s = Shop(app, app.saga("checkout", step_timeout="30s"))

    @app.function(app.queue("orders"), concurrency=Auto(max=4, target_wait="1s"))
    async def pack(order: Order) -> None:
        await s.packing.wait()

    # one receive: a parcel that fails is dead-lettered at once
    @app.function(app.queue("parcels", max_receives=1), concurrency=2)
    async def ship(parcel: Parcel) -> None:
        if parcel.warehouse not in s.warehouses:
            raise LookupError(f"no warehouse {parcel.warehouse!r} is configured")
        s.shipped.append(parcel.id)

    @s.checkout.step()
    async def reserve(order: Order, ctx: SagaContext) -> dict[str, str]:
        await s.reserving.wait()
        return {"hold": f"h-{order.id}"}

    @s.checkout.step()
    async def capture(order: Order, ctx: SagaContext) -> dict[str, str]:
        s.captured.append(order.id)
        return {"charge": f"c-{order.id}"}

    return s


@dataclass
class Site:
    shop: Shop
    rt: Runtime
    url: str
    browser: Browser

    async def api(self, path: str) -> Any:
        async with httpx.AsyncClient(base_url=self.url) as client:
            reply = await client.get(f"/api/v1/{path}")
            reply.raise_for_status()
            return reply.json()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site() -> AsyncIterator[Site]:
    s = shop()
    broker = MemoryBroker()
    rt = Runtime(s.app, broker, tick_s=0.25)
    server = runtime_server(rt, bind("127.0.0.1", 0), TOKEN)
    await rt.start()
    try:
        await server.start()
        try:
            async with chromium() as browser:
                yield Site(s, rt, server.url, browser)
        finally:
            await server.stop()
    finally:
        s.packing.set()  # (held handlers end)
        s.reserving.set()
        await rt.stop(1.0)
        await broker.close()


@asynccontextmanager
async def opened(site: Site, *, width: int = 1280, height: int = 900,
                 token: str | None = TOKEN) -> AsyncIterator[tuple[Page, list[str]]]:
    """A fresh tab on the dashboard (its own sessionStorage), live, with ``token`` given; and the
    console errors and uncaught exceptions it has had so far."""
    context = await site.browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    try:
        await page.goto(site.url + "/")
        await page.wait_for_function("document.getElementById('live').dataset.ok === 'true'")
        if token is not None:
            await page.get_by_label("Admin token").fill(token)
            await page.get_by_label("Operator").fill("ada")
            await page.get_by_role("button", name="Use", exact=True).click()
        yield page, errors
    finally:
        await context.close()


def chart_value(chart: str, series: str, *, at_least: float = 0, at_most: float = 1e300) -> str:
    """A page condition: chart ``chart``'s latest ``series`` value is in ``[at_least, at_most]``
    (known, and so drawn)."""
    return (f"(() => {{ const f = document.querySelector('[data-chart=\"{chart}\"]');"
            f" const v = f && f.getAttribute('data-latest-{series}');"
            f" return v !== null && v !== '' && Number(v) >= {at_least}"
            f" && Number(v) <= {at_most}; }})()")


async def test_a_burst_shows_on_the_charts_within_3_s(site: Site) -> None:
    async with opened(site) as (page, errors):
        await page.get_by_label("Function shown in the charts").select_option("pack")
        await page.wait_for_function(chart_value("depth", "depth"))
        for i in range(BURST):
            await site.rt.send("orders", {"id": f"o-{i}", "amount": i})
        # from here, 3 s: the depth and the units (decided, busy) the burst brought
        await page.wait_for_function(chart_value("depth", "depth", at_least=BURST // 2),
                                     timeout=CHARTS_WITHIN_MS)
        await page.wait_for_function(chart_value("units", "busy", at_least=1),
                                     timeout=CHARTS_WITHIN_MS)
        await page.wait_for_function(chart_value("units", "desired", at_least=1),
                                     timeout=CHARTS_WITHIN_MS)
        await page.locator("#queues").scroll_into_view_if_needed()  # (read while in sight)
        await page.wait_for_function(  # the queues table too, for the picture
            "Number(document.querySelector('#queues-table tr[data-key=\"orders\"]')"
            "?.cells[1].textContent) > 0")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
        site.shop.packing.set()  # the burst drains, and the charts say so
        await page.wait_for_function(chart_value("depth", "depth", at_most=0))
        assert errors == []


async def test_a_dead_letter_is_redriven_from_the_page_and_handled(site: Site) -> None:
    await site.rt.send("parcels", {"id": "p-1", "warehouse": "york"})
    async with opened(site) as (page, errors):
        await page.locator("#dlq").scroll_into_view_if_needed()  # (read while in sight)
        dlq = page.locator('#dlq-table tr[data-key="parcels.dlq"]')
        await dlq.get_by_role("button", name="Show").click()
        letter = page.locator("#letters-table tbody tr", has_text="no warehouse 'york'")
        await letter.wait_for()
        assert site.shop.shipped == []
        site.shop.warehouses.add("york")  # the operator configures it, then redrives
        await letter.get_by_role("button", name="Redrive").click()
        await until(lambda: site.shop.shipped == ["p-1"], "the redriven parcel shipped")
        await page.locator("#letters-table caption", has_text="no letters").wait_for()
        assert errors == []


async def test_a_saga_is_paused_and_resumed_from_the_page(site: Site) -> None:
    await site.shop.checkout.start({"id": "o-9", "amount": 5}, id="o-9")
    broker = site.rt.broker

    def state(want: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return (await read_saga(broker, "checkout/o-9")).state == want
        return check

    async def step_recorded() -> bool:
        return (await read_saga(broker, "checkout/o-9")).steps[0].state == "done"

    async with opened(site) as (page, errors):
        await page.locator("#sagas").scroll_into_view_if_needed()  # (read while in sight)
        row = page.locator('#sagas-table tr[data-key="checkout/o-9"]')
        await row.get_by_role("button", name="Open").click()
        await page.get_by_label("Reason").fill("audit of o-9")
        await page.get_by_role("button", name="Pause", exact=True).click()
        await until(state("paused"), "the saga paused in the broker")
        site.shop.reserving.set()  # the step being run finishes; the next one waits
        await until(step_recorded, "the running step recorded")
        assert site.shop.captured == []
        await page.locator("#saga").get_by_text("paused", exact=True).first.wait_for()
        await page.get_by_role("button", name="Resume", exact=True).click()
        await until(state("completed"), "the resumed saga completed")
        assert site.shop.captured == ["o-9"]
        log = (await read_saga(broker, "checkout/o-9")).history
        assert [(e.actor, e.event, e.reason) for e in log if e.actor.startswith("operator")][:1] == [
            ("operator ada", "paused", "audit of o-9")]
        assert errors == []


async def test_intake_paused_and_a_wrong_token_refused(site: Site) -> None:
    async with opened(site, token="not-the-token") as (page, errors):
        row = page.locator('#functions-table tr[data-key="ship"]')
        await row.get_by_role("button", name="Pause").click()
        await page.get_by_role("alert").filter(has_text="401 unauthorized").wait_for()
        assert not (await site.api("functions/ship"))["paused"]
        assert all("401" in e for e in errors), errors  # the refused request, nothing else
        await page.get_by_label("Admin token").fill(TOKEN)
        await page.get_by_role("button", name="Use", exact=True).click()
        await row.get_by_role("button", name="Pause").click()
        await row.get_by_role("button", name="Resume").wait_for()
        assert (await site.api("functions/ship"))["paused"]
        await asyncio.sleep(4 * site.rt.tick_s)  # (a node stops taking work at its next tick)
        await site.rt.send("parcels", {"id": "p-2", "warehouse": "leeds"})
        await asyncio.sleep(1.0)
        assert "p-2" not in site.shop.shipped  # intake paused: the parcel waits in its queue
        await row.get_by_role("button", name="Resume").click()
        await row.get_by_role("button", name="Pause").wait_for()
        assert not (await site.api("functions/ship"))["paused"]
        await until(lambda: "p-2" in site.shop.shipped, "the waiting parcel shipped on resume")


async def test_on_a_phone_nothing_scrolls_sideways_and_every_control_is_named(site: Site) -> None:
    async with opened(site, width=390, height=844) as (page, errors):
        await page.wait_for_function(chart_value("depth", "depth"))
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        widths = await page.evaluate(
            "[...document.querySelectorAll('.chart svg')].map(s => s.getBoundingClientRect().right)")
        assert widths and max(widths) <= 390
        unnamed = await page.evaluate(  # every field has a label, every button a name
            "[...document.querySelectorAll('input, select')].filter(e => !e.labels.length)"
            ".map(e => e.id).concat([...document.querySelectorAll('button')]"
            ".filter(b => !(b.textContent.trim() || b.getAttribute('aria-label'))).map(b => b.id))")
        assert unnamed == []
        assert errors == []
