"""The part of ``App`` that declares trigger sources: webhooks, object-store notifications,
schedules, file watches, MQTT telemetry and database change streams. Each puts events on a
channel (``to=``: a queue, topic or stream, its
name, or a function declared with ``app.function``, meaning its queue); without ``to`` a source
gets a queue of its own name, which ``app.function(source)`` can take as its trigger."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from swell.brokers.base import KiB, QueueSpec
from swell.core.config import Duration, Rate, Size
from swell.core.errors import AppError
from swell.runtime.channels import Queue, Stream, Topic, check_name, derived

if TYPE_CHECKING:
    from swell.runtime.app import Function
    from swell.triggers.base import Source
    from swell.triggers.files import WatchSource
    from swell.triggers.mqtt import MqttMessage, MqttSource
    from swell.triggers.pgchanges import PgChangesSource
    from swell.triggers.schedule import ScheduleSource
    from swell.triggers.sqlitechanges import SqliteChangesSource
    from swell.triggers.verify import Verifier
    from swell.triggers.webhook import Webhook

__all__ = ["SourceDeclarations", "To"]

log = logging.getLogger("swell.sources")

S = TypeVar("S", bound="Source")

To = Queue | Topic | Stream | str | Callable[..., Any] | None
"""Where a source's events go."""


class SourceDeclarations:
    """Mixed into ``App``."""

    name: str
    queues: dict[str, Queue]
    topics: dict[str, Topic]
    streams: dict[str, Stream]
    functions: dict[str, Function]
    sources: dict[str, Source]

    if TYPE_CHECKING:
        def queue(self, name: str) -> Queue: ...

    def webhook(self, name: str, *, path: str, to: To = None, verify: Verifier | None = None,
                max_body: Size = "256KiB", rate: Rate | None = "100/s", burst: int | None = None,
                content_types: Sequence[str] = ("application/json",),
                headers: Sequence[str] | None = None, store_timeout: Duration = "5s") -> Webhook:
        """An HTTP route of ``swell run``'s server whose requests become events on ``to``,
        answered ``202`` once stored: ``app.webhook("stripe", path="/hooks/stripe", to=payments,
        verify=Stripe(secret=...))``. ``verify``: ``Stripe``, ``GitHub``, ``StandardWebhooks``,
        ``Hmac`` (``swell.triggers.verify``) or ``None`` (anyone may post: keep the server on
        127.0.0.1 then). ``rate`` is per node, ``burst`` (a second's worth unless given) what it
        takes at once; ``headers`` are kept as extension attributes. See
        ``swell.triggers.webhook`` for the replies."""
        from swell.triggers.webhook import Webhook

        self._check_route(name, path)
        return self._add(Webhook(name, path=path, to=self._to(name, to), verify=verify,
                                 max_body=max_body, rate=rate, burst=burst,
                                 content_types=content_types, headers=headers,
                                 store_timeout=store_timeout))

    def object_events(self, name: str, *, path: str, to: To = None,
                      verify: Verifier | None = None, prefix: str = "", suffix: str = "",
                      max_body: Size = "1MiB", rate: Rate | None = "100/s") -> Webhook:
        """Object-store notifications over HTTP (S3's event notifications as SNS, SQS or
        EventBridge deliver them, or MinIO's webhook target with ``verify=Bearer(token)``): one
        event per object record whose key has ``prefix`` and ``suffix``, of type
        ``s3.ObjectCreated:Put`` (say), deduplicated on (bucket, key, version, sequencer); a
        test event is acknowledged and dropped. See ``swell.triggers.objects``."""
        from swell.triggers.objects import ObjectEvent, SnsConfirmation, matches, parse_notification
        from swell.triggers.webhook import Record, Webhook

        def records(body: Any) -> list[Record]:
            try:
                found: list[ObjectEvent] = parse_notification(body)
            except SnsConfirmation as exc:  # the operator must see it: only AWS reads the reply
                log.warning("object events %s: %s", name, exc)
                hook.stats.last_error = str(exc)
                raise
            return [Record(e.dedup_id, f"s3.{e.event}", e.to_data(), subject=f"{e.bucket}/{e.key}")
                    for e in found if matches(e, prefix, suffix)]

        self._check_route(name, path)
        hook = Webhook(name, path=path, to=self._to(name, to), verify=verify, max_body=max_body,
                       rate=rate, records=records, headers=(), type="s3.object")
        return self._add(hook)

    def schedule(self, name: str, *, cron: str | None = None, every: Duration | None = None,
                 tz: str = "UTC", jitter: Duration = 0, to: To = None, missed: str = "skip",
                 max_catch_up: int = 100, data: Any = None) -> ScheduleSource:
        """Fire an event on a schedule, once across every node: ``app.schedule("nightly",
        cron="0 3 * * *", tz="Europe/Paris", to=reports)`` or ``app.schedule("poll",
        every="30s", jitter="5s")``. The event's ``time`` is the fire time; ``missed`` says what
        to do about fire times missed while no node ran (``"skip"``, ``"latest"``, ``"all"``, at
        most ``max_catch_up``). See ``swell.triggers.schedule``."""
        from swell.triggers.schedule import ScheduleSource

        check_name("schedule", name)
        return self._add(ScheduleSource(name, to=self._to(name, to), cron=cron, every=every,
                                        tz=tz, jitter=jitter, missed=missed,
                                        max_catch_up=max_catch_up, data=data))

    def watch(self, name: str, *, path: str | Path, pattern: str = "*", to: To = None,
              recursive: bool = False, settle: Duration = "1s") -> WatchSource:
        """An event per file created or changed under ``path`` whose name matches ``pattern``,
        once it has stopped growing for ``settle``, with its size, mtime and SHA-256; what was
        sent is checkpointed in the kv store, so a restart neither drops nor repeats a file. See
        ``swell.triggers.files``."""
        from swell.triggers.files import WatchSource

        check_name("watch", name)
        return self._add(WatchSource(name, path=path, to=self._to(name, to), pattern=pattern,
                                     recursive=recursive, settle=settle))

    def mqtt(self, name: str, *, topics: Sequence[str], url: str = "mqtt://127.0.0.1:1883",
             to: To = None, qos: int = 1,
             key: int | Callable[[MqttMessage], str] | None = None, payload: str = "json",
             model: type | None = None, shared: bool = True, client_id: str | None = None,
             session_expiry: Duration = "1d", max_pending: int = 10_000) -> MqttSource:
        """IoT telemetry: each MQTT message on ``topics`` (filters, ``+`` and ``#`` allowed)
        becomes an event on ``to``, keyed by its device: ``key`` is a topic segment's index, or
        a function of the message (``lambda m: m.topic.split("/")[1]``); by default the segment
        of the first filter's first ``+``. ``payload="json"`` (validated by ``model``, a
        pydantic model, if given) or ``"bytes"``; a message that is neither goes to
        ``<name>.dlq`` with its reason. QoS 1 on a persistent session, acknowledged to the
        broker only once stored; with ``shared`` the subscription is MQTT 5's
        ``$share/<app>/<filter>``, so each message reaches one node; the sessions of nodes
        gone for good are taken over by those that remain. See ``swell.triggers.mqtt``."""
        from swell.triggers.mqtt import MqttSource

        check_name("mqtt", name)
        return self._add(MqttSource(name, url=url, topics=topics, to=self._to(name, to), qos=qos,
                                    key=key, payload=payload, model=model, shared=shared,
                                    client_id=client_id, session_expiry=session_expiry,
                                    max_pending=max_pending,
                                    dead_letter=self._dead_letter_queue(name)))

    def pg_changes(self, name: str, *, dsn: str, tables: Sequence[str], to: To = None,
                   slot: str | None = None, publication: str | None = None,
                   batch: int = 1000, poll: Duration = "200ms") -> PgChangesSource:
        """PostgreSQL change data capture: one event per row inserted, updated or deleted in
        ``tables`` (``"schema.table"``), keyed by primary key, in commit order, read through a
        logical replication slot (``swell_<name>`` unless named), so changes made while swell
        is down wait in the slot. The slot's position advances only once the events are
        stored; one node reads it at a time. Needs ``wal_level = logical``. ``batch`` bounds
        the decoder messages read at once (about one per change and two more per transaction;
        whole transactions). See ``swell.triggers.pgchanges``."""
        from swell.triggers.pgchanges import PgChangesSource

        check_name("pg_changes", name)
        source = PgChangesSource(name, dsn=dsn, tables=tables, to=self._to(name, to), slot=slot,
                                 publication=publication, batch=batch, poll=poll,
                                 dead_letter=self._dead_letter_queue(name))
        self._check_shared(source, "slot", "a replication slot gives each change to one reader")
        return self._add(source)

    def sqlite_changes(self, name: str, *, path: str | Path, tables: Sequence[str],
                       to: To = None, batch: int = 1000,
                       poll: Duration = "50ms") -> SqliteChangesSource:
        """SQLite change data capture: triggers on ``tables`` (each with a primary key) record
        every insert, update and delete, by any process, in a change table of the same
        database; swell turns each row into an event keyed by primary key, in commit order,
        and deletes the rows once stored. See ``swell.triggers.sqlitechanges``."""
        from swell.triggers.sqlitechanges import SqliteChangesSource

        check_name("sqlite_changes", name)
        source = SqliteChangesSource(name, path=path, tables=tables, to=self._to(name, to),
                                     batch=batch, poll=poll,
                                     dead_letter=self._dead_letter_queue(name))
        self._check_shared(source, "change_table", "its rows are deleted once read")
        return self._add(source)

    # -- helpers -------------------------------------------------------------------------------
    def _dead_letter_queue(self, name: str) -> str:
        """Declare source ``name``'s own dead-letter queue, ``<name>.dlq``."""
        dlq = derived(f"{name}.dlq", f"the dead-letter queue of source {name!r}")
        spec = QueueSpec(name=dlq, max_receives=0, is_dead_letter=True,
                         max_message_bytes=1024 * KiB)
        self.queues.setdefault(dlq, Queue(spec))
        return dlq

    def _add(self, source: S) -> S:
        if source.name in self.sources:
            raise AppError(f"source {source.name!r} is declared twice")
        self.sources[source.name] = source
        return source

    def _check_shared(self, source: Source, attribute: str, why: str) -> None:
        """Two change sources of one kind never read one slot or change table: each would get
        part of the changes (names are made alike: ``orders-cdc`` and ``orders_cdc``)."""
        mine = getattr(source, attribute)
        for other in self.sources.values():
            if other.kind == source.kind and getattr(other, attribute) == mine and \
                    getattr(other, "path", None) == getattr(source, "path", None):
                raise AppError(f"{source.kind} {source.name!r} would read {mine!r} as "
                               f"{other.name!r} does, and {why}: name it otherwise")

    def _check_route(self, name: str, path: str) -> None:
        check_name("webhook", name)
        for other in self.sources.values():
            if getattr(other, "path", None) == path and other.kind == "webhook":
                raise AppError(f"webhook {name!r}: path {path!r} is webhook {other.name!r}'s already")

    def _to(self, name: str, to: To) -> str:
        """The channel a source's events go to (declaring its own queue when ``to`` is None)."""
        if to is None:
            return self.queue(name).name
        if isinstance(to, Queue | Topic | Stream):
            return to.name
        if isinstance(to, str):
            if to not in self.queues and to not in self.topics and to not in self.streams:
                raise AppError(f"source {name!r}: unknown channel {to!r}: declare the queue, "
                               "topic or stream first")
            return to
        if callable(to):
            for fn in self.functions.values():
                if fn.handler.fn is to:
                    return fn.queue.name
            raise AppError(f"source {name!r}: to={to!r} is not a function of this app; declare "
                           "it with @app.function first")
        raise AppError(f"source {name!r}: to= takes a queue, topic, stream, its name or a "
                       f"function, not {to!r}")
