"""The kv key layout: every key swell keeps in a broker's kv store, in one place.

Keys are ``/``-separated paths under ``swell/``; a prefix ends with ``/`` so that a scan by it
never catches a longer name (``swell/nodes/shop/`` is not ``swell/nodes/shop2/``).

=================================================  ============================================
key                                                what it holds
=================================================  ============================================
``swell/nodes/<app>/<node>``                       a node's heartbeat (TTL)
``swell/status/<app>/<function>/<node>``           a function's status on one node (TTL)
``swell/groups/<stream>/<group>/offsets/<p>``      a consumer group's committed offset
``swell/groups/<stream>/<group>/assignment``       which node works which partitions
``swell/groups/<stream>/<group>/owner/<p>``        a partition's owner lease (TTL)
``swell/groups/<stream>/<group>/windows/<p>``      a window function's state, with its offset
``swell/idem/<function>/<key>``                    an idempotency record
``swell/sagas/<saga>/<id>``                        a saga's log
``swell/replays/<stream>/<group>/<id>/...``        a replay's range and progress
``swell/limiter/<name>``                           a shared limiter's state
``swell/outbox/<app>``                             the outbox relay's lease (TTL)
``swell/topic-counts/<topic>``                     a topic's publish counters (NATS)
``swell/sources/<app>/<source>/<node>``            a trigger source's status on one node (TTL)
``swell/source-seen/<stream>/<event id>``          an event id a source appended to a stream (TTL)
``swell/schedules/<app>/<schedule>/fire/<time>``   a schedule's claim on one fire time (TTL)
``swell/schedules/<app>/<schedule>/last``          a schedule's last firing and its outcome
``swell/files/<app>/<source>/<site>/<path hash>``  a file a watch emitted (site: host and folder)
``swell/source-state/<app>/<source>/lease``        which node reads a change stream (TTL)
``swell/source-state/<app>/<source>/position``     how far a change stream's events are stored
``swell/source-state/<app>/<source>/slot``         the replication slot a pg_changes source reads
``swell/source-state/<app>/<source>/ahead``        a pg_changes batch read, before it is stored
``swell/source-state/<app>/<source>/slots/<i>``    an MQTT source's client-id slot, its node's lease
``swell/source-state/<app>/<source>/slots``        the number of MQTT client-id slots ever used
``swell/slo/<app>/<function>/m/<hour>/<writer>``   one node's SLO counts per minute of an hour
``swell/slo/<app>/<function>/h/<day>/<writer>``    per hour of a day, and the SLO (TTL)
``swell/paused/<app>/<function>``                  a function's intake paused: by whom, why
=================================================  ============================================
"""

from __future__ import annotations

from urllib.parse import unquote

__all__ = [
    "FILES",
    "GROUPS",
    "IDEMPOTENCY",
    "LIMITERS",
    "NODES",
    "OUTBOX",
    "PAUSED",
    "REPLAYS",
    "SAGAS",
    "SCHEDULES",
    "SLOS",
    "SOURCES",
    "SOURCE_SEEN",
    "SOURCE_STATE",
    "STATUS",
    "TOPIC_COUNTS",
    "files",
    "group",
    "group_offsets",
    "idempotency",
    "limiter",
    "node",
    "nodes",
    "outbox_lease",
    "paused",
    "replay",
    "saga",
    "sagas",
    "schedule",
    "slo_counts",
    "slo_fields",
    "slo_record",
    "source_seen",
    "source_state",
    "source_status",
    "source_statuses",
    "status",
    "statuses",
]

NODES = "swell/nodes/"
STATUS = "swell/status/"
GROUPS = "swell/groups/"
IDEMPOTENCY = "swell/idem/"
SAGAS = "swell/sagas/"
REPLAYS = "swell/replays/"
LIMITERS = "swell/limiter/"
OUTBOX = "swell/outbox/"
TOPIC_COUNTS = "swell/topic-counts/"
SOURCES = "swell/sources/"
SOURCE_SEEN = "swell/source-seen/"
SOURCE_STATE = "swell/source-state/"
SCHEDULES = "swell/schedules/"
FILES = "swell/files/"
SLOS = "swell/slo/"
PAUSED = "swell/paused/"


def nodes(app: str) -> str:
    """The prefix of an app's heartbeats."""
    return f"{NODES}{app}/"


def node(app: str, node_id: str) -> str:
    return f"{NODES}{app}/{node_id}"


def statuses(app: str) -> str:
    """The prefix of an app's status records."""
    return f"{STATUS}{app}/"


def status(app: str, function: str, node_id: str) -> str:
    return f"{STATUS}{app}/{function}/{node_id}"


def group(stream: str, group_name: str) -> str:
    """The prefix of a consumer group's keys."""
    return f"{GROUPS}{stream}/{group_name}/"


def group_offsets(stream: str, group_name: str) -> str:
    """The prefix of a consumer group's committed offsets (one key per partition)."""
    return f"{GROUPS}{stream}/{group_name}/offsets/"


def window_state(stream: str, group_name: str, partition: int) -> str:
    """A window function's state for one partition of its group, with the offset it covers."""
    return f"{GROUPS}{stream}/{group_name}/windows/{partition}"


def idempotency(function: str) -> str:
    """The prefix of a function's idempotency records."""
    return f"{IDEMPOTENCY}{function}/"


def sagas(saga_name: str | None = None) -> str:
    """The prefix of one saga's logs, or of every saga's."""
    return SAGAS if saga_name is None else f"{SAGAS}{saga_name}/"


def saga(saga_name: str, saga_id: str) -> str:
    return f"{SAGAS}{saga_name}/{saga_id}"


def replay(stream: str, group_name: str, replay_id: str) -> str:
    """The prefix of one replay's keys."""
    return f"{REPLAYS}{stream}/{group_name}/{replay_id}/"


def limiter(name: str) -> str:
    return f"{LIMITERS}{name}"


def outbox_lease(app: str) -> str:
    return f"{OUTBOX}{app}"


def paused(app: str, function: str | None = None) -> str:
    """A function's pause flag, or (no ``function``) the prefix of an app's."""
    return f"{PAUSED}{app}/" + ("" if function is None else function)


def source_statuses(app: str) -> str:
    """The prefix of an app's trigger sources' status records."""
    return f"{SOURCES}{app}/"


def source_status(app: str, source: str, node_id: str) -> str:
    return f"{SOURCES}{app}/{source}/{node_id}"


def source_seen(stream: str, event_id: str) -> str:
    return f"{SOURCE_SEEN}{stream}/{event_id}"


def source_state(app: str, source: str, what: str) -> str:
    """A source's own record ``what``: ``lease``, ``position``, ``slot``, ``slots/<i>`` ..."""
    return f"{SOURCE_STATE}{app}/{source}/{what}"


def schedule(app: str, name: str) -> str:
    """The prefix of a schedule's keys: ``fire/<time>`` claims and ``last``."""
    return f"{SCHEDULES}{app}/{name}/"


def files(app: str, source: str) -> str:
    """The prefix of a watch source's checkpoints (one key per file)."""
    return f"{FILES}{app}/{source}/"


def slo_counts(app: str | None = None, function: str | None = None) -> str:
    """The prefix of one function's SLO counts, of an app's, or of every app's. Names are
    escaped (``%`` and ``/``), so a ``/`` in one never shifts the segments after it."""
    if app is None:
        return SLOS
    return f"{SLOS}{_part(app)}/" + ("" if function is None else f"{_part(function)}/")


def slo_record(app: str, function: str, level: str, start: int, writer: str) -> str:
    """One writer's (a node's) SLO counts of a function: per minute of the hour (``level`` ``m``)
    or per hour of the day (``h``) that starts at epoch second ``start``."""
    return f"{slo_counts(app, function)}{level}/{start}/{_part(writer)}"


def slo_fields(key: str) -> tuple[str, str, str, str, str] | None:
    """``slo_record``'s app, function, level, start and writer back from its key (``None``: not
    one of its keys)."""
    parts = key[len(SLOS):].split("/") if key.startswith(SLOS) else []
    if len(parts) != 5:
        return None
    app, function, level, start, writer = (unquote(p) for p in parts)
    return app, function, level, start, writer


def _part(name: str) -> str:
    return name.replace("%", "%25").replace("/", "%2F")
