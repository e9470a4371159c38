"""NATS JetStream: ``nats://host:port`` (``pip install 'swell[nats]'``, nats-server 2.12 or newer).

One package, split by capability around one shared connection:

- ``wire``: settings, header names, and how names, kv keys, headers and times are written;
  JetStream's refusals as errors.
- ``client``: ``NatsClient``, the connection, JetStream API requests, publishes, direct gets, and
  creating or checking the streams swell owns.
- ``queues`` (declarations, sends, stats; its docstring maps the queue protocol onto JetStream),
  ``deliveries`` (receive, settle, dead letters), ``leases`` and ``pulls`` (what they share).
- ``topics`` (a stream per topic that the subscriptions' queue streams source from), ``logs``
  (streams: one JetStream stream, a subject per partition), ``kv`` (a key-value bucket).
- ``broker``: ``NatsBroker``, the broker protocol over all of them.

Importing this package does not import nats-py: a broker does when it is made.
"""

from swell.brokers.nats.broker import NatsBroker
from swell.brokers.nats.client import NatsClient
from swell.brokers.nats.kv import NatsKV
from swell.brokers.nats.wire import check_queue_name

__all__ = ["NatsBroker", "NatsClient", "NatsKV", "check_queue_name"]
