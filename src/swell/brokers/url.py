"""Open a broker from a URL; backends are imported lazily, by scheme."""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlsplit

from swell.brokers.base import Broker
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.errors import ConfigError

DEFAULT_BROKER = "sqlite:///.swell/swell.db"
SCHEMES = ("memory", "sqlite", "nats")


def default_broker_url() -> str:
    """``SWELL_BROKER`` if set, else the embedded default ``sqlite:///.swell/swell.db``."""
    return os.environ.get("SWELL_BROKER") or DEFAULT_BROKER


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL (SQLAlchemy's form)."""
    rest = url[len("sqlite://"):]
    if not rest.startswith("/") or rest == "/":
        raise ConfigError(f"bad SQLite URL {url!r}: use sqlite:///relative/path or sqlite:////abs/path")
    return rest[1:].split("?", 1)[0]


def open_broker(url: str | None = None, *, clock: Clock = SYSTEM_CLOCK) -> Broker:
    """A broker for ``url`` (default: ``default_broker_url()``)."""
    url = url or default_broker_url()
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from swell.brokers.memory import MemoryBroker

        return MemoryBroker(clock=clock)
    if scheme == "sqlite":
        from swell.brokers.sqlite import SqliteBroker

        options = dict(parse_qsl(urlsplit(url).query))
        return SqliteBroker(sqlite_path(url), clock=clock, **_sqlite_options(options))
    if scheme == "nats":
        from swell.brokers.nats import NatsBroker

        return NatsBroker(url, clock=clock)
    raise ConfigError(f"unknown broker {url!r}: the schemes are {', '.join(s + '://' for s in SCHEMES)}")


def _sqlite_options(options: dict[str, str]) -> dict[str, str]:
    allowed = {"synchronous"}
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(f"unknown SQLite option(s) {sorted(unknown)}; known: {sorted(allowed)}")
    return options
