"""The topic part of the SQLite broker: a publish is routed at once, straight into the queues of
the subscriptions it matches (a topic stores nothing of its own); publishes that meet share a
commit, and the counts per subscription reach the file at most once a second."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import suppress

import msgspec

from swell.brokers.sqlite.batching import Batcher
from swell.brokers.sqlite.messages import INSERT, RESIZE, Dedup, declare_queues, encode_headers
from swell.brokers.sqlite.store import SqliteStore, transaction
from swell.brokers.topics import Router, check_publish, route
from swell.brokers.types import (
    Message,
    SubscriptionSpec,
    SubscriptionStats,
    TopicInfo,
    TopicSpec,
    check_sizes,
)
from swell.core.errors import SwellError, UnknownTopic

COUNTS_EVERY_S = 1.0

#: a publish waiting for the connection: topic, messages
_Publish = tuple[str, Sequence[Message]]
#: a stored publish: accepted per message, queues written, counts per subscription, its topic
_Published = tuple[list[bool], list[str], list[tuple[tuple[str, str], int, int]], str]


class SqliteTopics:
    """Topics and their subscriptions in the store's file."""

    def __init__(self, store: SqliteStore, dedup: Dedup) -> None:
        self.store = store
        self.clock = store.clock
        self._dedup = dedup
        self._routers: dict[bytes, Router] = {}  # compiled per stored subscription spec
        # topic counts not yet in the file: (topic, subscription) -> [matched, filtered]
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._published: dict[str, int] = {}
        self._counts_at = 0.0
        # publishes asked for while the connection is busy share a transaction
        self._publishes: Batcher[_Publish, _Published] = Batcher(
            lambda batch: self.store.run(self._store_publishes, batch, self.clock.time()),
            after=self._wake_published)

    def _topic(self, conn: sqlite3.Connection, topic: str) -> TopicSpec:
        row = conn.execute("SELECT spec FROM swell_topics WHERE name = ?", (topic,)).fetchone()
        if row is None:
            raise UnknownTopic(topic)
        return msgspec.json.decode(row[0], type=TopicSpec)

    def _router(self, raw: bytes) -> Router:
        """A subscription's compiled routing, kept while its stored spec is unchanged."""
        router = self._routers.get(raw)
        if router is None:
            if len(self._routers) > 1024:
                self._routers.clear()
            router = self._routers[raw] = Router.of(msgspec.json.decode(raw, type=SubscriptionSpec))
        return router

    async def declare_topic(self, spec: TopicSpec) -> None:
        await self.store.run(lambda c: transaction(c, lambda conn: conn.execute(
            "INSERT INTO swell_topics (name, spec) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec",
            (spec.name, msgspec.json.encode(spec)))))

    async def subscribe(self, spec: SubscriptionSpec) -> None:
        raw = msgspec.json.encode(spec)
        self._router(raw)  # an invalid pattern fails here, before anything is stored
        queues = [s for s in (spec.queue, spec.queue.dlq_spec()) if s is not None]

        def run(conn: sqlite3.Connection) -> None:
            self._topic(conn, spec.topic)
            declare_queues(conn, queues)
            conn.execute("INSERT INTO swell_subscriptions (topic, name, spec) VALUES (?, ?, ?) "
                         "ON CONFLICT (topic, name) DO UPDATE SET spec = excluded.spec",
                         (spec.topic, spec.name, raw))

        await self.store.run(lambda c: transaction(c, run))

    def _wake_published(self, published: _Published) -> None:
        for queue in published[1]:
            self.store.waker.notify(queue)

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[bool]:
        """Publishes made while the connection is busy are stored together when it is free, one
        transaction for the lot (each in a savepoint of its own, so one refused publish refuses
        only itself): concurrent publishers share the cost of a commit."""
        return (await self._publishes((topic, messages)))[0]

    def _store_publishes(self, conn: sqlite3.Connection, batch: list[_Publish],
                         now: float) -> list[_Published | Exception]:
        return self._counted(transaction(conn, self._publish_all, batch, now))

    def _publish_all(self, conn: sqlite3.Connection, batch: list[_Publish],
                     now: float) -> list[_Published | Exception]:
        """Store a batch of publishes: those to one topic are routed and written together; one
        that is refused (unknown topic, oversize, bad routing key) refuses only itself."""
        out: list[_Published | Exception | None] = [None] * len(batch)
        if len(batch) == 1:  # alone: its transaction is its savepoint (a refusal raises)
            topic, messages = batch[0]
            spec = self._topic(conn, topic)
            check_publish(spec, messages)
            self._publish_together(conn, spec, [messages], [0], out, now)
            return [r for r in out if r is not None]
        by_topic: dict[str, list[int]] = {}
        for i, (topic, _) in enumerate(batch):
            by_topic.setdefault(topic, []).append(i)
        for topic, idx in by_topic.items():
            try:
                spec = self._topic(conn, topic)
            except SwellError as exc:
                for i in idx:
                    out[i] = exc
                continue
            ok = []
            for i in idx:
                try:
                    check_publish(spec, batch[i][1])
                    ok.append(i)
                except SwellError as exc:
                    out[i] = exc
            if len(ok) > 1:
                try:
                    conn.execute("SAVEPOINT publish")
                    self._publish_together(conn, spec, [batch[i][1] for i in ok], ok, out, now)
                    conn.execute("RELEASE publish")
                    continue
                except SwellError:  # one of them does not fit a subscription's queue: one by one
                    conn.execute("ROLLBACK TO publish")
                    conn.execute("RELEASE publish")
            for i in ok:
                conn.execute("SAVEPOINT publish")
                try:
                    self._publish_together(conn, spec, [batch[i][1]], [i], out, now)
                except SwellError as exc:
                    conn.execute("ROLLBACK TO publish")
                    out[i] = exc
                conn.execute("RELEASE publish")
        if now - self._counts_at >= COUNTS_EVERY_S:
            self._flush_counts(conn, now)
        return [r for r in out if r is not None]

    def _publish_together(self, conn: sqlite3.Connection, spec: TopicSpec,
                          publishes: list[Sequence[Message]], idx: list[int],
                          out: list[_Published | Exception | None], now: float) -> None:
        """Route and write several publishes to one topic at once (all or none: a refusal raises
        ``SwellError``); their results go to ``out``."""
        topic = spec.name
        accepted = [self._dedup.fresh(conn, f"#topic/{topic}", spec.dedup_window_s, ms, now)
                    for ms in publishes]
        fresh = [m for ms, acc in zip(publishes, accepted, strict=True)
                 for m, new in zip(ms, acc, strict=True) if new]
        subs = conn.execute("SELECT spec FROM swell_subscriptions WHERE topic = ?", (topic,))
        routed = route([self._router(raw) for (raw,) in subs.fetchall()], fresh)
        for r in routed:
            check_sizes(r.router.spec.queue, r.messages)
        rows, sizes, counts = [], [], []
        for r in routed:
            queue = r.router.spec.queue.name
            if r.messages:
                rows += [(queue, now + m.delay_s if m.delay_s > 0 else now, now,
                          encode_headers(m.headers), m.body) for m in r.messages]
                sizes.append((queue, len(r.messages)))
            if r.messages or r.filtered:
                counts.append(((topic, r.router.spec.name), len(r.messages), r.filtered))
        conn.executemany(INSERT, rows)
        conn.executemany(RESIZE, sizes)
        # the queues to wake and the counts of the lot go with its first publish
        for k, i in enumerate(idx):
            out[i] = (accepted[k], [q for q, _ in sizes] if k == 0 else [],
                      counts if k == 0 else [], topic)

    def _counted(self, results: list[_Published | Exception]) -> list[_Published | Exception]:
        """Once a publish transaction committed: keep its counts for the next flush."""
        for r in results:
            if isinstance(r, Exception):
                continue
            for key, matched, filtered in r[2]:
                counts = self._counts.setdefault(key, [0, 0])
                counts[0] += matched
                counts[1] += filtered
            topic = r[3]
            self._published[topic] = self._published.get(topic, 0) + sum(r[0])
        return results

    def _flush_counts(self, conn: sqlite3.Connection, now: float) -> None:
        """Add this process's topic counts to the file (done at most once a second, in a
        transaction that is open anyway, so a publish does not pay a write per subscription)."""
        self._counts_at = now
        if self._counts:
            conn.executemany("UPDATE swell_subscriptions SET matched = matched + ?, "
                             "filtered = filtered + ? WHERE topic = ? AND name = ?",
                             [(m, f, t, n) for (t, n), (m, f) in self._counts.items()])
            self._counts.clear()
        if self._published:
            conn.executemany("UPDATE swell_topics SET published = published + ? WHERE name = ?",
                             [(k, t) for t, k in self._published.items()])
            self._published.clear()

    def flush_at_close(self, conn: sqlite3.Connection) -> None:
        """The counts not yet in the file, written as the broker closes (on its thread)."""
        if self._counts or self._published:
            with suppress(sqlite3.Error):
                transaction(conn, self._flush_counts, self.clock.time())

    async def topics(self) -> list[TopicInfo]:
        def run(conn: sqlite3.Connection) -> list[TopicInfo]:
            if self._counts or self._published:
                transaction(conn, self._flush_counts, self.clock.time())
            subs: dict[str, list[SubscriptionStats]] = {}
            for topic, raw, matched, filtered in conn.execute(
                    "SELECT topic, spec, matched, filtered FROM swell_subscriptions "
                    "ORDER BY topic, name"):
                subs.setdefault(topic, []).append(SubscriptionStats(
                    spec=msgspec.json.decode(raw, type=SubscriptionSpec), matched=matched,
                    filtered=filtered))
            return [TopicInfo(spec=msgspec.json.decode(raw, type=TopicSpec), published=published,
                              subscriptions=subs.get(name, []))
                    for name, raw, published in conn.execute(
                        "SELECT name, spec, published FROM swell_topics ORDER BY name")]

        return await self.store.run(run)
