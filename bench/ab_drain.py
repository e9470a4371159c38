"""The SQLite drain of this checkout against a baseline source tree, in interleaved pairs.

    python bench/ab_drain.py --baseline /path/to/other/checkout/src [--pairs 10] [--n 20000]

``throughput.py`` prints one figure per run, and on a shared box the raw floor alone moves by 20 %
between runs; to see a change of a few percent, this runs the bench's own ``swell_drain`` and
``raw_drain`` (20,000 events each) in a fresh process per side, alternating baseline and this
checkout ``--pairs`` times, and compares the medians of the ratio to the raw loop measured in the
same process. The baseline tree must have ``bench/throughput.py`` beside its ``src`` (any
checkout of swell does). Nothing is asserted: the table is the result.
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

HERE = Path(__file__).resolve().parent.parent


def worker(n: int) -> None:
    """One pair of drains with whatever ``swell`` PYTHONPATH gives; print JSON."""
    import asyncio

    sys.path.insert(0, str(Path.cwd() / "bench"))
    from rich.progress import Progress

    import throughput as tb

    async def run() -> tuple[float, float]:
        with Progress(disable=True) as progress:
            swell = await tb.swell_drain(f"sqlite:///{tempfile.mkdtemp()}/s.db", n, progress)
            raw = tb.raw_drain(f"{tempfile.mkdtemp()}/raw.db", n, progress)
        return swell["rate"], raw["rate"]

    print(json.dumps(asyncio.run(run())))


def side(src: Path, n: int) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, __file__, "--worker", "--n", str(n)], cwd=src.parent,
                          env=env, capture_output=True, text=True, timeout=600, check=True)
    swell, raw = json.loads(done.stdout.strip().splitlines()[-1])
    return float(swell), float(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="the src/ directory of the baseline checkout")
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.n)
        return
    if args.baseline is None:
        ap.error("--baseline is required (the src/ of another checkout)")
    sides = {"baseline": args.baseline.resolve(), "this checkout": HERE / "src"}
    got: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for i in range(args.pairs):
        for name, src in sides.items():
            got[name].append(side(src, args.n))
            swell, raw = got[name][-1]
            print(f"pair {i + 1:>2}/{args.pairs} {name:<14} swell {swell:>9,.0f}/s  raw "
                  f"{raw:>9,.0f}/s  ratio {swell / raw:.4f}", flush=True)
    print(f"\n{'':<14} {'swell drain/s':>14} {'raw drain/s':>12} {'ratio':>8}   (medians of "
          f"{args.pairs})")
    ratios = {}
    for name, rows in got.items():
        ratios[name] = statistics.median(s / r for s, r in rows)
        print(f"{name:<14} {statistics.median(s for s, _ in rows):>14,.0f} "
              f"{statistics.median(r for _, r in rows):>12,.0f} {ratios[name]:>8.4f}")
    change = ratios["this checkout"] / ratios["baseline"] - 1
    print(f"ratio to the raw loop: {change:+.1%} against the baseline")


if __name__ == "__main__":
    main()
