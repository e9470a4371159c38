"""Topic filters: how fast a compiled ``Pattern`` matches, with a hand-written ``if`` chain as the floor.

    python bench/patterns.py [--seconds 2] [--rounds 5]

The pattern is a realistic 5-field filter with mixed operators::

    {"type": ["order.created"],                                   exact
     "source": [{"prefix": "shop/"}],                             prefix
     "data": {"amount": [{"numeric": [">=", 10, "<", 1000]}],     numeric range
              "status": [{"anything-but": ["cancelled", "test"]}], anything-but
              "customer": {"id": [{"exists": true}]}}}            exists

against 1,000 CloudEvents of ~400 B (10 attributes, a ``data`` object of 6 fields), all matching, or
all not matching (each fails one of the 5 conditions, in turn, so early and late exits are mixed).
Each case is timed on pre-decoded dicts (``Pattern.match``) and including ``msgspec.json.decode`` of
the event bytes. The baseline, in the same run, is a hand-written Python ``if`` chain doing the same
checks (type checks included, no array handling): the floor a compiled matcher cannot beat. Each
case runs ``--seconds`` in total, split into ``--rounds`` interleaved rounds; the median round is
shown. Target (issue 5): at least 200,000 matches/s on pre-decoded dicts.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from swell.core.filters import Pattern

TARGET_PER_S = 200_000
N_EVENTS = 1_000
PATTERN = {
    "type": ["order.created"],
    "source": [{"prefix": "shop/"}],
    "data": {
        "amount": [{"numeric": [">=", 10, "<", 1000]}],
        "status": [{"anything-but": ["cancelled", "test"]}],
        "customer": {"id": [{"exists": True}]},
    },
}
# each non-matching event breaks one condition: (top-level or data key, bad value)
BREAKS: list[tuple[str, Any]] = [
    ("type", "order.deleted"), ("source", "crm/eu"), ("amount", 5000), ("status", "cancelled"),
    ("customer", {}),
]


def hand_written(event: dict[str, Any]) -> bool:
    """The same checks as PATTERN, written out by hand."""
    kind = event.get("type")
    if type(kind) is not str or kind != "order.created":
        return False
    source = event.get("source")
    if type(source) is not str or not source.startswith("shop/"):
        return False
    data = event.get("data")
    if type(data) is not dict:
        return False
    amount = data.get("amount")
    if (type(amount) is not int and type(amount) is not float) or not 10 <= amount < 1000:
        return False
    status = data.get("status")
    if "status" not in data or type(status) is dict or status in ("cancelled", "test"):
        return False
    customer = data.get("customer")
    return type(customer) is dict and "id" in customer and type(customer["id"]) is not dict


def make_events(rng: random.Random, matching: bool) -> list[dict[str, Any]]:
    events = []
    for i in range(N_EVENTS):
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": f"{rng.getrandbits(64):016x}",
            "source": f"shop/{rng.choice(['eu', 'us', 'apac'])}/web",
            "type": "order.created",
            "subject": f"orders.{rng.choice(['eu', 'us'])}.created",
            "time": f"2026-11-27T10:{i % 60:02d}:{rng.randrange(60):02d}Z",
            "datacontenttype": "application/json",
            "key": f"cust-{rng.randrange(10_000)}",
            "traceparent": f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01",
            "data": {
                "order_id": f"o-{i}",
                "amount": rng.choice([rng.randrange(10, 1000), round(rng.uniform(10, 999), 2)]),
                "currency": "EUR",
                "status": rng.choice(["paid", "pending", "shipped"]),
                "customer": {"id": f"c-{rng.randrange(10_000)}", "tier": rng.choice(["gold", "basic"])},
                "items": [{"sku": f"sku-{rng.randrange(100)}", "qty": rng.randrange(1, 4)}],
            },
        }
        if not matching:
            key, bad = BREAKS[i % len(BREAKS)]
            (event if key in event else event["data"])[key] = bad
        events.append(event)
    return events


def rate(check: Callable[[Any], bool], items: list[Any], seconds: float) -> float:
    """Evaluations per second of ``check`` over ``items``, looping for about ``seconds``."""
    done, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for item in items:
            check(item)
        done += len(items)
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case, all rounds (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case (default 5)")
    args = parser.parse_args()

    pattern = Pattern.parse(PATTERN)
    decode = msgspec.json.Decoder().decode
    rng = random.Random(5)
    sets = {"matching": make_events(rng, True), "not matching": make_events(rng, False)}
    for name, events in sets.items():  # both matchers agree with what the set is meant to be
        want = name == "matching"
        assert all(pattern.match(e) is want and hand_written(e) is want for e in events), name
    encoded = {name: [msgspec.json.encode(e) for e in events] for name, events in sets.items()}
    size = statistics.mean(len(b) for b in encoded["matching"])

    def decoded(check: Callable[[Any], bool]) -> Callable[[bytes], bool]:
        return lambda data: check(decode(data))

    cases: dict[tuple[str, str, str], tuple[Callable[[Any], bool], list[Any]]] = {}
    for name in sets:
        cases[("Pattern.match", "dict", name)] = (pattern.match, sets[name])
        cases[("if chain (floor)", "dict", name)] = (hand_written, sets[name])
    for name in sets:
        cases[("Pattern.match", "bytes + decode", name)] = (decoded(pattern.match), encoded[name])
        cases[("if chain (floor)", "bytes + decode", name)] = (decoded(hand_written), encoded[name])
    results: dict[tuple[str, str, str], list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case, (check, items) in cases.items():
            results[case].append(rate(check, items, args.seconds / args.rounds))
    median = {case: statistics.median(rates) for case, rates in results.items()}

    console = Console(width=120)
    now = datetime.datetime.now(datetime.UTC)
    console.print(f"[bold]Topic filters: pattern matching[/], {now:%Y-%m-%d %H:%M} UTC, Python "
                  f"{platform.python_version()}, {os.cpu_count()} CPUs; {N_EVENTS:,} CloudEvents of "
                  f"~{size:.0f} B, median of {args.rounds} rounds of {args.seconds / args.rounds:.2g} s")
    table = Table("matcher", "input", "events", "evaluations/s", "µs each", "vs if chain")
    for matcher, given, name in cases:
        value = median[(matcher, given, name)]
        floor = median[("if chain (floor)", given, name)]
        table.add_row(matcher, given, name, f"{value:,.0f}", f"{1e6 / value:.2f}", f"{value / floor:.2f}x")
    console.print(table)
    slowest = min(median[("Pattern.match", "dict", name)] for name in sets)
    met = slowest >= TARGET_PER_S
    verdict = "[green]met[/]" if met else "[red]NOT met[/]"
    console.print(f"Target: >= {TARGET_PER_S:,} matches/s on pre-decoded dicts; "
                  f"slowest case {slowest:,.0f}/s: {verdict}")
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
