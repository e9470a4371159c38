"""Group watermarks: the lowest partition holds the watermark back, unless it is idle (silent for
``idle`` of processing time with nothing waiting); a slow partition (a backlog) never is."""

from __future__ import annotations

import math
from typing import Any

import pytest

from swell.core.errors import ConfigError
from swell.windows import BoundedOutOfOrder, GroupWatermark, WindowValueError

T = 1_700_000_000.0
INF = math.inf

# steps: ("see", partition, event time - T, now) | ("at", now, backlog or None, watermark - T)
CASES: list[tuple[str, BoundedOutOfOrder, int, list[tuple[Any, ...]], int]] = [
    ("the lowest partition holds the watermark", BoundedOutOfOrder(5), 2, [
        ("at", 0.0, None, -INF),
        ("see", 0, 100.0, 0.0),
        ("at", 1.0, None, -INF),  # partition 1 has seen nothing yet
        ("see", 1, 10.0, 1.0),
        ("at", 2.0, None, 5.0),
        ("see", 1, 8.0, 3.0),  # out of order: no step back
        ("at", 1000.0, None, 5.0),  # no idle: silence holds it forever
    ], 0),
    ("an idle partition releases the watermark", BoundedOutOfOrder(5, idle=30), 2, [
        ("see", 0, 100.0, 0.0),
        ("see", 1, 10.0, 0.0),
        ("at", 29.0, {1: 0}, 5.0),
        ("see", 0, 200.0, 29.0),
        ("at", 30.0 - 1e-6, {1: 0}, 5.0),
        ("at", 30.0, {1: 0}, 195.0),  # partition 1 silent for 30 s, nothing waiting
    ], 0),
    ("a slow partition (a backlog) does not", BoundedOutOfOrder(5, idle=30), 2, [
        ("see", 0, 100.0, 0.0),
        ("see", 1, 10.0, 0.0),
        ("see", 0, 200.0, 40.0),
        ("at", 100.0, {0: 0, 1: 12}, 5.0),
        ("at", 100.0, {1: 0}, 195.0),  # its backlog read, it is idle
    ], 0),
    ("a partition that never had an event is idle from the first now", BoundedOutOfOrder(0, idle=10),
     2, [
        ("at", 100.0, None, -INF),
        ("see", 0, 50.0, 105.0),
        ("at", 109.0, None, -INF),
        ("at", 110.0, None, 50.0),
    ], 0),
    ("all idle: the highest of their watermarks", BoundedOutOfOrder(1, idle=10), 3, [
        ("see", 0, 50.0, 0.0),
        ("see", 1, 20.0, 0.0),
        ("at", 5.0, None, -INF),
        ("at", 10.0, None, 49.0),
    ], 0),
    ("a waking partition behind does not move it back (counted)", BoundedOutOfOrder(5, idle=30), 2, [
        ("see", 0, 100.0, 0.0),
        ("see", 0, 200.0, 40.0),
        ("at", 40.0, None, 195.0),  # partition 1 never seen, silent since 0
        ("see", 1, 20.0, 41.0),
        ("at", 41.0, None, 195.0),
        ("see", 1, 300.0, 42.0),
        ("at", 42.0, None, 195.0),
        ("see", 0, 400.0, 43.0),
        ("at", 43.0, None, 295.0),
    ], 1),
]


@pytest.mark.parametrize(("strategy", "partitions", "steps", "regressions"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_group_watermark(strategy: BoundedOutOfOrder, partitions: int, steps: list[tuple[Any, ...]],
                         regressions: int) -> None:
    group = GroupWatermark(strategy, partitions)
    for step in steps:
        if step[0] == "see":
            group.observe(step[1], T + step[2], step[3])
        else:
            assert group.current(step[1], step[2]) - T == step[3], step
    assert group.regressions == regressions


def test_partition_watermarks_and_last_seen() -> None:
    group = GroupWatermark(BoundedOutOfOrder("10s", idle="1m"), 2)
    assert group.partition(0) == -INF and group.last_seen(0) is None
    group.observe(0, T + 30, now=5.0)
    group.observe(0, T + 20, now=6.0)
    assert group.partition(0) == T + 20 and group.last_seen(0) == 6.0
    assert not group.idle(0, 65.0) and group.idle(0, 66.0) and not group.idle(0, 66.0, {0: 1})


def test_snapshot_and_restore() -> None:
    strategy = BoundedOutOfOrder(5, idle=30)
    group = GroupWatermark(strategy, 3)
    group.observe(0, T + 100, 0.0)
    group.observe(2, T + 50, 1.0)
    group.current(40.0)
    group.observe(1, T + 1, 41.0)
    group.current(41.0)
    again = GroupWatermark(strategy, 3)
    again.restore(group.snapshot())
    assert again.snapshot() == group.snapshot()
    for g in (group, again):
        g.observe(1, T + 300, 50.0)
    assert again.current(80.0) == group.current(80.0) and again.regressions == group.regressions == 1
    with pytest.raises(ConfigError, match="over 3 partitions"):
        GroupWatermark(strategy, 2).restore(group.snapshot())


@pytest.mark.parametrize(("make", "message"), [
    (lambda: BoundedOutOfOrder(-1), "BoundedOutOfOrder bound must be zero or more"),
    (lambda: BoundedOutOfOrder(1, idle=0), "BoundedOutOfOrder idle must be above zero"),
    (lambda: GroupWatermark(BoundedOutOfOrder(1), 0), "partitions"),
    (lambda: GroupWatermark("10s", 2), "strategy must be a BoundedOutOfOrder"),  # type: ignore[arg-type]
    (lambda: GroupWatermark(BoundedOutOfOrder(1), 2).observe(2, T, 0.0), r"partition 2 is not one of 0..1"),
])
def test_bad_settings(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_bad_event_time() -> None:
    group = GroupWatermark(BoundedOutOfOrder(1), 1)
    with pytest.raises(WindowValueError):
        group.observe(0, math.nan, 0.0)
    assert group.partition(0) == -INF
