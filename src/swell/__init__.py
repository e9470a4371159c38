"""swell: event-driven, serverless-style Python functions that scale on signals.

Everything public is here; submodules are implementation.
"""

from swell.brokers.base import (
    Broker,
    Delivery,
    Message,
    QueueSpec,
    QueueStats,
    Receipt,
    SubscriptionSpec,
    TopicSpec,
)
from swell.brokers.producer import Producer
from swell.brokers.url import open_broker
from swell.core.clock import Clock, ManualClock, RealClock
from swell.core.errors import (
    AppError,
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    IdempotencyConflict,
    InProgress,
    MessageTooLarge,
    MissingDependency,
    PayloadError,
    StaleReceipt,
    SwellError,
    Throttled,
    UnknownQueue,
    UnknownTopic,
)
from swell.core.event import Event
from swell.core.filters import Pattern, PatternError, SubjectPattern
from swell.core.retry import Retry
from swell.core.slo import SLO
from swell.patterns.idempotency import Idempotency
from swell.patterns.sagas import Saga, SagaContext
from swell.runtime.app import App, Function, Group, Queue, Stream, Subscription, Topic
from swell.runtime.client import Client
from swell.runtime.context import Context, SyncContext
from swell.runtime.runtime import Runtime
from swell.scaling.auto import Auto
from swell.scaling.base import Controller, Decision
from swell.scaling.limiters import Limiter, RateLimit
from swell.scaling.signals import Signals

__version__ = "0.1.0"

__all__ = [
    "SLO",
    "App",
    "AppError",
    "Auto",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Client",
    "Clock",
    "ConfigError",
    "Context",
    "Controller",
    "Decision",
    "Delivery",
    "Event",
    "Function",
    "Group",
    "Idempotency",
    "IdempotencyConflict",
    "InProgress",
    "Limiter",
    "ManualClock",
    "Message",
    "MessageTooLarge",
    "MissingDependency",
    "Pattern",
    "PatternError",
    "PayloadError",
    "Producer",
    "Queue",
    "QueueSpec",
    "QueueStats",
    "RateLimit",
    "RealClock",
    "Receipt",
    "Retry",
    "Runtime",
    "Saga",
    "SagaContext",
    "Signals",
    "StaleReceipt",
    "Stream",
    "SubjectPattern",
    "Subscription",
    "SubscriptionSpec",
    "SwellError",
    "SyncContext",
    "Throttled",
    "Topic",
    "TopicSpec",
    "UnknownQueue",
    "UnknownTopic",
    "open_broker",
]
