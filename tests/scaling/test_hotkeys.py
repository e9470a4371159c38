"""Hot keys: the space-saving sketch's guarantees, and decayed per-partition rates on a manual clock."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from collections.abc import Iterable

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swell.core.clock import ManualClock
from swell.core.errors import ConfigError
from swell.scaling.hotkeys import HotKey, HotKeys, SpaceSaving

# -- SpaceSaving ------------------------------------------------------------------------------------


def assert_space_saving_guarantee(sketch: SpaceSaving, truth: Counter[str]) -> None:
    total = sum(truth.values())
    kept = {key: (count, error) for key, count, error in sketch.top(sketch.capacity)}
    assert len(kept) == len(sketch) <= sketch.capacity
    assert sum(count for count, _ in kept.values()) == total  # the counters account for every event
    for key, (count, error) in kept.items():
        assert count - error <= truth[key] <= count, key
        assert error <= total / sketch.capacity
    for key, n in truth.items():
        if n > total / sketch.capacity:
            assert key in kept, f"{key} seen {n} times of {total} is missing"


def zipf_stream(rng: random.Random, n: int, distinct: int, s: float = 1.1) -> list[str]:
    weights = [1 / (rank + 1) ** s for rank in range(distinct)]
    return rng.choices([f"k{rank}" for rank in range(distinct)], weights, k=n)


def test_counts_are_exact_while_the_keys_fit() -> None:
    sketch = SpaceSaving(capacity=8)
    stream = "abracadabra-bar"
    for key in stream:
        sketch.add(key)
    sketch.add("z", 5)
    truth = Counter(stream) + Counter({"z": 5})
    assert len(truth) <= 8
    assert sketch.top(100) == sorted(((k, n, 0) for k, n in truth.items()), key=lambda t: (-t[1], t[0]))
    assert sketch.top(2) == [("a", 6, 0), ("z", 5, 0)]
    assert sketch.top(4)[2:] == [("b", 3, 0), ("r", 3, 0)]  # ties are broken by key, so the order is stable
    assert len(sketch) == len(truth)


def test_a_new_key_takes_over_the_smallest_counter_and_inherits_it_as_error() -> None:
    sketch = SpaceSaving(capacity=2)
    for key in "aaabbc":
        sketch.add(key)
    assert sketch.top(2) == [("a", 3, 0), ("c", 3, 2)]


def test_guarantee_holds_on_a_zipf_stream() -> None:
    rng = random.Random(6)
    stream = zipf_stream(rng, n=100_000, distinct=5_000)
    sketch = SpaceSaving(capacity=64)
    for key in stream:
        sketch.add(key)
    truth = Counter(stream)
    assert_space_saving_guarantee(sketch, truth)
    true_top = [key for key, _ in truth.most_common(5)]
    assert [key for key, _, _ in sketch.top(5)] == true_top


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 12),
    stream=st.lists(st.tuples(st.integers(0, 30).map(str), st.integers(1, 5)), max_size=300),
)
def test_guarantee_holds_on_any_stream(capacity: int, stream: list[tuple[str, int]]) -> None:
    sketch = SpaceSaving(capacity)
    truth: Counter[str] = Counter()
    for key, n in stream:
        sketch.add(key, n)
        truth[key] += n
    assert_space_saving_guarantee(sketch, truth)


def test_memory_stays_bounded_with_many_distinct_keys() -> None:
    sketch = SpaceSaving(capacity=32)
    for i in range(100_000):
        sketch.add(f"key-{i}")
        if i % 9_973 == 0:
            assert len(sketch) <= 32
    assert len(sketch) == 32
    assert len(sketch._heap) == 32  # the lazy min-heap is the one structure that could grow


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError):
        SpaceSaving(capacity=0)
    with pytest.raises(ValueError):
        SpaceSaving().add("a", 0)
    with pytest.raises(ConfigError):
        HotKeys(partitions=0)
    with pytest.raises(ConfigError):
        HotKeys(partitions=1, half_life_s=0)


# -- HotKeys ----------------------------------------------------------------------------------------

HALF_LIFE_S = 30.0


def make(partitions: int = 4, capacity: int = 16) -> tuple[HotKeys, ManualClock]:
    clock = ManualClock()
    return HotKeys(partitions, capacity=capacity, half_life_s=HALF_LIFE_S, clock=clock.monotonic), clock


def feed(
    hot: HotKeys, clock: ManualClock, seconds: float, rate: float, traffic: Iterable[tuple[int, str | None]]
) -> None:
    """``seconds`` of events at ``rate`` per second, evenly spaced, taken in turn from ``traffic``."""
    events = itertools.cycle(traffic)
    for _ in range(round(seconds * rate)):
        clock.advance(1 / rate)
        hot.observe(*next(events))


def uniform(partition: int, keys: int) -> list[tuple[int, str | None]]:
    return [(partition, f"p{partition}-user-{i}") for i in range(keys)]


def test_a_promotion_blast_shows_within_a_half_life() -> None:
    hot, clock = make(partitions=4, capacity=16)
    # Ten minutes of calm: every partition spreads 100 events/s over 500 keys, far more than 16.
    calm = [event for p in range(4) for event in uniform(p, 500)]
    rng = random.Random(3)
    rng.shuffle(calm)
    feed(hot, clock, seconds=600, rate=400, traffic=calm)
    assert max(k.share for k in hot.top(2, k=16)) < 0.1

    # Then "promo" takes half of partition 2's traffic; the partition's total rate stays the same.
    others = [event for event in calm if event[0] != 2]
    blast = others + others + [(2, "promo")] * 500 + uniform(2, 500)
    rng.shuffle(blast)
    feed(hot, clock, seconds=HALF_LIFE_S, rate=400, traffic=blast)
    first = hot.top(2, k=1)
    assert first[0].key == "promo" and first[0].partition == 2
    assert first[0].share == pytest.approx(0.25, abs=0.05)  # half of the last half-life's events
    assert hot.top(None, k=1)[0].key == "promo"
    assert all(k.key != "promo" for p in (0, 1, 3) for k in hot.top(p, k=16))

    feed(hot, clock, seconds=5 * HALF_LIFE_S, rate=400, traffic=blast)
    [promo] = hot.top(2, k=1)
    assert promo.key == "promo"
    assert promo.share == pytest.approx(0.5, abs=0.03)
    assert promo.rate_per_s == pytest.approx(50, rel=0.05)
    assert hot.rate_per_s(2) == pytest.approx(100, rel=0.02)
    assert hot.rate_per_s() == pytest.approx(400, rel=0.02)
    overall = hot.top(None, k=1)[0]
    assert overall.partition is None
    assert overall.share == pytest.approx(0.125, abs=0.01)


def test_a_rate_halves_each_half_life_after_its_traffic_stops() -> None:
    hot, clock = make(partitions=1)
    feed(hot, clock, seconds=10 * HALF_LIFE_S, rate=20, traffic=[(0, "a"), (0, "b")])
    rates = []
    for _ in range(4):
        [a] = [k for k in hot.top(0, k=2) if k.key == "a"]
        rates.append(a.rate_per_s)
        feed(hot, clock, seconds=HALF_LIFE_S, rate=10, traffic=[(0, "b")])
    assert rates[0] == pytest.approx(10, rel=0.01)
    for before, after in itertools.pairwise(rates):
        assert after / before == pytest.approx(0.5, rel=1e-3)
    assert hot.top(0, k=1)[0].key == "b"


def test_a_new_tracker_reports_the_rate_from_the_start() -> None:
    hot, clock = make(partitions=1)
    feed(hot, clock, seconds=5, rate=10, traffic=[(0, "a")])
    assert hot.top(0)[0].rate_per_s == pytest.approx(10, rel=0.02)  # not 5 s worth of a 43 s average
    assert hot.top(0)[0].share == pytest.approx(1.0)


def test_long_runs_and_clock_jumps_stay_finite() -> None:
    clock = ManualClock()
    hot = HotKeys(1, capacity=4, half_life_s=1.0, clock=clock.monotonic)
    feed(hot, clock, seconds=300, rate=100, traffic=[(0, "a")])  # 300 half-lives: weights renormalise
    assert hot._landmark > 250
    [a] = hot.top(0)
    assert a.rate_per_s == pytest.approx(100, rel=0.01)
    clock.advance(1e6)  # long silence: everything decays to nothing, nothing divides by zero
    assert hot.rate_per_s(0) == 0.0
    assert all(k.rate_per_s == 0.0 and k.share == 0.0 for k in hot.top(0))
    feed(hot, clock, seconds=20, rate=100, traffic=[(0, "b")])
    [b] = hot.top(0, k=1)
    assert b.key == "b" and b.rate_per_s == pytest.approx(100, rel=0.01)
    assert all(math.isfinite(k.rate_per_s) for k in hot.top(0, k=4))


def test_events_without_a_key_are_never_ranked() -> None:
    hot, clock = make(partitions=2)
    feed(hot, clock, seconds=60, rate=10, traffic=[(0, None)])
    assert hot.top(0) == []
    assert hot.top(None) == []
    feed(hot, clock, seconds=10 * HALF_LIFE_S, rate=10, traffic=[(0, None), (0, None), (0, None), (0, "a")])
    [a] = hot.top(0)
    assert a.key == "a"
    assert a.share == pytest.approx(0.25, abs=0.02)  # a share of all the partition's events


def test_partitions_are_kept_apart() -> None:
    hot, clock = make(partitions=3, capacity=4)
    traffic: list[tuple[int, str | None]] = [(0, "x"), (0, "x"), (1, "y"), (1, "y")]
    feed(hot, clock, seconds=60, rate=60, traffic=[*traffic, (0, "shared"), (1, "shared")])
    assert [k.key for k in hot.top(0)] == ["x", "shared"]
    assert [k.key for k in hot.top(1)] == ["y", "shared"]
    assert hot.top(2) == []
    assert {k.partition for k in hot.top(1)} == {1}
    overall = {k.key: k for k in hot.top(None)}
    assert hot.top(0)[1].share == pytest.approx(1 / 3, abs=0.01)
    assert overall["shared"].rate_per_s == pytest.approx(20, rel=0.02)  # both partitions' 10/s
    assert overall["shared"].share == pytest.approx(1 / 3, abs=0.01)
    assert overall["x"].rate_per_s == pytest.approx(20, rel=0.02)
    for bad in (-1, 3):
        with pytest.raises(ConfigError):
            hot.observe(bad, "k")
        with pytest.raises(ConfigError):
            hot.top(bad)


def test_snapshot_is_json_and_decodes_to_hot_keys() -> None:
    hot, clock = make(partitions=2)
    feed(hot, clock, seconds=30, rate=30, traffic=[(0, "a"), (0, "a"), (1, "b")])
    snapshot = json.loads(json.dumps(hot.snapshot(k=3)))
    assert snapshot["half_life_s"] == HALF_LIFE_S
    assert snapshot["rate_per_s"] == pytest.approx([20, 10], rel=0.02)
    keys = msgspec.convert(snapshot["keys"], list[HotKey])
    assert keys == hot.top(0, k=3) + hot.top(1, k=3)
    assert msgspec.convert(snapshot["top"], list[HotKey]) == hot.top(None, k=3)
    assert msgspec.json.decode(msgspec.json.encode(keys), type=list[HotKey]) == keys
