"""A window's state, and the operator's snapshot format (JSON through msgspec)."""

from __future__ import annotations

from typing import Any

import msgspec

from swell.core.errors import ConfigError
from swell.patterns.windows.panes import LateEvent, Timing

VERSION = 1


class Win:
    """One window of one key: its accumulator, the index of its next pane and (``late="retract"``)
    the last pane's value and timing, to retract it. ``seq`` orders windows by when they opened."""

    __slots__ = ("acc", "end", "index", "key", "last", "last_timing", "live", "seq", "start")

    def __init__(self, key: str, start: float, end: float, acc: Any, seq: int, index: int = 0,
                 last: Any = None, last_timing: Timing = "on_time") -> None:
        self.key, self.start, self.end, self.acc, self.seq = key, start, end, acc, seq
        self.index, self.last, self.last_timing = index, last, last_timing
        self.live = True

    @staticmethod
    def by_start(w: Win) -> float:
        return w.start

    @staticmethod
    def by_seq(w: Win) -> int:
        return w.seq

    def __repr__(self) -> str:
        return f"Win({self.key!r}, [{self.start!r}, {self.end!r}), acc={self.acc!r}, index={self.index})"


WinRow = tuple[str, float, float, Any, int, Any, Timing, int]


class Snapshot(msgspec.Struct):
    """The snapshot's shape (``version`` first, so a later format can be told apart)."""

    version: int
    settings: str
    watermark: str  # repr of a float: JSON has no infinities
    next_early: str | None
    seq: int
    counters: tuple[int, int, int, int]
    rows: list[WinRow]
    changed: list[int]
    side: list[LateEvent]

    def windows(self) -> list[Win]:
        return [Win(key, start, end, acc, seq, index, last, timing)
                for key, start, end, acc, index, last, timing, seq in self.rows]


def encode(settings: str, watermark: float, next_early: float | None, seq: int,
           counters: list[int], windows: list[Win], changed: list[Win],
           side: list[LateEvent]) -> bytes:
    rows = [(w.key, w.start, w.end, w.acc, w.index, w.last, w.last_timing, w.seq) for w in windows]
    snap = Snapshot(VERSION, settings, repr(watermark), None if next_early is None else repr(next_early),
                    seq, (counters[0], counters[1], counters[2], counters[3]), rows,
                    [w.seq for w in changed], side)
    try:
        return msgspec.json.encode(snap)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ConfigError(f"a window's accumulator or value is not JSON, so it cannot be "
                          f"snapshotted: {exc}") from exc


def decode(data: bytes) -> Snapshot:
    try:
        snap = msgspec.json.decode(data, type=Snapshot)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"not a window operator snapshot: {exc}") from exc
    if snap.version != VERSION:
        raise ConfigError(f"a window snapshot of version {snap.version}; this swell reads {VERSION}")
    return snap
