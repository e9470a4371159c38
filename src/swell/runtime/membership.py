"""This node among its peers: its heartbeat, its functions' status records, and the peers' own.

A status record is written when what it says changed (times aside) or when the one written nears
its TTL, all of a tick's at once; a node's idle functions then cost no write most ticks, and its
peers see the same reading as before, which changes nothing there (see ``ClusterView``). The peers'
records are read only while another node's heartbeat is there, and decoded only when they changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import operator
import os
import socket
from contextlib import suppress
from typing import Any

import msgspec

from swell.brokers.base import Broker
from swell.core import keys
from swell.core.clock import Clock
from swell.core.errors import SwellError
from swell.runtime.cluster import FunctionStatus, NodeInfo
from swell.scaling.signals import Observation, Signals

log = logging.getLogger("swell.runtime")

Reading = tuple[object, ...]
"""What a status record says, without its times: the same need not be written again before its
TTL calls for it."""
#: a status record to write, and what it said (``None``: not compared)
Due = tuple[FunctionStatus, Reading | None]


class Membership:
    """Reads and writes one node's entries in the kv store (``swell.core.keys``)."""

    def __init__(self, broker: Broker, clock: Clock, app: str, node: str, tick_s: float) -> None:
        self.broker = broker
        self.clock = clock
        self.app = app
        self.node = node
        self.tick_s = tick_s
        self.beat_at = -math.inf
        self._last_peers: dict[str, dict[str, FunctionStatus]] = {}
        self._peer_records: dict[str, tuple[int, FunctionStatus]] = {}  # key: revision, decoded
        # per function: what its last written status record said (times left out), and when
        self._written: dict[str, tuple[Reading, float, FunctionStatus]] = {}

    @property
    def ttl_s(self) -> float:
        """How long a node's entries outlive its last tick: a node silent for this long is gone."""
        return max(5.0, 4 * self.tick_s)

    @property
    def refresh_s(self) -> float:
        """How old an unchanged status record gets before it is written again: a few ticks
        short of its TTL, so that a late tick does not let it lapse."""
        return self.ttl_s - max(1.5, 3 * self.tick_s)

    async def peers(self) -> dict[str, dict[str, FunctionStatus]]:
        """The other live nodes' latest status per function: ``{function: {node: status}}``. If
        the kv store does not answer, the last known peers (never "alone", which would let this
        node take every share). Without another node's heartbeat there are none: the status
        records (one per function and node, so many) are read only when there are."""
        try:
            nodes = await self.broker.kv.scan(keys.nodes(self.app))
            if all(e.key == keys.node(self.app, self.node) for e in nodes):
                entries = []
            else:
                entries = await self.broker.kv.scan(keys.statuses(self.app))
        except SwellError as exc:
            log.warning("could not read the other nodes' status: %s", exc)
            return self._last_peers
        peers: dict[str, dict[str, FunctionStatus]] = {}
        records: dict[str, tuple[int, FunctionStatus]] = {}
        own = f"/{self.node}"
        for e in entries:
            if e.key.endswith(own):
                continue  # this node's own (see keys.status), not worth decoding
            known = self._peer_records.get(e.key)
            if known is not None and known[0] == e.revision:
                status = known[1]
            else:
                try:
                    status = msgspec.json.decode(e.value, type=FunctionStatus)
                except msgspec.ValidationError:
                    continue  # a record of another swell version
            records[e.key] = (e.revision, status)
            if status.node != self.node:
                peers.setdefault(status.function, {})[status.node] = status
        self._peer_records = records
        self._last_peers = peers
        return peers

    def unchanged(self, function: str, reading: Reading | None) -> bool:
        """Whether the record written for ``function`` says ``reading`` and is not yet due again."""
        written = self._written.get(function)
        return (reading is not None and written is not None and written[0] == reading
                and self.clock.monotonic() - written[1] < self.refresh_s)

    def written(self, function: str) -> bool:
        return function in self._written

    def again(self, function: str) -> Due | None:
        """The record written for ``function``, again with the time now, if it nears its TTL."""
        reading, at, status = self._written[function]
        if self.clock.monotonic() - at < self.refresh_s:
            return None
        return msgspec.structs.replace(status, at=self.clock.time()), reading

    async def publish(self, due: list[Due]) -> None:
        """Write status records all at once (a backend that can stores them in one transaction)."""
        now = self.clock.monotonic()
        results = await asyncio.gather(*(
            self.broker.kv.put(keys.status(self.app, status.function, self.node),
                               msgspec.json.encode(status), ttl_s=self.ttl_s)
            for status, _ in due), return_exceptions=True)
        failed: BaseException | None = None
        for (status, reading), result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                failed = failed or result
                self._written.pop(status.function, None)
            elif reading is not None:
                self._written[status.function] = (reading, now, status)
        if failed is not None:
            raise failed

    async def heartbeat(self, started: float, shares: dict[str, int], in_flight: int) -> None:
        self.beat_at = self.clock.monotonic()
        info = NodeInfo(app=self.app, node=self.node, host=socket.gethostname(), pid=os.getpid(),
                        started=started, seen=self.clock.time(), functions=shares,
                        in_flight=in_flight)
        await self.broker.kv.put(keys.node(self.app, self.node), msgspec.json.encode(info),
                                 ttl_s=self.ttl_s)

    async def leave(self, functions: list[str]) -> None:
        """Remove this node's entries (a graceful stop), so the peers take its shares at once."""
        await asyncio.gather(*(_forget(self.broker, keys.status(self.app, name, self.node))
                               for name in functions))
        await _forget(self.broker, keys.node(self.app, self.node))
        self._written.clear()


async def _forget(broker: Broker, key: str) -> None:
    with suppress(SwellError):
        await broker.kv.delete(key)



def signals_dict(s: Signals) -> dict[str, Any]:
    return {name: getattr(s, name) for name in s.__dataclass_fields__}


_SMOOTHED = ("arrival_rate", "completion_rate", "error_rate", "throttle_rate")
#: an Observation's readings without its time
observed = operator.attrgetter(*(f.name for f in dataclasses.fields(Observation) if f.name != "t"))
_signalled = operator.attrgetter(*(f.name for f in dataclasses.fields(Signals)
                                   if f.name != "t" and f.name not in _SMOOTHED))
_smoothed = operator.attrgetter(*_SMOOTHED)


def reading(head: tuple[object, ...], s: Signals, own: Observation) -> Reading:
    """``head`` (the decision, the shares, the counts) with the signals and this node's readings,
    the smoothed rates rounded (they decay for a long while after the last event)."""
    return (*head, observed(own), _signalled(s),
            tuple(None if v is None else round(v, 3) for v in _smoothed(s)))
