"""Several nodes on one broker: heartbeats, a function's global readings, and its split.

Any number of ``swell run`` processes may serve one app on one broker; each is a *node* and runs
every function of the app. Every tick a node publishes, per function, its own raw readings (an
``Observation``) in the broker's kv store, reads its peers' and merges them with its own into one
global ``Observation``, so that its controller decides for the function as a whole. The global
decision is then split across the live nodes by rank (node ids in order), so the shares sum to it
and two nodes never each scale to the full target. A node that stops publishing (it died) drops out
when its entries expire, and the others' shares grow to cover it; the queue's leases bring its
unfinished events back.

One node per function, its *leader* (picked by ``leader`` from the sorted live nodes), decides for
all: the others apply its latest published decision, split over the members it counts, so once
every node has seen it (within a tick) the shares sum to it exactly. A node joining takes no share
until every peer counts it, so that while the views differ the shares never sum past it.
Every node keeps its own controller fed with the global readings, so
the next leader is warm when the leader dies.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
import zlib
from typing import Any

import msgspec

from swell.brokers.lease import machine_mark
from swell.core import keys
from swell.core.cost import Cost
from swell.scaling.hotkeys import HotKey
from swell.scaling.signals import Observation

#: where heartbeats and status records live (see ``swell.core.keys``)
NODES_PREFIX, STATUS_PREFIX = keys.NODES, keys.STATUS
#: service times a node publishes per tick (a sample is enough for percentiles)
MAX_PUBLISHED_TIMES = 64

_COUNTERS = ("finished", "attempts", "errors", "throttles", "cold_starts")
_GAUGES = ("in_flight", "starting", "ready", "busy", "current")


def node_id() -> str:
    """``host-pid-<mark><xxxx>``: unique even for two runtimes in one process; the mark names this
    machine's boot and pid namespace, so a lease held under the id is taken over at once once
    that process is gone (``brokers.lease.gone``)."""
    mark = machine_mark() or "------"
    return f"{socket.gethostname()}-{os.getpid()}-{mark}{uuid.uuid4().hex[:4]}"


class NodeInfo(msgspec.Struct, kw_only=True):
    """A node's heartbeat, kept in the kv store under ``swell/nodes/<app>/<node>`` with a TTL."""

    app: str
    node: str
    host: str
    pid: int
    started: float
    seen: float
    functions: dict[str, int]
    """This node's share (units) of each function."""
    in_flight: int


class FunctionStatus(msgspec.Struct, kw_only=True):
    """A function on one node, kept in the kv store: what ``swell status`` shows, and what the
    other nodes merge into their global readings (``obs``, this node's own)."""

    app: str
    function: str
    node: str
    queue: str
    mode: str
    controller: str
    desired: int
    """The decision for the function on all nodes together (the leader's)."""
    share: int
    """This node's part of ``desired``."""
    nodes: int
    leader: str
    decided_at: float
    """When the leader made the decision (its wall clock): nodes that show the same have applied
    the same decision."""
    reason: str
    signals: dict[str, Any]
    """The global signals the decision was made on."""
    obs: Observation
    group: str | None = None
    """``stream/group`` for a function on a consumer group."""
    partitions: list[int] = []
    """A group's partitions this node works."""
    lags: list[int] = []
    """A group's lag per partition."""
    hot_keys: list[HotKey] = []
    window: dict[str, Any] | None = None
    """A window function's watermark, its delay, open windows, late counts and state size."""
    members: list[str] = []
    """The nodes ``desired`` is split over, in rank order: the leader's view of who is live, which
    every node follows (one not yet in it takes no share until the leader counts it)."""
    succeeded: int
    dead_lettered: int
    cost: Cost | None = None
    """What the function ran on this node since it started, priced (``swell cost``)."""
    at: float


def _offset(nodes: int, salt: str) -> int:
    return zlib.crc32(salt.encode()) % nodes


def share(total: int, rank: int, nodes: int, salt: str = "") -> int:
    """Node ``rank``'s part of ``total`` units split over ``nodes`` nodes: equal parts, and one
    more for as many nodes as the remainder, starting at an offset taken from ``salt`` (the
    function's name) so that several small functions do not all land on the first node."""
    if nodes <= 1:
        return total
    base, extra = divmod(total, nodes)
    return base + (1 if (rank - _offset(nodes, salt)) % nodes < extra else 0)


def leader(nodes: list[str], salt: str = "") -> str:
    """The node (of ``nodes``, in order) whose decision the others follow: the first to get an
    extra unit from ``share``."""
    return nodes[_offset(len(nodes), salt)]


def for_publishing(o: Observation) -> Observation:
    """``o`` with its service times cut to a sample, small enough to publish every tick."""
    if len(o.service_times_s) <= MAX_PUBLISHED_TIMES:
        return o
    step = len(o.service_times_s) / MAX_PUBLISHED_TIMES
    times = tuple(o.service_times_s[int(i * step)] for i in range(MAX_PUBLISHED_TIMES))
    return dataclasses.replace(o, service_times_s=times)


class ClusterView:
    """One function's global readings: this node's own plus its live peers'.

    Counters (finished, attempts, ...) must stay monotonic for the ``Sampler``'s rates while peers
    come and go, so a peer's counters are counted from the first time it is seen (its baseline),
    and a peer that leaves keeps what it added. Gauges (in flight, units) are summed as they are.
    A peer's service times count once, when its reading is new.
    """

    def __init__(self) -> None:
        self._seen: dict[str, Observation] = {}
        self._added = dict.fromkeys(_COUNTERS, 0)

    def merge(self, own: Observation, peers: dict[str, Observation]) -> Observation:
        if not peers and not self._seen:
            return own  # alone, as most runs are
        times = list(own.service_times_s)
        for node, o in peers.items():
            prev = self._seen.get(node)
            if prev is None or prev.t == o.t:
                continue  # a new peer's baseline, or the same reading as last tick
            for c in _COUNTERS:
                self._added[c] += max(0, getattr(o, c) - getattr(prev, c))
            times.extend(o.service_times_s)
        self._seen = dict(peers)
        totals: dict[str, int] = {c: getattr(own, c) + self._added[c] for c in _COUNTERS}
        for g in _GAUGES:
            totals[g] = getattr(own, g) + sum(getattr(o, g) for o in peers.values())
        return dataclasses.replace(own, service_times_s=tuple(times), **totals)
