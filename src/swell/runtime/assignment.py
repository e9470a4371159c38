"""Which node works which partitions of a consumer group: a sticky assignment (pure), the record
the leader writes, and its one-line summary for the log."""

from __future__ import annotations

import math

import msgspec

__all__ = ["Assignment", "assign", "summary"]


class Assignment(msgspec.Struct):
    owners: dict[int, str]


def assign(partitions: int, nodes: list[str], previous: dict[int, str]) -> dict[int, str]:
    """Partitions to nodes, moving as few as possible: a partition stays with its owner while the
    owner is among ``nodes`` and holds no more than ``ceil(P/N)``; the rest go to the least loaded;
    then the most loaded give to the least until loads differ by at most one."""
    if not nodes:
        return {}
    quota = math.ceil(partitions / len(nodes))
    load = dict.fromkeys(nodes, 0)
    out: dict[int, str] = {}
    for p in range(partitions):
        owner = previous.get(p)
        if owner in load and load[owner] < quota:
            out[p] = owner
            load[owner] += 1
    for p in range(partitions):
        if p not in out:
            node = min(nodes, key=lambda n: (load[n], n))
            out[p] = node
            load[node] += 1
    while True:
        most = max(nodes, key=lambda n: (load[n], n))
        least = min(nodes, key=lambda n: (load[n], n))
        if load[most] - load[least] <= 1:
            return out
        p = max(q for q, n in out.items() if n == most)
        out[p] = least
        load[most] -= 1
        load[least] += 1


def summary(owners: dict[int, str]) -> str:
    by: dict[str, list[int]] = {}
    for p, n in sorted(owners.items()):
        by.setdefault(n, []).append(p)
    return "; ".join(f"{n}: {ps}" for n, ps in sorted(by.items()))

