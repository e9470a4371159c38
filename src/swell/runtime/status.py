"""The read side: what runs on a broker, as typed values, for ``swell status`` and its kin now and
the web dashboard next.

Everything here reads a Broker (its kv store, its queue, topic and stream stats) and never writes:
the records the runtime nodes publish under ``swell/status/`` and ``swell/nodes/`` (see ``cluster``
and ``swell.core.keys``), the consumer groups' checkpoints, the sagas' logs, the dead-letter
queues. A record that does not decode (one of another swell version) is left out, as the nodes
themselves do.

``RuntimeSnapshot`` is the other direction: what one running Runtime knows of itself, built on its
event loop (``snapshot_of``) as one immutable value (for ``/metrics``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from swell.brokers.base import (
    Broker,
    Delivery,
    KvEntry,
    QueueStats,
    StreamSpec,
    SubscriptionStats,
    TopicInfo,
)
from swell.brokers.logs import committed
from swell.core import keys
from swell.core.cost import Cost
from swell.core.errors import ConfigError
from swell.runtime.cluster import FunctionStatus, NodeInfo
from swell.runtime.cost import cost_record
from swell.runtime.slo import SloSnapshot, slo_of
from swell.runtime.sources import read_sources
from swell.scaling.hotkeys import HotKey
from swell.scaling.signals import Signals
from swell.triggers.base import SourceStatus

if TYPE_CHECKING:
    from swell.patterns.sagas.log import SagaLog
    from swell.runtime.app import Function
    from swell.runtime.runtime import Runtime

T = TypeVar("T")

__all__ = [
    "DeadLetters", "FunctionOnNode", "FunctionSnapshot", "FunctionView", "GroupLag",
    "RuntimeSnapshot", "Status", "StreamView", "TopicView", "dead_letter_queue",
    "read_dead_letter_queues", "read_dead_letters", "read_functions", "read_nodes", "read_queues",
    "read_saga", "read_sagas", "read_status", "read_streams", "read_topics", "snapshot_of",
]


# -- functions ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FunctionOnNode:
    """One node's part of a function."""

    node: str
    share: int
    """Units of the function's decision this node takes."""
    leads: bool
    """This node's record names itself the function's leader."""
    partitions: tuple[int, ...]
    """For a function on a consumer group: the partitions this node works."""
    hot_keys: tuple[HotKey, ...]
    succeeded: int
    """Events this node acked since it started (a counter)."""
    dead_lettered: int
    at: float
    """When the node wrote its record (its wall clock)."""
    cost: Cost | None = None
    """What the function ran on this node, priced (``None``: a record of an older swell)."""


@dataclass(frozen=True, slots=True)
class FunctionView:
    """A running function, over every node that runs it; the decision and signals are those of
    its newest record (every node holds the global signals)."""

    app: str
    function: str
    queue: str
    mode: str
    controller: str
    desired: int
    """Units the leader decided on, for all nodes together."""
    reason: str
    signals: Signals
    group: str | None
    """``stream/group`` for a function on a consumer group."""
    lags: tuple[int, ...]
    """A group's lag per partition."""
    nodes: tuple[FunctionOnNode, ...]
    window: dict[str, Any] | None = None
    """A window function's, over its nodes: watermark (the lowest), delay (the longest), open
    windows, late accepted and dropped, state bytes (summed)."""

    @property
    def name(self) -> str:
        return f"{self.app}.{self.function}"

    def hot_keys(self, most: int = 5) -> list[HotKey]:
        """The hottest keys over its nodes, by recent rate."""
        return _hottest((k for n in self.nodes for k in n.hot_keys), most)


def _hottest(keys: Iterable[HotKey], most: int | None = None) -> list[HotKey]:
    """``keys``, the highest rates first (the first ``most`` of them)."""
    return sorted(keys, key=lambda k: -k.rate_per_s)[:most]


class _Record(msgspec.Struct, frozen=True):
    """A status record, its signals typed."""

    status: FunctionStatus
    signals: Signals


async def _records(broker: Broker, app: str | None) -> list[_Record]:
    out = []
    for status in _decoded(await broker.kv.scan(keys.STATUS if app is None else keys.statuses(app)),
                           FunctionStatus):
        try:
            out.append(_Record(status, msgspec.convert(status.signals, Signals)))
        except msgspec.ValidationError:
            continue
    return out


def _decoded(entries: Sequence[KvEntry], kind: type[T]) -> list[T]:
    out = []
    for e in entries:
        try:
            out.append(msgspec.json.decode(e.value, type=kind))
        except msgspec.DecodeError:
            continue  # a record of another swell version
    return out


def _windows(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    found = [w for w in parts if w]
    if not found:
        return None
    marks = [w["watermark"] for w in found if w.get("watermark") is not None]
    delays = [w["delay_s"] for w in found if w.get("delay_s") is not None]
    out: dict[str, Any] = {"watermark": min(marks) if marks else None,
                           "delay_s": max(delays) if delays else None}
    for k in ("open_windows", "late_accepted", "late_dropped", "state_bytes"):
        out[k] = sum(int(w.get(k) or 0) for w in found)
    return out


async def read_functions(broker: Broker, app: str | None = None) -> list[FunctionView]:
    """Every function running on ``broker`` (of ``app``), in the order of their records' keys."""
    by_fn: dict[tuple[str, str], list[_Record]] = {}
    for r in await _records(broker, app):
        by_fn.setdefault((r.status.app, r.status.function), []).append(r)
    return [_view(records) for records in by_fn.values()]


def _view(records: list[_Record]) -> FunctionView:
    newest = max(records, key=lambda r: r.status.at)
    r = newest.status
    return FunctionView(
        app=r.app, function=r.function, queue=r.queue, mode=r.mode, controller=r.controller,
        desired=r.desired, reason=r.reason, signals=newest.signals, group=r.group,
        lags=tuple(r.lags), window=_windows([x.status.window for x in records]),
        nodes=tuple(FunctionOnNode(node=n.node, share=n.share, leads=n.node == n.leader,
                                   partitions=tuple(n.partitions), hot_keys=tuple(n.hot_keys),
                                   succeeded=n.succeeded, dead_lettered=n.dead_lettered, at=n.at,
                                   cost=n.cost)
                    for n in (x.status for x in records)))


# -- nodes, queues, topics -----------------------------------------------------------------------
async def read_nodes(broker: Broker, app: str | None = None) -> list[NodeInfo]:
    """The live runtime nodes on ``broker`` (of ``app``): their last heartbeats."""
    return _decoded(await broker.kv.scan(keys.NODES if app is None else keys.nodes(app)), NodeInfo)


async def read_queues(broker: Broker) -> list[QueueStats]:
    """Every declared queue's stats: ready, in flight, delayed, age of the oldest."""
    return [await broker.stats(s.name) for s in await broker.queues()]


@dataclass(frozen=True, slots=True)
class TopicView:
    """A topic, and each subscription with its queue's stats."""

    topic: TopicInfo
    subscriptions: tuple[tuple[SubscriptionStats, QueueStats], ...]


async def read_topics(broker: Broker) -> list[TopicView]:
    return [TopicView(t, tuple([(s, await broker.stats(s.spec.queue.name))
                                for s in t.subscriptions]))
            for t in await broker.topics()]


# -- streams -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GroupLag:
    """A consumer group of a stream: its lag and who works it, per partition."""

    group: str
    lags: tuple[int, ...]
    nodes: tuple[str | None, ...]
    """The node working each partition (``None``: none that says so)."""


@dataclass(frozen=True, slots=True)
class StreamView:
    spec: StreamSpec
    kept: tuple[int, ...]
    """Events kept, per partition."""
    groups: tuple[GroupLag, ...]
    hot_keys: tuple[HotKey, ...]
    """Of its groups' functions on every node, the hottest first."""


async def read_streams(broker: Broker) -> list[StreamView]:
    """Every stream, its partitions and consumer groups (those with a checkpoint)."""
    specs = await broker.streams()
    if not specs:
        return []
    grouped = [r.status for r in await _records(broker, None) if r.status.group]
    owners = {(r.group, p): r.node for r in grouped for p in r.partitions}
    out = []
    for spec in specs:
        partitions = range(spec.partitions)
        prefix = f"{keys.GROUPS}{spec.name}/"
        names = sorted({e.key[len(prefix):].split("/", 1)[0]
                        for e in await broker.kv.scan(prefix)})
        groups = []
        for g in names:
            done = await committed(broker.kv, spec.name, g)
            lags = await broker.lag(spec.name, [done.get(p, 0) for p in partitions])
            groups.append(GroupLag(g, tuple(lags), tuple(owners.get((f"{spec.name}/{g}", p))
                                                         for p in partitions)))
        hot = _hottest(k for r in grouped if (r.group or "").startswith(f"{spec.name}/")
                       for k in r.hot_keys)
        out.append(StreamView(spec, tuple(await broker.lag(spec.name, [0] * spec.partitions)),
                              tuple(groups), tuple(hot)))
    return out


# -- dead letters --------------------------------------------------------------------------------
async def dead_letter_queue(broker: Broker, queue: str) -> str:
    """The dead-letter queue of ``queue``; or ``queue`` itself if it is one (a consumer group's,
    ``<stream>.<group>.dlq``, belongs to no queue)."""
    spec = await broker.queue_spec(queue)
    if spec.is_dead_letter:
        return spec.name
    if spec.dead_letter_queue is None:
        raise ConfigError(f"queue {queue!r} has no dead-letter queue")
    return spec.dead_letter_queue


async def read_dead_letter_queues(broker: Broker, queues: Sequence[str] = ()) -> list[QueueStats]:
    """The stats of every dead-letter queue (or of those of ``queues``)."""
    if queues:
        names = list(dict.fromkeys([await dead_letter_queue(broker, q) for q in queues]))
        return [await broker.stats(n) for n in names]
    specs = await broker.queues()
    names = [s.dead_letter_queue for s in specs if s.dead_letter_queue]
    names += [s.name for s in specs if s.is_dead_letter and s.name not in names]
    return [await broker.stats(n) for n in names if n in {s.name for s in specs}]


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """The first dead letters of a queue (looked at, not leased)."""

    queue: str
    """The dead-letter queue."""
    letters: tuple[Delivery, ...]
    total: int
    """How many it holds in all."""


async def read_dead_letters(broker: Broker, queue: str, limit: int) -> DeadLetters:
    name = await dead_letter_queue(broker, queue)
    letters = await broker.peek(name, limit)
    return DeadLetters(name, tuple(letters), (await broker.stats(name)).total)


# -- sagas ---------------------------------------------------------------------------------------
async def read_sagas(broker: Broker, saga: str | None = None,
                     state: str | None = None) -> list[SagaLog]:
    """Sagas' logs (of one saga name, in one state), the most recently changed first."""
    from swell.patterns.sagas import admin

    return await admin.sagas(broker.kv, saga=saga, state=state)


async def read_saga(broker: Broker, ref: str) -> SagaLog:
    """The saga ``ref`` names: ``NAME/ID``, or an ``ID`` only one saga has."""
    from swell.patterns.sagas import admin

    return await admin.find(broker.kv, ref)


# -- all at once ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Status:
    """What runs on a broker, at one look: what ``swell status``, ``nodes``, ``queues``,
    ``streams`` and ``dlq list`` show (a dashboard's first page)."""

    functions: tuple[FunctionView, ...]
    nodes: tuple[NodeInfo, ...]
    queues: tuple[QueueStats, ...]
    dead_letter_queues: tuple[QueueStats, ...]
    streams: tuple[StreamView, ...]
    sources: tuple[SourceStatus, ...] = ()


async def read_status(broker: Broker, app: str | None = None) -> Status:
    """Functions and nodes (of ``app``, else of every app on ``broker``), queues, dead-letter
    queues and streams."""
    return Status(functions=tuple(await read_functions(broker, app)),
                  nodes=tuple(await read_nodes(broker, app)),
                  queues=tuple(await read_queues(broker)),
                  dead_letter_queues=tuple(await read_dead_letter_queues(broker)),
                  streams=tuple(await read_streams(broker)),
                  sources=tuple(await read_sources(broker, app)))


# -- a running runtime's snapshot ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FunctionSnapshot:
    """One function of a running Runtime, at one instant."""

    name: str
    queue: str
    mode: str
    desired: int
    """The controller's decision for the function as a whole."""
    reason: str
    share: int
    """This node's part of ``desired``."""
    in_flight: int
    succeeded: int
    """Events acked, since start (a counter)."""
    dead_lettered: int
    signals: Signals | None
    """The latest sample (``None`` before the first tick)."""
    cost: Cost | None = None
    """What it ran on this node so far, priced."""
    slo: SloSnapshot | None = None
    """Its SLO's counts on this node and latest burn rates (``None``: it declares none)."""


@dataclass(frozen=True, slots=True)
class RuntimeSnapshot:
    """What a running Runtime knows of its functions, at one instant: built on its loop's thread,
    immutable, and so safe to hand whole to another thread (the metrics server)."""

    app: str
    node: str
    functions: tuple[FunctionSnapshot, ...]
    sources: tuple[SourceStatus, ...] = ()


def _consumed(fn: Function) -> str:
    """What a function reads, as its metrics name it: its queue, or its ``stream/group``."""
    return fn.queue.name if fn.group is None else fn.group.key


def snapshot_of(runtime: Runtime) -> RuntimeSnapshot:
    """``runtime`` now. Call it on the runtime's event loop (its state changes there)."""
    return RuntimeSnapshot(app=runtime.app.name, node=runtime.node, functions=tuple(
        FunctionSnapshot(name=st.fn.name, queue=_consumed(st.fn), mode=st.fn.mode,
                         desired=st.decision.desired, reason=st.decision.reason, share=st.share,
                         in_flight=st.dispatcher.in_flight,
                         succeeded=st.dispatcher.metrics.succeeded,
                         dead_lettered=st.dispatcher.metrics.dead_lettered, signals=st.signals,
                         cost=cost_record(st), slo=slo_of(st.dispatcher.metrics.slo))
        for st in runtime.functions.values()), sources=tuple(runtime.sources.statuses()))
