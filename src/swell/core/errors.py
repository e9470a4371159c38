"""The one error tree of swell.

::

    SwellError
    ├── ConfigError            wrong configuration: bad URL, duration, option
    │   ├── MissingDependency  an optional extra is not installed
    │   └── PatternError       an invalid event pattern or routing-key pattern (core.patterns)
    ├── AppError               an app file/module that cannot be loaded, or is ill-formed
    ├── PayloadError           bytes that are not a valid event (bad JSON, bad envelope)
    ├── Throttled              raised by a handler when a downstream says "too many" (a 429)
    │   └── InProgress         an idempotency key another attempt holds now
    ├── IdempotencyConflict    an idempotency key reused for other content
    └── BrokerError            anything a backend refuses or cannot do
        ├── BrokerUnavailable  the backend cannot be reached
        ├── UnknownQueue       a queue that was never declared
        ├── UnknownTopic       a topic that was never declared
        ├── UnknownStream      a stream that was never declared
        ├── MessageTooLarge    a message over its queue's size limit (nothing is stored)
        └── StaleReceipt       a lease that is no longer held (expired or redelivered)

Client-library errors are converted at the backend edge with ``raise ... from exc``.
"""

from __future__ import annotations


class SwellError(Exception):
    """Root of every error swell raises on purpose."""


class ConfigError(SwellError):
    """Configuration that cannot work: a bad URL, duration or option."""


class MissingDependency(ConfigError):
    """An optional dependency is missing; the message names the ``pip install`` line."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed: pip install 'swell[{extra}]'")
        self.package = package
        self.extra = extra


class AppError(SwellError):
    """An app that cannot be loaded or is declared wrongly."""


class PayloadError(SwellError):
    """Bytes or data that do not make a valid event."""


class Throttled(SwellError):
    """Raise from a handler when a downstream refuses for now (HTTP 429, a quota).

    The event goes back to its queue for ``retry_after`` seconds; it counts as a throttle, not an
    error, does not use up an attempt, and the controller sees it.
    """

    def __init__(self, retry_after: float = 1.0, message: str = "throttled") -> None:
        super().__init__(f"{message} (retry after {retry_after:g}s)")
        self.retry_after_s = max(0.0, float(retry_after))


class IdempotencyConflict(SwellError):
    """An idempotency key reused for other content: no retry can make it right."""


class InProgress(Throttled):
    """Another attempt holds this idempotency key now: try again later (not an error)."""

    def __init__(self, key: str, retry_after: float = 1.0) -> None:
        super().__init__(retry_after, f"idempotency key {key!r} is in progress elsewhere")
        self.key = key


class BrokerError(SwellError):
    """A backend refused an operation or failed to do it."""


class BrokerUnavailable(BrokerError):
    """The backend cannot be reached."""


class UnknownQueue(BrokerError):
    """A queue that was never declared."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"unknown queue {queue!r} (declare it with app.queue({queue!r}))")
        self.queue = queue


class UnknownTopic(BrokerError):
    """A topic that was never declared."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"unknown topic {topic!r} (declare it with app.topic({topic!r}))")
        self.topic = topic


class UnknownStream(BrokerError):
    """A stream that was never declared."""

    def __init__(self, stream: str) -> None:
        super().__init__(f"unknown stream {stream!r} (declare it with app.stream({stream!r}))")
        self.stream = stream


class MessageTooLarge(BrokerError):
    """A message larger than its queue allows; nothing was stored."""

    def __init__(self, queue: str, size: int, limit: int) -> None:
        super().__init__(f"message of {size:,} bytes is over the {limit:,}-byte limit of {queue!r}")
        self.queue, self.size, self.limit = queue, size, limit


class StaleReceipt(BrokerError):
    """The lease behind a receipt is no longer held."""
