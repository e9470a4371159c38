"""Keyed tumbling-window count: swell's ``WindowOperator`` alone against Bytewax's keyed tumbling
window, over the same in-memory events in the same run (issue 15, part a; target >= 2x Bytewax).

    pip install bytewax==0.21.1        # optional: without it only swell's rate is shown
    python bench/windows.py [--n 1000000] [--keys 1000] [--rate 1000] [--rounds 3]

The events: ``--n`` of them (default 1,000,000) over ``--keys`` keys (1,000: ``k0``..``k999``, drawn
at random), event time advancing ``--rate`` events per second (1,000/s: 1,000 s of event time, 100
windows of 10 s, about 10 events per key and window, so about 100,000 panes), each event 0-5 s out
of order (its time is its place in the stream minus a uniform 0-5 s). They are made once, seeded,
before any timing, as ``(key, float seconds)`` for swell and ``(key, datetime)`` for Bytewax (its
clock reads datetimes); swell is also timed on the datetimes, as a second line.

- **swell**: ``WindowOperator(Tumbling(10), Count())``, each event ``add``-ed; every 1,000 events the
  watermark is advanced to the largest event time seen minus 5 s (what ``BoundedOutOfOrder("5s")``
  gives; the runtime advances it per event, when it moves), and ``math.inf`` at the end. The
  panes are kept in a list. Rate = N / loop time.
- **Bytewax 0.21.1**: ``TestingSource(events) -> count_window(EventClock(ts, wait 5 s),
  TumblingWindower(10 s, aligned to the epoch), key) -> TestingSink(list)``, run with
  ``bytewax.testing.run_main`` (one worker, in this process). Its watermark is the largest event time
  seen minus 5 s, moved per event; its system clock is held still (``now_getter``), so its watermark
  is event time only, as swell's (otherwise it also moves on by the system time since the largest
  event, up to a whole batch's run, and a few events come late). ``--bytewax-batch``: the
  ``TestingSource`` batch size, 100,000 by default because it is Bytewax's fastest: on a 2-core
  Xeon (Python 3.11), 100,000 events ran at ~250/s with its default batch of 1, ~66,000/s at 1,000,
  ~150,000/s at 10,000, ~195,000/s at 100,000 and 300,000. Rate = N / ``run_main`` time (the
  dataflow's build is included; it is milliseconds).

Both must give the same count per (key, window), checked and printed. Each round runs swell then
Bytewax; the median round of each is shown.

Part (b), end to end from an embedded stream through ``app.window``, is ``bench/windows_e2e.py``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from benchinfo import machine, source_state
from swell.windows import Count, Tumbling, WindowOperator

TARGET_RATIO = 2.0
SIZE_S = 10.0
BOUND_S = 5.0
ADVANCE_EVERY = 1_000
START = 1_700_000_000.0  # event time of the first event (seconds since the epoch)

Counts = dict[tuple[str, float], int]


def make_events(n: int, keys: int, rate: float, seed: int = 15) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    names = [f"k{i}" for i in range(keys)]
    return [(names[rng.randrange(keys)], START + i / rate - rng.uniform(0.0, BOUND_S))
            for i in range(n)]


def run_swell(events: list[tuple[str, Any]], to_float: Callable[[Any], float]) -> tuple[float, Counts]:
    op = WindowOperator(Tumbling(SIZE_S), Count())
    add, advance = op.add, op.advance
    panes = []
    high = -math.inf
    started = time.perf_counter()
    for i, (key, t) in enumerate(events):
        add(key, None, t)
        tf = to_float(t)
        if tf > high:
            high = tf
        if i % ADVANCE_EVERY == ADVANCE_EVERY - 1:
            panes += advance(high - BOUND_S)
    panes += advance(math.inf)
    elapsed = time.perf_counter() - started
    return elapsed, {(p.key, p.start): p.value for p in panes}


def run_bytewax(events: list[tuple[str, datetime]], batch: int) -> tuple[float, Counts]:
    import bytewax.operators as bop
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, TumblingWindower, count_window
    from bytewax.testing import TestingSink, TestingSource, run_main

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    still = datetime(2000, 1, 1, tzinfo=UTC)  # its system clock held still: event time only
    out: list[tuple[str, tuple[int, int]]] = []
    started = time.perf_counter()
    flow = Dataflow("window_bench")
    up = bop.input("in", flow, TestingSource(events, batch_size=batch))
    clock = EventClock(ts_getter=lambda e: e[1], wait_for_system_duration=timedelta(seconds=BOUND_S),
                       now_getter=lambda: still)
    windower = TumblingWindower(length=timedelta(seconds=SIZE_S), align_to=epoch)
    counted = count_window("count", up, clock, windower, key=lambda e: e[0])
    bop.output("out", counted.down, TestingSink(out))
    run_main(flow)
    elapsed = time.perf_counter() - started
    return elapsed, {(key, window_id * SIZE_S): count for key, (window_id, count) in out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=1_000)
    ap.add_argument("--rate", type=float, default=1_000.0, help="events per second of event time")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bytewax-batch", type=int, default=100_000,
                    help="TestingSource batch_size (its fastest setting here; see the docstring)")
    ap.add_argument("--e2e-n", type=int, default=100_000,
                    help="events for part (b), end to end through app.window (0: skip it)")
    ap.add_argument("--e2e-repeats", type=int, default=2)
    args = ap.parse_args()
    try:
        import bytewax  # noqa: F401
        have_bytewax = True
    except ImportError:
        have_bytewax = False

    print(f"machine: {machine()}")
    print(f"source: {source_state()}")
    events = make_events(args.n, args.keys, args.rate)
    as_dt = [(k, datetime.fromtimestamp(t, UTC)) for k, t in events]
    span = events[-1][1] - events[0][1]
    print(f"{args.n:,} events, {args.keys:,} keys, {span:,.0f} s of event time, {SIZE_S:g} s tumbling "
          f"windows, 0-{BOUND_S:g} s out of order; {args.rounds} round(s), median shown")

    swell_s, swell_dt_s, bytewax_s = [], [], []
    swell_counts: Counts = {}
    bytewax_counts: Counts = {}
    for _ in range(args.rounds):
        elapsed, swell_counts = run_swell(events, float)
        swell_s.append(elapsed)
        elapsed, dt_counts = run_swell(as_dt, datetime.timestamp)
        swell_dt_s.append(elapsed)
        assert dt_counts == swell_counts, "swell on datetimes counted differently"
        if have_bytewax:
            elapsed, bytewax_counts = run_bytewax(as_dt, args.bytewax_batch)
            bytewax_s.append(elapsed)

    swell_rate = args.n / statistics.median(swell_s)
    print(f"swell WindowOperator (float times):    {swell_rate:>12,.0f} events/s  "
          f"({len(swell_counts):,} panes)")
    print(f"swell WindowOperator (datetime times): {args.n / statistics.median(swell_dt_s):>12,.0f} "
          "events/s")
    total = sum(swell_counts.values())
    print(f"swell counted {total:,} events (late: {args.n - total:,})")
    if have_bytewax:
        compare_bytewax(args, swell_rate, swell_counts, bytewax_s, bytewax_counts)
    else:
        print("bytewax is not installed (pip install bytewax==0.21.1): no baseline")
    if args.e2e_n:
        import windows_e2e

        print(f"(b) end to end, {args.e2e_n:,} events from an embedded stream: app.window against "
              "a plain consumer group of the same stream")
        runs = windows_e2e.run(args.e2e_n, args.e2e_repeats)
        ratio = statistics.median(w / p for p, w in runs)
        print(f"window / plain consume, median: {ratio:.2f} ("
              f"{'meets' if ratio >= 0.7 else 'misses'} the 0.7x target)")


def compare_bytewax(args: argparse.Namespace, swell_rate: float, swell_counts: Counts,
                    bytewax_s: list[float], bytewax_counts: Counts) -> None:
    bytewax_rate = args.n / statistics.median(bytewax_s)
    print(f"Bytewax 0.21.1 count_window:           {bytewax_rate:>12,.0f} events/s  "
          f"({len(bytewax_counts):,} panes; TestingSource batch_size={args.bytewax_batch:,})")
    ratio = swell_rate / bytewax_rate
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(f"ratio swell / Bytewax: {ratio:.2f}x ({verdict} the {TARGET_RATIO:g}x target)")
    agree = swell_counts == bytewax_counts
    print(f"counts per (key, window) agree: {'yes' if agree else 'NO'}")
    if not agree:
        only = set(swell_counts) ^ set(bytewax_counts)
        differ = [k for k in set(swell_counts) & set(bytewax_counts)
                  if swell_counts[k] != bytewax_counts[k]]
        print(f"  windows in one only: {len(only):,}; with other counts: {len(differ):,}")


if __name__ == "__main__":
    main()
