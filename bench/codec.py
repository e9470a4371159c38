"""Decode cost per event of ``Event.from_json``: this checkout against a baseline, in the same run.

    python bench/codec.py                                  # baseline: the decoder of HEAD
    python bench/codec.py --baseline-rev c5a1405 --rounds 9 --seconds 0.4
    python bench/codec.py --baseline /work/base/src        # baseline: a whole source tree

By default the baseline is this checkout's source with ``swell/core/event.py`` and ``codec.py`` as
they are at ``--baseline-rev`` (copied to a temporary directory; nothing here is touched), so that
only the decoder differs (c5a1405 has the lenient decoder the strict CloudEvents reader replaced).

The same bodies are decoded by both: CloudEvents JSON in the compact form swell writes (attributes
in wire order, ``data`` last), built here with plain msgspec so neither writer is measured:

- ``minimal``: what ``swell send`` / ``Producer.send`` writes: id, source, type, time, a small data object;
- ``published``: what ``ctx.publish`` writes: minimal plus correlationid and traceparent;
- ``full``: every attribute swell sets (subject, key, idempotencykey, correlationid, traceparent,
  datacontenttype);
- ``extensions``: minimal plus two extension attributes (topic filter attributes);
- ``binary``: data_base64 with a content type;
- ``large``: minimal with a ~1.2 KB data object (40 fields: strings, numbers, nested lists/objects).

Each round runs one worker process per side (baseline, then this checkout, alternating), each
timing every shape for ``--seconds``; a shape's figure is its best round (least disturbed by other
processes), the median is shown too. Nothing is asserted: the table is the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def bodies() -> dict[str, bytes]:
    import msgspec

    base = {"specversion": "1.0", "id": "4c0a1e0b6f0d4b7e9d0f7f8e3a2b1c0d", "source": "/swell/shop",
            "type": "swell.orders", "time": "2026-12-07T14:09:01.180309Z"}
    data = {"id": "o-1", "amount": 12.5}
    large = {f"field{i}": (i * 1.5 if i % 3 == 0 else f"value-{i}-" + "x" * 20 if i % 3 == 1
                           else [i, {"sku": f"sku-{i}", "qty": i % 4}]) for i in range(40)}
    published = {**base, "correlationid": "0f9e8d7c6b5a49382716a5b4c3d2e1f0", "traceparent": TRACEPARENT}
    shapes: dict[str, dict[str, Any]] = {
        "minimal": {**base, "data": data},
        "published": {**published, "data": data},
        "full": {"specversion": "1.0", "id": base["id"], "source": base["source"], "type": base["type"],
                 "subject": "o-1", "time": base["time"], "datacontenttype": "application/json",
                 "key": "customer-7", "idempotencykey": "charge-o-1",
                 "correlationid": "0f9e8d7c6b5a49382716a5b4c3d2e1f0", "traceparent": TRACEPARENT,
                 "data": {**data, "items": [{"sku": "a", "qty": 2}]}},
        "extensions": {**base, "tenant": "acme", "priority": 3, "data": data},
        "binary": {**base, "datacontenttype": "application/octet-stream",
                   "data_base64": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="},
        "large": {**base, "data": large},
    }
    return {name: msgspec.json.encode(obj) for name, obj in shapes.items()}


def worker(seconds: float) -> None:
    """Time ``Event.from_json`` on each body with whatever ``swell`` PYTHONPATH gives; print JSON."""
    from swell import Event

    results: dict[str, float] = {}
    for name, raw in bodies().items():
        decode = Event.from_json
        decode(raw)  # warm the caches and check it decodes
        n, start = 0, time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(1000):
                decode(raw)
            n += 1000
            now = time.perf_counter()
            if now >= deadline:
                break
        results[name] = (now - start) / n * 1e9
    import swell.core.event as module

    print(json.dumps({"file": module.__file__, "ns": results}))


def run(src: Path, seconds: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, __file__, "--worker", "--seconds", str(seconds)], env=env,
                         check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, help="a source directory holding the baseline swell package")
    parser.add_argument("--baseline-rev", default="HEAD",
                        help="else: the decoder files of this git revision (default HEAD)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side (default 5)")
    parser.add_argument("--seconds", type=float, default=0.3, help="time per shape per round (default 0.3)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.seconds)
        return

    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline is not None:
            base_src, base_name = args.baseline.resolve(), str(args.baseline)
        else:
            base_src = Path(tmp) / "src"
            shutil.copytree(HERE / "src", base_src, ignore=shutil.ignore_patterns("__pycache__"))
            for name in ("event.py", "codec.py"):
                spec = f"{args.baseline_rev}:src/swell/core/{name}"
                text = subprocess.run(["git", "-C", str(HERE), "show", spec], check=True, capture_output=True,
                                      text=True).stdout
                (base_src / "swell" / "core" / name).write_text(text)
            base_name = f"this checkout with core/event.py and core/codec.py of {args.baseline_rev}"
        sides = {"baseline": base_src, "this checkout": HERE / "src"}
        runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        files: dict[str, str] = {}
        for _ in range(args.rounds):
            for side, src in sides.items():
                result = run(src, args.seconds)
                runs[side].append(result["ns"])
                files[side] = result["file"]

    sizes = {name: len(raw) for name, raw in bodies().items()}
    print(f"Event.from_json, ns per event: best (median) of {args.rounds} rounds of {args.seconds} s "
          f"per shape; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"  baseline:      {base_name} ({files['baseline']})")
    print(f"  this checkout: {files['this checkout']}")
    print(f"{'shape':<12}{'bytes':>7}{'baseline':>20}{'this checkout':>20}{'change':>10}")
    for name in sizes:
        best = {side: min(r[name] for r in rs) for side, rs in runs.items()}
        median = {side: statistics.median(r[name] for r in rs) for side, rs in runs.items()}
        cells = [f"{best[s]:,.0f} ({median[s]:,.0f})" for s in sides]
        change = best["this checkout"] / best["baseline"] - 1
        print(f"{name:<12}{sizes[name]:>7}{cells[0]:>20}{cells[1]:>20}{change:>+10.1%}")


if __name__ == "__main__":
    main()
