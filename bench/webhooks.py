"""Webhook route: signed requests/s to 202, a ``swell run`` on the embedded default against a bare
Starlette endpoint doing the same signature check without storing, in the same run.

    python bench/webhooks.py [--rate 1000] [--seconds 10] [--warmup 2] [--connections 32] [--repeat 2]

Per repeat, two targets one after the other, each a process of its own on a free loopback port:

- **swell**: ``swell run app.py --http 127.0.0.1:PORT --broker sqlite:///<tmp>/b.db`` with one
  route ``app.webhook("gh", path="/hooks/github", to=events, verify=GitHub(secret=...),
  rate="100000/s")`` and no function on ``events`` (what is stored stays); a 202 means stored.
- **bare** (the baseline): Starlette on uvicorn (the same ``loop="asyncio"``, httptools), one POST
  route that reads the body, checks the same ``X-Hub-Signature-256`` with ``hmac.compare_digest``
  and answers 202 JSON; nothing is stored (``python bench/webhooks.py --serve-bare PORT``).

The load is a third process (``--load``): every request is built and signed before the clock
starts (a unique ~1 KB JSON push body and ``X-GitHub-Delivery`` each), then sent open-loop on a
fixed schedule (``--rate`` for ``--warmup`` + ``--seconds``; the warm-up is not counted) over a pool
of ``--connections`` keep-alive HTTP/1.1 connections (raw asyncio streams, one request in flight
per connection; a request due while every connection is busy waits, and that wait counts).

- **latency** is measured from the *scheduled* send time to the end of the 202 (so a stalled
  server or generator is not hidden: no coordinated omission), and also from the actual send.
- **lag** = actual send - scheduled send: how far the generator itself fell behind.
- **stored** (swell only): the depth of ``events`` after the run, which must equal the 202s
  (warm-up included).

Target (issue 14): 1,000 signed requests/s for 10 s, p99 < 20 ms from request to 202.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchinfo import machine, source_state

SECRET = "bench-webhook-secret"
PATH = "/hooks/github"
TARGET_P99_MS = 20.0
READY_TIMEOUT_S = 60.0
HERE = Path(__file__).resolve()
CLK_TCK = os.sysconf("SC_CLK_TCK")

APP = f'''\
from swell import App
from swell.triggers.verify import GitHub

app = App("hooks")
events = app.queue("events")
app.webhook("gh", path="{PATH}", to=events, verify=GitHub(secret="{SECRET}"), rate="100000/s")
'''

console = Console(width=80)


# ---------------------------------------------------------------------------------------------
# the baseline server


def serve_bare(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    key = SECRET.encode()

    async def hook(request: Request) -> Response:
        body = await request.body()
        given = request.headers.get("x-hub-signature-256", "")
        want = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.encode(), want.encode()):
            return JSONResponse({"error": "signature"}, 401)
        return JSONResponse({"id": request.headers.get("x-github-delivery")}, 202)

    async def readyz(_: Request) -> Response:
        return JSONResponse({"ready": True})

    app = Starlette(routes=[Route(PATH, hook, methods=["POST"]), Route("/readyz", readyz)])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="asyncio", log_config=None,
                access_log=False, lifespan="off", server_header=False)


# ---------------------------------------------------------------------------------------------
# the load generator (a process of its own)


def build_requests(n: int, port: int) -> list[bytes]:
    key = SECRET.encode()
    pad = "x" * 700
    out = []
    for i in range(n):
        delivery = str(uuid.uuid4())
        body = json.dumps({
            "ref": "refs/heads/main", "after": hashlib.sha1(delivery.encode()).hexdigest(), "seq": i,
            "repository": {"id": 1, "full_name": "bench/swell"}, "pusher": {"name": "bench"},
            "head_commit": {"id": delivery, "message": pad},
        }, separators=(",", ":")).encode()
        sig = hmac.new(key, body, hashlib.sha256).hexdigest()
        head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"User-Agent: GitHub-Hookshot/bench\r\nX-GitHub-Event: push\r\n"
                f"X-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: sha256={sig}\r\n\r\n")
        out.append(head.encode() + body)
    return out


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> int:
    """One request, its whole response read; the status code."""
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return int(head[9:12])


async def dispatch(scheduled: list[float], due: asyncio.Queue[int], label: str,
                   n_warm: int) -> None:
    """Hand each request to the connections at its scheduled time (open loop)."""
    n = len(scheduled)
    tty = sys.stderr.isatty()
    i = 0
    next_progress = scheduled[0]
    while i < n:
        now = time.perf_counter()
        while i < n and scheduled[i] <= now:
            due.put_nowait(i)
            i += 1
        if tty and now >= next_progress:
            print(f"\r  {label}: {i:,}/{n:,} sent ({n_warm:,} warm-up)", end="", file=sys.stderr,
                  flush=True)
            next_progress = now + 0.5
        if i < n:
            await asyncio.sleep(max(0.0, scheduled[i] - time.perf_counter()))
    if tty:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)


async def load(port: int, rate: float, seconds: float, warmup: float, connections: int,
               label: str) -> dict:
    n_warm = round(rate * warmup)
    n = n_warm + round(rate * seconds)
    requests = build_requests(n, port)
    scheduled = [0.0] * n  # absolute perf_counter times, filled when the clock starts
    sent = [0.0] * n
    done = [0.0] * n
    status = [0] * n
    due: asyncio.Queue[int] = asyncio.Queue()
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            i = await due.get()
            sent[i] = time.perf_counter()
            try:
                status[i] = await exchange(reader, writer, requests[i])
                done[i] = time.perf_counter()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                status[i] = -1  # a broken connection: counted, and replaced
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            finally:
                due.task_done()

    workers = [asyncio.create_task(worker(r, w)) for r, w in conns]
    cpu0 = time.process_time()
    t0 = time.perf_counter() + 0.05
    interval = 1.0 / rate
    for i in range(n):
        scheduled[i] = t0 + i * interval
    await dispatch(scheduled, due, label, n_warm)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(due.join(), 30)
    cpu = time.process_time() - cpu0
    for t in workers:
        t.cancel()
    for _, w in conns:
        w.close()
    m = range(n_warm, n)
    answered = [j for j in m if done[j]]
    first, last = scheduled[n_warm], max(sent[j] for j in m)
    return {
        "requests": len(m),
        "warm_202": sum(1 for j in range(n_warm) if status[j] == 202),
        "statuses": {str(s): sum(1 for j in m if status[j] == s) for s in {status[j] for j in m}},
        "unanswered": len(m) - len(answered),
        "sent_rate": (len(m) - 1) / (last - sent[n_warm]) if last > sent[n_warm] else 0.0,
        "offered_span_s": scheduled[n - 1] - first,
        "lat_sched_ms": [(done[j] - scheduled[j]) * 1000 for j in answered],
        "lat_send_ms": [(done[j] - sent[j]) * 1000 for j in answered],
        "lag_ms": [(sent[j] - scheduled[j]) * 1000 for j in m if sent[j]],
        "cpu_s": cpu,
        "wall_s": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------
# the orchestration


@dataclass
class Run:
    target: str
    repeat: int
    res: dict = field(default_factory=dict)
    server_cpu: float = float("nan")  # share of one core, warm-up included
    stored: int | None = None
    load1: float = 0.0

    @property
    def ok202(self) -> int:
        return self.res["statuses"].get("202", 0)

    @property
    def non202(self) -> int:
        return self.res["requests"] - self.ok202


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_ready(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}):\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            if r.status == 200 and json.loads(r.read()).get("ready"):
                return
        time.sleep(0.02)
    raise SystemExit(f"not ready in {READY_TIMEOUT_S:g} s:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def depth(url: str) -> int:
    from swell.brokers.url import open_broker

    broker = open_broker(url)
    try:
        return (await broker.stats("events")).depth
    finally:
        await broker.close()


def one(target: str, repeat: int, args: argparse.Namespace) -> Run:
    run = Run(target, repeat, load1=os.getloadavg()[0])
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="swell-webhooks-") as tmp:
        d = Path(tmp)
        log = d / "server.log"
        url = f"sqlite:///{d / 'b.db'}"
        if target == "swell":
            (d / "app.py").write_text(APP)
            cmd = [sys.executable, "-m", "swell", "run", str(d / "app.py"), "--http",
                   f"127.0.0.1:{port}", "--broker", url, "--log-level", "warning"]
        else:
            cmd = [sys.executable, str(HERE), "--serve-bare", str(port)]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=d, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(port, proc, log)
            out_json = d / "load.json"
            c0, w0 = cpu_s(proc.pid), time.monotonic()
            subprocess.run([sys.executable, str(HERE), "--load", str(port), "--rate", str(args.rate),
                            "--seconds", str(args.seconds), "--warmup", str(args.warmup),
                            "--connections", str(args.connections), "--label",
                            f"{target} #{repeat}", "--out", str(out_json)], check=True)
            run.server_cpu = (cpu_s(proc.pid) - c0) / (time.monotonic() - w0)
            run.res = json.loads(out_json.read_text())
            if target == "swell":
                run.stored = asyncio.run(depth(url))
        finally:
            stop(proc)
    r = run.res
    console.log(f"{target} #{repeat}: p99 {pct(r['lat_sched_ms'], 0.99):.2f} ms, "
                f"{run.non202} non-202" + ("" if run.stored is None else
                                           f", stored {run.stored:,} of {run.ok202 + r['warm_202']:,} "
                                           "202s (warm-up included)"), highlight=False)
    return run


def f2(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:,.0f}"


def tables(runs: list[Run], args: argparse.Namespace) -> list[Table]:
    a = Table(title=f"request -> 202, from the scheduled send (ms); {args.rate:,.0f}/s offered "
              f"for {args.seconds:g} s, {args.connections} connections", title_justify="left")
    for name in ("target", "#", "requests", "sent/s", "p50", "p90", "p99", "max", "non-202"):
        a.add_column(name, justify="right" if name != "target" else "left")
    b = Table(title="from the actual send (ms); generator lag (ms); CPU (% of a core)",
              title_justify="left")
    for name in ("target", "#", "p50", "p99", "max", "lag p50", "lag p99", "lag max", "gen", "srv"):
        b.add_column(name, justify="right" if name != "target" else "left")
    for run in runs:
        r = run.res
        s, x, lag = r["lat_sched_ms"], r["lat_send_ms"], r["lag_ms"]
        a.add_row(run.target, str(run.repeat), f"{r['requests']:,}", f"{r['sent_rate']:,.0f}",
                  f2(pct(s, 0.5)), f2(pct(s, 0.9)), f2(pct(s, 0.99)), f2(max(s, default=0)),
                  str(run.non202))
        b.add_row(run.target, str(run.repeat), f2(pct(x, 0.5)), f2(pct(x, 0.99)),
                  f2(max(x, default=0)), f2(pct(lag, 0.5)), f2(pct(lag, 0.99)),
                  f2(max(lag, default=0)), f"{100 * r['cpu_s'] / r['wall_s']:.0f}",
                  f"{100 * run.server_cpu:.0f}")
    return [a, b]


def verdicts(runs: list[Run], args: argparse.Namespace) -> list[str]:
    out = []
    for run in runs:
        r = run.res
        extra = []
        for code, count in sorted(r["statuses"].items()):
            if code != "202":  # -1: the connection broke
                extra.append(f"{count} x {code}")
        if r["unanswered"]:
            extra.append(f"{r['unanswered']} unanswered")
        if run.target == "swell":
            want = run.ok202 + r["warm_202"]
            extra.append(f"stored {run.stored:,} = 202s {want:,}" if run.stored == want
                         else f"STORED {run.stored:,} != 202s {want:,}")
            p99 = pct(r["lat_sched_ms"], 0.99)
            ok = (p99 < TARGET_P99_MS and not run.non202 and run.stored == want
                  and r["sent_rate"] >= 0.99 * args.rate)
            out.append(f"{'PASS' if ok else 'FAIL'}  swell #{run.repeat}: p99 {p99:.2f} ms "
                       f"(< {TARGET_P99_MS:g}) at {r['sent_rate']:,.0f}/s; " + ", ".join(extra))
        elif extra:
            out.append(f"      bare #{run.repeat}: " + ", ".join(extra))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=1000.0, help="requests/s offered (default 1000)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds at the same rate before, not counted (default 2)")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    p.add_argument("--repeat", type=int, default=2, help="runs of both targets (default 2)")
    p.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--label", default="load", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return
    if args.load:
        res = asyncio.run(load(args.load, args.rate, args.seconds, args.warmup, args.connections,
                               args.label))
        Path(args.out).write_text(json.dumps(res))
        return
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    l0 = os.getloadavg()
    console.print(f"swell webhooks bench {started} | {machine()} | swell at {source_state()} | "
                  f"load avg at start {l0[0]:.2f} {l0[1]:.2f} {l0[2]:.2f}", highlight=False)
    runs = []
    for repeat in range(1, args.repeat + 1):
        for target in ("swell", "bare"):
            runs.append(one(target, repeat, args))
    for t in tables(runs, args):
        console.print(t)
    for line in verdicts(runs, args):
        console.print(line, highlight=False)
    l1 = os.getloadavg()
    console.print(f"load avg at end {l1[0]:.2f} {l1[1]:.2f} {l1[2]:.2f}; 1-min load before each "
                  "run: " + ", ".join(f"{r.target} #{r.repeat} {r.load1:.2f}" for r in runs)
                  + "; gen/srv = CPU of the load process / the server, % of one core",
                  highlight=False)


if __name__ == "__main__":
    main()
