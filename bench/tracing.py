"""What tracing costs per event: the SQLite drain with tracing off and on, in interleaved runs.

    python bench/tracing.py [--pairs 5] [--n 20000]

Each run is a fresh process doing ``throughput.py``'s ``swell_drain`` (``--n`` events of ~100 B
sent first, then a Runtime with one no-op ``async def`` handler drains them) beside its raw
sqlite3 loop (the floor, measured in the same process). Off: no ``TracerProvider`` (swell's
default). On: the OpenTelemetry SDK with every span sampled and exported, synchronously, to its
in-memory exporter (``SimpleSpanProcessor``) — the cost of making the spans, without a network.
Runs alternate off, on, off, on...; the table gives medians, the spans made per event, and the
cost per event: 1/rate(on) - 1/rate(off). Whether tracing *off* costs anything against the code
before tracing existed is ``ab_drain.py --baseline <checkout before>/src``'s question.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(n: int, on: bool) -> None:
    """One drain (and its raw floor), tracing ``on`` or off; print JSON."""
    import asyncio

    sys.path.insert(0, str(HERE))
    from rich.progress import Progress

    import throughput as tb

    exporter = None
    if on:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from swell.core import tracing

        exporter = InMemorySpanExporter()
        provider = TracerProvider()  # (the default sampler: every span, its parent's choice)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracing.use(provider)

    async def run() -> dict[str, float]:
        with Progress(disable=True) as progress:
            swell = await tb.swell_drain(f"sqlite:///{tempfile.mkdtemp()}/s.db", n, progress)
            raw = tb.raw_drain(f"{tempfile.mkdtemp()}/raw.db", n, progress)
        spans = 0 if exporter is None else len(exporter.get_finished_spans())
        return {"swell": swell["rate"], "raw": raw["rate"], "spans": spans}

    print(json.dumps(asyncio.run(run())))


def one(n: int, on: bool) -> dict[str, float]:
    argv = [sys.executable, __file__, "--worker", "--n", str(n)] + (["--on"] if on else [])
    done = subprocess.run(argv, cwd=HERE.parent, env=dict(os.environ), capture_output=True,
                          text=True, timeout=600, check=True)
    out: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--on", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.n, args.on)
        return
    got: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for i in range(args.pairs):
        for name in ("off", "on"):
            r = one(args.n, name == "on")
            got[name].append(r)
            print(f"pair {i + 1:>2}/{args.pairs} tracing {name:<3}  swell {r['swell']:>8,.0f}/s  "
                  f"raw {r['raw']:>8,.0f}/s  ratio {r['swell'] / r['raw']:.3f}", flush=True)
    med = {name: {k: statistics.median(r[k] for r in rows) for k in ("swell", "raw", "spans")}
           for name, rows in got.items()}
    print(f"\n{'tracing':<8} {'swell drain/s':>14} {'raw drain/s':>12} {'ratio':>7} "
          f"{'spans/event':>12}   (medians of {args.pairs})")
    for name, m in med.items():
        ratio = statistics.median(r["swell"] / r["raw"] for r in got[name])
        print(f"{name:<8} {m['swell']:>14,.0f} {m['raw']:>12,.0f} {ratio:>7.3f} "
              f"{m['spans'] / args.n:>12.2f}")
    cost_us = (1 / med["on"]["swell"] - 1 / med["off"]["swell"]) * 1e6
    print(f"cost of tracing on: {cost_us:.1f} µs per event "
          f"({med['on']['swell'] / med['off']['swell'] - 1:+.0%} drain rate)")


if __name__ == "__main__":
    main()
