"""Traffic shapes: messages/s as a function of time (``step``, ``saw``, ``diurnal``) or a replay of
arrival times, and the Poisson arrivals drawn from them per seed."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from swell.core.errors import ConfigError

SHAPES = ("step", "saw", "diurnal")


@dataclass(frozen=True, slots=True)
class Shape:
    """Traffic: messages/s as a function of t (``step``, ``saw``, ``diurnal``), or the arrival
    times of a replay. Build one with ``Shape.step()`` ... or ``parse_shape``."""

    name: str
    duration_s: float
    kind: str
    times: tuple[float, ...] = ()

    @classmethod
    def step(cls) -> Shape:
        """20/s; 150/s for t in [120, 180); 20/s until 600; idle until 900."""
        return cls("step", 900.0, "step")

    @classmethod
    def saw(cls) -> Shape:
        """A ramp 0 -> 120/s over 60 s, then 30 s idle, repeated until 900."""
        return cls("saw", 900.0, "saw")

    @classmethod
    def diurnal(cls) -> Shape:
        """42.5 - 37.5 cos(2 pi t / 600), plus 250/s for t in [700, 730), until 1200."""
        return cls("diurnal", 1200.0, "diurnal")

    @classmethod
    def replay(cls, times: Iterable[float], name: str = "replay", tail_s: float = 300.0) -> Shape:
        """The given arrival times (seconds), shifted to start at 0, then ``tail_s`` idle."""
        ts = sorted(times)
        if not ts:
            raise ConfigError(f"replay {name!r} has no arrivals")
        start = ts[0]
        shifted = tuple(t - start for t in ts)
        return cls(name, shifted[-1] + tail_s, "replay", shifted)

    def until(self, t: float) -> Shape:
        """The same traffic, cut at ``t`` (a short run, for tests)."""
        return Shape(self.name, min(t, self.duration_s), self.kind,
                     tuple(x for x in self.times if x < t))

    def rate(self, t: float) -> float:
        """Messages/s at ``t`` (for a replay: the count in t's second)."""
        if t < 0 or t >= self.duration_s:
            return 0.0
        if self.kind == "step":
            return 150.0 if 120 <= t < 180 else 20.0 if t < 600 else 0.0
        if self.kind == "saw":
            phase = t % 90.0
            return 2.0 * phase if phase < 60 else 0.0
        if self.kind == "diurnal":
            return 42.5 - 37.5 * math.cos(2 * math.pi * t / 600.0) + (250.0 if 700 <= t < 730 else 0.0)
        a = math.floor(t)
        return float(_bisect_count(self.times, a, a + 1))

    def arrivals(self, seed: int) -> list[float]:
        """Arrival times for ``seed``: a Poisson process of intensity ``rate(t)`` (thinned per
        second), or the replay's own times."""
        if self.kind == "replay":
            return list(self.times)
        rng = random.Random(f"swell-sim:{seed}:arrivals")
        out: list[float] = []
        rate = self.rate
        for a in range(math.ceil(self.duration_s)):
            hi = max(rate(a + k / 10) for k in range(11))
            if hi <= 0:
                continue
            hi += 0.5  # the cosine moves < 0.05/s within 0.1 s: a safe bound between samples
            t, end = float(a), min(a + 1.0, self.duration_s)
            while True:
                t += rng.expovariate(hi)
                if t >= end:
                    break
                if rng.random() * hi < rate(t):
                    out.append(t)
        return out

    def idle_gaps(self, min_s: float = 10.0) -> int:
        """Spells of at least ``min_s`` without traffic (a trailing one included)."""
        gaps, run = 0, 0.0
        steps = math.ceil(self.duration_s)
        for a in range(steps):
            if self.rate(a + 0.5) > 0:
                gaps, run = gaps + (run >= min_s), 0.0
            else:
                run += 1.0
        return gaps + (run >= min_s)


def _bisect_count(xs: Sequence[float], lo: float, hi: float) -> int:
    import bisect

    return bisect.bisect_left(xs, hi) - bisect.bisect_left(xs, lo)


def parse_shape(spec: str | Shape) -> Shape:
    """``step``, ``saw``, ``diurnal``, or the path to a CSV of arrival timestamps in seconds (one
    per line, first column; a header line is allowed)."""
    if isinstance(spec, Shape):
        return spec
    name = spec.strip()
    if name.lower() in SHAPES:
        return {"step": Shape.step, "saw": Shape.saw, "diurnal": Shape.diurnal}[name.lower()]()
    path = Path(name)
    if path.suffix.lower() != ".csv" and not path.exists():
        raise ConfigError(f"unknown shape {spec!r}: use step, saw, diurnal or the path to a .csv "
                          f"of arrival timestamps")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read shape {name}: {why}") from exc
    times: list[float] = []
    first = True
    for n, line in enumerate(text.splitlines(), 1):
        cell = line.split(",")[0].strip()
        if not cell:
            continue
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
            if first:  # a header
                first = False
                continue
        first = False
        if not math.isfinite(value):
            raise ConfigError(f"{name}:{n}: {cell!r} is not a timestamp in seconds")
        times.append(value)
    if not times:
        raise ConfigError(f"{name} holds no arrival timestamps")
    return Shape.replay(times, name=path.stem)
