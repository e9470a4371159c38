"""Open a broker from a URL; backends are imported lazily, by scheme."""

from __future__ import annotations

import os
from urllib.parse import SplitResult, parse_qsl, urlsplit

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


def scheme_of(url: str) -> str:
    """The scheme of a broker URL (``sqlite``, ``nats``...); ``ConfigError`` if it is no URL."""
    return _split(url, url).scheme


def open_broker(url: str | None = None, *, clock: Clock = SYSTEM_CLOCK) -> Broker:
    """A broker for ``url`` (default: ``default_broker_url()``)."""
    url = url or default_broker_url()
    scheme = scheme_of(url)
    if scheme == "memory":
        from swell.brokers.memory import MemoryBroker

        return MemoryBroker(clock=clock)
    if scheme == "sqlite":
        from swell.brokers.sqlite import SqliteBroker

        options = dict(parse_qsl(urlsplit(url).query))
        return SqliteBroker(sqlite_path(url), clock=clock, **_sqlite_options(options))
    if scheme == "nats":
        check_nats_url(url)
        from swell.brokers.nats import NatsBroker

        return NatsBroker(url, clock=clock)
    raise ConfigError(f"unknown broker {url!r}: the schemes are {', '.join(s + '://' for s in SCHEMES)}")


def check_nats_url(url: str) -> None:
    """Refuse a NATS URL without a host, or with a port that is not a number from 1 to 65535,
    before anything tries to connect (which would only say that nothing answered)."""
    servers = [s.strip() for s in url.partition("?")[0].split(",") if s.strip()]
    if not servers:
        raise ConfigError(f"bad NATS URL {url!r}: use nats://HOST:PORT (like nats://127.0.0.1:4222)")
    for server in servers:
        parts = _split(server if "://" in server else f"nats://{server}", url)
        if not parts.hostname:
            raise ConfigError(f"bad NATS URL {url!r}: {server!r} has no host; use "
                              "nats://HOST:PORT (like nats://127.0.0.1:4222)")
        try:
            port = parts.port
        except ValueError:  # not a number, or over 65535
            port = 0
        if port == 0 or (port is None and parts.netloc.endswith(":")):
            raise ConfigError(f"bad NATS URL {url!r}: the port of {server!r} is not a number from "
                              "1 to 65535")


def _split(url: str, whole: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:  # an unclosed [ of an IPv6 address, say
        raise ConfigError(f"bad broker URL {whole!r}: {exc}") from None


def _sqlite_options(options: dict[str, str]) -> dict[str, str]:
    allowed = {"synchronous"}
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(f"unknown SQLite option(s) {sorted(unknown)}; known: {sorted(allowed)}")
    return options
