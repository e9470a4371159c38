"""The trigger sources of a running app: each started beside the functions with what it needs (an
``Emitter`` onto its channel, the kv store, the clock), its status written to the kv store every
tick it changed (or nears its TTL) for ``swell status`` on any machine, and all cancelled at stop
before the functions stop (so nothing new arrives while the last work drains)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

import msgspec

from swell.brokers.base import Broker
from swell.brokers.producer import Producer
from swell.core import keys
from swell.core.clock import Clock
from swell.core.errors import SwellError
from swell.triggers.base import Emitter, Source, SourceEnv, SourceStatus

__all__ = ["Sources", "origin", "read_sources"]

log = logging.getLogger("swell.sources")


def origin(app: str, source: Source) -> str:
    """The CloudEvents ``source`` of a source's events: a webhook's route, else a path naming
    the source."""
    path = getattr(source, "path", None)
    return path if source.kind == "webhook" and isinstance(path, str) else \
        f"/swell/{app}/{source.kind}/{source.name}"


class Sources:
    """Runs an app's sources on one node."""

    def __init__(self, sources: dict[str, Source], broker: Broker, producer: Producer,
                 clock: Clock, app: str, node: str, ttl_s: float) -> None:
        self.sources = sources
        self.broker = broker
        self.producer = producer
        self.clock = clock
        self.app = app
        self.node = node
        self.ttl_s = ttl_s
        self._tasks: list[asyncio.Task[None]] = []
        self._written: dict[str, tuple[tuple[object, ...], float]] = {}

    async def prepare(self) -> None:
        """Before anything runs: a source that cannot start (a watched path that is a file, an
        extra not installed) stops the app with its error."""
        for source in self.sources.values():
            prepare = getattr(source, "prepare", None)
            if prepare is not None:
                await prepare()

    def start(self) -> None:
        for source in self.sources.values():
            emitter = Emitter(self.producer, self.broker.kv, source.target, source.stats,
                              source=origin(self.app, source),
                              dead_letter=getattr(source, "dead_letter", None))
            env = SourceEnv(app=self.app, node=self.node, emitter=emitter, kv=self.broker.kv,
                            clock=self.clock)
            self._tasks.append(asyncio.create_task(self._run(source, env),
                                                   name=f"swell:source:{source.name}"))

    async def _run(self, source: Source, env: SourceEnv) -> None:
        try:
            await source.run(env)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a source: said loudly, the rest runs on
            source.stats.last_error = f"stopped: {exc!r}"
            log.exception("source %s stopped", source.name)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for source in self.sources.values():
            with suppress(SwellError):
                await self.broker.kv.delete(keys.source_status(self.app, source.name, self.node))

    def statuses(self) -> list[SourceStatus]:
        """Every source's status on this node, now."""
        out = []
        for s in self.sources.values():
            st = s.stats
            out.append(SourceStatus(
                app=self.app, source=s.name, kind=s.kind, node=self.node, target=s.target,
                received=st.received, emitted=st.emitted, duplicates=st.duplicates,
                errors=st.errors, rejected=dict(st.rejected), lag_s=st.lag_s, pending=st.pending,
                last_error=st.last_error, detail=s.detail(), at=self.clock.time()))
        return out

    async def publish(self) -> None:
        """Write the status of every source whose counts changed, or whose record nears its
        TTL."""
        now = self.clock.monotonic()
        for status in self.statuses():
            said = msgspec.structs.astuple(status)[:-1]  # (``at`` aside)
            last = self._written.get(status.source)
            if last is not None and last[0] == said and now - last[1] < self.ttl_s / 2:
                continue
            try:
                await self.broker.kv.put(keys.source_status(self.app, status.source, self.node),
                                         msgspec.json.encode(status), ttl_s=self.ttl_s)
            except SwellError as exc:
                log.warning("could not write the status of source %s: %s", status.source, exc)
                continue
            self._written[status.source] = said, now


async def read_sources(broker: Broker, app: str | None = None) -> list[SourceStatus]:
    """The live status records of the sources (of ``app``, else of every app), one per source and
    node."""
    entries = await broker.kv.scan(keys.source_statuses(app) if app else keys.SOURCES)
    out = []
    for e in entries:
        try:
            out.append(msgspec.json.decode(e.value, type=SourceStatus))
        except msgspec.DecodeError:
            continue  # (a record of another version)
    return out
