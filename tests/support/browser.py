"""Headless Chromium for the dashboard's tests, driven by Playwright for Python: the OS's own
``chromium`` (Debian's package, which ``.ci/run`` installs), never a browser Playwright downloads.
Without Playwright or Chromium a test skips here and fails under ``CI=true``, as a missing server
does (``support.servers``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, NoReturn

from support.servers import missing

if TYPE_CHECKING:
    from playwright.async_api import Browser

CHROMIUM = "/usr/bin/chromium"
#: headless, and nothing that phones home or waits on a GPU (a container has neither)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """``SWELL_CHROMIUM``, else ``chromium`` on PATH, else Debian's path; ``None``: none."""
    for path in (os.environ.get("SWELL_CHROMIUM"), shutil.which("chromium"), CHROMIUM):
        if path and os.access(path, os.X_OK):
            return path
    return None


def missing_browser(reason: str) -> NoReturn:
    missing(f"no headless browser: {reason}")


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """The system's Chromium, headless, closed after the block."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing_browser("playwright is not installed (pip install playwright, in swell[dev])")
    path = chromium_path()
    if path is None:
        missing_browser(f"no chromium on PATH nor at {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()
