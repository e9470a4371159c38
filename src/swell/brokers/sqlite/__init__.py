"""The embedded default: queues, topics, streams and kv in one SQLite file (WAL), shared safely
by several processes.

One connection per broker, owned by one thread; every call is one hop to that thread, so the event
loop never blocks on the database (a second thread and connection only checkpoint the WAL). Leases
are rows whose ``visible_at`` lies ahead, with a random ``token`` that every receive renews, so a
stale receipt matches no row. Writers are serialised by SQLite itself (``BEGIN IMMEDIATE``, tried
again while another process holds the lock), which is what makes two processes on one file safe: a
claim is one ``UPDATE ... RETURNING``, and no two claims can take the same row.

The package, by part: ``store`` (the file, its schema, the connection and its thread: the base
every part stands on), ``watch`` (the one look per broker for other processes' writes),
``messages`` (what queues and topics write alike), ``queues``, ``topics``, ``logs``, ``kv``, and
``broker`` (``SqliteBroker``, all of them over one store).
"""

from swell.brokers.sqlite.broker import SqliteBroker
from swell.brokers.sqlite.kv import SqliteKV

__all__ = ["SqliteBroker", "SqliteKV"]
