"""``swell run`` as real processes on one SQLite file.

A SIGKILL mid-stream loses nothing (at-least-once); two processes share a queue without handling
any event twice; a graceful stop hands unfinished events to the next process at once rather than
leaving them to their leases. The app is ``apps/sink_app.py``: it records every handled event in a
sink file that outlives any process.
"""

from __future__ import annotations

import signal
from collections import Counter

import pytest

from support.swellprocs import EXIT_S, AppConfig, Swell, tally, wait_for
from swell import QueueStats

pytestmark = pytest.mark.slow



QUEUE = "jobs"
DLQ = "jobs.dlq"


# Short leases so a dead process's events come back quickly; max_receives high enough that the
# redeliveries after the crash never dead-letter; slow enough that the kill lands mid-stream.
CRASH = AppConfig(visibility_s=1.0, max_receives=20, sleep_s=0.02, concurrency=8)


def test_sigkill_mid_stream_loses_nothing(swell: Swell) -> None:
    n = 1000
    first = swell.start(CRASH)
    swell.wait_ready(first)
    swell.send(n)

    def mid_stream() -> QueueStats | None:
        stats = swell.stats()
        return stats if len(swell.done_ids()) >= n // 10 and stats.in_flight > 0 else None

    before = wait_for(mid_stream, 20, "some events done and some in flight")
    first.send_signal(signal.SIGKILL)
    assert first.wait(EXIT_S) == -signal.SIGKILL
    done_at_kill = len(swell.done_ids())
    left = swell.stats()
    print(f"\nkilled with {done_at_kill} of {n} done, {before.in_flight} in flight; "
          f"left in the queue: {left}")
    assert done_at_kill < n and left.total > 0, "the kill came too late to prove anything"

    second = swell.start(CRASH)
    wait_for(lambda: swell.stats().total == 0, 30, "the queue to drain after the restart")
    assert swell.terminate(second) == 0

    lost, duplicated = tally(swell.records(), n)
    print(f"lost {len(lost)}, duplicated {duplicated} (at-least-once allows duplicates)")
    assert not lost, f"lost {len(lost)} event(s), e.g. {sorted(lost)[:20]}"
    assert swell.stats(DLQ).total == 0


# Leases far longer than any handler: no lease expires, so no event may be handled twice.
SHARED = AppConfig(visibility_s=30.0, max_receives=5, sleep_s=0.01, concurrency=32)


def test_two_processes_split_the_work_without_doubling_it(swell: Swell) -> None:
    n = 2000
    a, b = swell.start(SHARED), swell.start(SHARED)
    swell.wait_ready(a)
    swell.wait_ready(b)
    # both count each other first: a node takes a share only once its peers count it, and the
    # whole burst (0.6 s of work) can be done before then (seen: one process handled all of it)
    wait_for(lambda: len({s.node for s in swell.statuses() if s.nodes == 2}) == 2, 20,
             "each node to count the other")
    swell.send(n)
    wait_for(lambda: swell.stats().total == 0, 30, f"{n} events to be handled")
    assert swell.terminate(a) == 0
    assert swell.terminate(b) == 0

    records = swell.records()
    lost, duplicated = tally(records, n)
    by_pid = Counter(r.pid for r in records)
    spans = {pid: (min(r.start for r in records if r.pid == pid),
                   max(r.end for r in records if r.pid == pid)) for pid in by_pid}
    print(f"\nlost {len(lost)}, duplicated {duplicated}; per pid: {dict(by_pid)}; "
          f"busy from/to: {spans}")
    assert not lost, f"lost {len(lost)} event(s), e.g. {sorted(lost)[:20]}"
    assert duplicated == 0, "an event was handled twice although no lease expired"
    assert set(by_pid) == {a.pid, b.pid}
    assert min(by_pid.values()) >= n // 10, f"the work was not shared: {dict(by_pid)}"
    assert swell.stats(DLQ).total == 0


# Handlers far longer than the grace period, leases far longer than the test's patience: only a
# release at shutdown lets the next process have the events in time.
SLOW = AppConfig(visibility_s=60.0, max_receives=5, sleep_s=2.0, concurrency=32)


def test_graceful_stop_hands_unfinished_events_to_the_next_process(swell: Swell) -> None:
    n = 20
    first = swell.start(SLOW, grace="0.2s")
    swell.wait_ready(first)
    swell.send(n)
    wait_for(lambda: swell.stats().in_flight == n, 10, f"all {n} events to be in flight")
    assert swell.terminate(first) == 0

    done_by_first = swell.done_ids()
    released = swell.stats()
    print(f"\nthe first process finished {len(done_by_first)} of {n}; after it stopped: {released}")
    assert released.in_flight == 0, "unfinished events were left leased, not released"
    assert released.depth == n - len(done_by_first) > 0

    second = swell.start(SLOW)
    wait_for(lambda: len(swell.done_ids()) == n, 10,
             "the second process to handle the released events (their leases were 60 s)")
    wait_for(lambda: swell.stats().total == 0, 5, "the last acks")
    assert swell.terminate(second) == 0

    lost, duplicated = tally(swell.records(), n)
    print(f"lost {len(lost)}, duplicated {duplicated}")
    assert not lost
    assert swell.stats(DLQ).total == 0
