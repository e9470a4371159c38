"""The dashboard's cost on the runtime: the drain of ``throughput.py`` with and without a headless
browser showing the dashboard, in interleaved pairs; medians.

    python bench/dashboard.py [--pairs 5] [--n 100000]

Each drain runs in a fresh process, as ``swell run`` would serve it: ``--n`` events of ~100 B
queued in a fresh SQLite file while nothing runs (``throughput.prepare``), then a ``Runtime`` with
one no-op handler (``throughput.drain_app``) and its HTTP server (``runtime_server``: webhooks,
metrics, the admin API and the page) on a free loopback port. With the browser, a second process
has opened the page in the system's headless Chromium (Playwright driving
``/usr/bin/chromium``) before the runtime starts, and the page polls the overview and the
function's history every second, and the queues, streams, dead letters and sagas that are on
screen every five, for the whole drain. Rate = N / (``start()`` -> N-th handler done); also the
first -> last rate, the CPU time of the runtime's process per event (what the page's requests
cost it, whatever else the machine does) and how many API requests the page made during the
drain. At the end, what each of the page's requests costs the server's process (CPU per request,
20 of each asked by ``curl``, with the backlog queued), and so the page at its rate: a figure the
machine's noise moves far less than a drain rate. N is 100,000 rather than ``throughput.py``'s
20,000: a drain of 20,000 is over in about a second, before the page has polled more than once or
twice. The page reads the tables below its charts only while they are on screen: ``--height 4000``
shows them all, for what the page costs at most.

Pairs alternate their order (without-with, with-without, ...) so that a drift of the machine
weighs on both sides; each drain waits (up to 2 min) for the machine to be nearly idle first.
The issue's bound: with the browser, within 5 % of without (ratio of the medians >= 0.95).
Nothing is asserted: the table is the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import throughput as tb  # noqa: E402  (bench/ is not a package)
from benchinfo import machine, source_state  # noqa: E402

TOKEN = "bench-dashboard"
BOUND = 0.95
CHROMIUM = os.environ.get("SWELL_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# -- the browser, in a process of its own --------------------------------------------------------
async def browse(url: str, height: int) -> None:
    """Open the page; print ``ready`` once it polls; on a line on stdin (or its end), print how
    many API requests it made since ``ready`` and close."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = await browser.new_page(viewport={"width": 1280, "height": height})
        requests = [0]
        page.on("request", lambda r: requests.__setitem__(0, requests[0] + 1)
                if "/api/v1/" in r.url else None)
        await page.goto(url + "/")
        await page.wait_for_function("document.getElementById('live').dataset.ok !== undefined")
        await asyncio.sleep(1.5)  # past the first full history fetch: polling as it goes on
        requests[0] = 0
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        print(json.dumps({"requests": requests[0]}), flush=True)
        await browser.close()


# -- one drain, in a process of its own ----------------------------------------------------------
async def drain(n: int, with_browser: bool, height: int) -> dict[str, Any]:
    from swell import Runtime
    from swell.web.admin import runtime_server
    from swell.web.server import bind

    tally = tb.Tally(n)
    app = tb.drain_app(tally)
    url = f"sqlite:///{tempfile.mkdtemp(prefix='swell-bench-')}/drain.db"
    await tb.prepare(url, app, n, tb.DRAIN_QUEUE)
    rt = Runtime(app, url)
    server = runtime_server(rt, bind("127.0.0.1", 0), TOKEN)
    await server.start()
    browser = None
    requests = None
    try:
        if with_browser:
            browser = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--browse", server.url, "--height", str(height),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            assert browser.stdout is not None
            line = await asyncio.wait_for(browser.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise SystemExit(f"the browser did not open the page: {line!r}")
        t0, cpu0 = time.perf_counter(), time.process_time()
        await rt.start()
        try:
            async with asyncio.timeout(tb.DRAIN_TIMEOUT_S):
                await tally.done.wait()
        finally:
            cpu = time.process_time() - cpu0  # this process: the runtime and its HTTP server
            await rt.stop()
        if browser is not None:
            assert browser.stdin is not None and browser.stdout is not None
            browser.stdin.write(b"done\n")
            await browser.stdin.drain()
            requests = json.loads(await asyncio.wait_for(browser.stdout.readline(), 30))["requests"]
    finally:
        if browser is not None and browser.returncode is None:
            try:
                await asyncio.wait_for(browser.wait(), 10)
            except TimeoutError:
                browser.send_signal(signal.SIGKILL)
                await browser.wait()
        await server.stop()
    return {"rate": n / (tally.t_last - t0), "peer_rate": n / (tally.t_last - tally.t_first),
            "handled": tally.count, "requests": requests, "cpu_us_per_event": cpu / n * 1e6}


# -- what each of the page's requests costs the runtime's process --------------------------------
PAGE_REQUESTS = {"overview": 1.0, "functions/noop/history?seconds=60": 1.0, "queues": 0.2,
                 "streams": 0.2, "dlq": 0.2, "sagas": 0.2}
"""The page's requests, and how many a second it makes of each (the tables: every 5 s on screen)."""


async def request_costs(n: int, calls: int = 20) -> dict[str, float]:
    """CPU milliseconds of this process (the server of a runtime whose queue holds ``n`` events)
    per request, each asked ``calls`` times by ``curl`` in another process."""
    from swell import Runtime
    from swell.web.admin import runtime_server
    from swell.web.server import bind

    tally = tb.Tally(n)
    app = tb.drain_app(tally)
    url = f"sqlite:///{tempfile.mkdtemp(prefix='swell-bench-')}/drain.db"
    await tb.prepare(url, app, n, tb.DRAIN_QUEUE)
    server = runtime_server(Runtime(app, url), bind("127.0.0.1", 0), TOKEN)
    await server.start()
    out = {}
    try:
        for path in PAGE_REQUESTS:
            cpu0 = time.process_time()
            proc = await asyncio.create_subprocess_exec(
                "sh", "-c", f"for i in $(seq {calls}); do curl -fsS -o /dev/null "
                            f"'{server.url}/api/v1/{path}'; done")
            if await proc.wait() != 0:
                raise SystemExit(f"GET /api/v1/{path} failed")
            out[path] = (time.process_time() - cpu0) / calls * 1000
    finally:
        await server.stop()
    return out


def side(n: int, with_browser: bool, height: int) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--worker", "--n", str(n), "--height", str(height)]
    argv += ["--browser"] if with_browser else []
    with tb.CpuMeter() as meter:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"a drain failed:\n{done.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["noise_pct"] = meter.foreign_pct
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--quiet-wait", type=float, default=tb.QUIET_WAIT_S, metavar="SECONDS",
                    help="before each drain, wait at most this long for the machine to be idle")
    ap.add_argument("--height", type=int, default=900,
                    help="the browser window's height: 900 shows the charts and the functions; "
                         "4000 shows every table too, so the page reads them all (the most it costs)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--browser", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--browse", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--costs", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.browse:
        asyncio.run(browse(args.browse, args.height))
        return
    if args.worker:
        print(json.dumps(asyncio.run(drain(args.n, args.browser, args.height))))
        return
    if args.costs:
        print(json.dumps(asyncio.run(request_costs(args.n))))
        return
    if not os.access(CHROMIUM, os.X_OK):
        raise SystemExit(f"no chromium at {CHROMIUM} (apt-get install chromium, or SWELL_CHROMIUM)")
    load0 = os.getloadavg()
    print(f"dashboard cost bench | {machine()} | swell at {source_state()} | n={args.n:,} | "
          f"{args.pairs} pairs | window 1280x{args.height} | "
          f"load avg {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    got: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for i in range(args.pairs):
        for with_browser in ((False, True) if i % 2 == 0 else (True, False)):
            tb.wait_quiet(args.quiet_wait)
            r = side(args.n, with_browser, args.height)
            got[with_browser].append(r)
            print(f"pair {i + 1}/{args.pairs} {'with browser' if with_browser else 'without':<13}"
                  f" drain {r['rate']:>8,.0f}/s  first->last {r['peer_rate']:>8,.0f}/s"
                  f"  CPU {r['cpu_us_per_event']:.1f} us/event"
                  f"  API requests {r['requests'] if r['requests'] is not None else '-':>4}"
                  f"  noise {r['noise_pct']:.1f} %", flush=True)
    med = {k: statistics.median(r["rate"] for r in rs) for k, rs in got.items()}
    cpu = {k: statistics.median(r["cpu_us_per_event"] for r in rs) for k, rs in got.items()}
    ratios = [w["rate"] / wo["rate"] for wo, w in zip(got[False], got[True], strict=True)]
    ratio = med[True] / med[False]
    print(f"\nmedian drain without the browser {med[False]:,.0f}/s, with it {med[True]:,.0f}/s: "
          f"ratio {ratio:.3f} (median of the pairs' ratios {statistics.median(ratios):.3f}); "
          f"the issue's bound >= {BOUND}: {'PASS' if ratio >= BOUND else 'FAIL'}")
    print(f"CPU of the runtime's process per event: {cpu[False]:.1f} us without, {cpu[True]:.1f} us "
          f"with the browser ({cpu[True] / cpu[False] - 1:+.1%})")
    done = subprocess.run([sys.executable, __file__, "--costs", "--n", str(args.n)],
                          capture_output=True, text=True, timeout=600, check=True)
    costs = json.loads(done.stdout.strip().splitlines()[-1])
    per_s = sum(costs[p] * rate for p, rate in PAGE_REQUESTS.items())
    print("CPU of the server's process per request, with the backlog queued: " + ", ".join(
        f"{p.split('?')[0]} {ms:.1f} ms" for p, ms in costs.items()) +
        f"; at the page's rate (every table on screen) {per_s:.1f} ms a second, "
        f"{per_s / 10:.2f} % of a core")
    load1 = os.getloadavg()
    print(f"load avg at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
