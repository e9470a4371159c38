"""What the patterns are given, as small protocols: they sit below the runtime and never import it.

An ``App`` is ``Declarations`` (what it declares, by name); a running ``Runtime`` is a ``Host`` (a
node's broker, clock and id) for a pattern's background service; ``swell.Client`` and the runtime
hand the patterns a ``Producer`` (``swell.brokers.producer``) to publish with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from swell.brokers.base import Broker
from swell.brokers.producer import Declared
from swell.core.clock import Clock

__all__ = ["Declarations", "Host"]


class Declarations(Protocol):
    """An app's declarations, as the patterns read them."""

    @property
    def name(self) -> str: ...

    @property
    def queues(self) -> Mapping[str, Declared]: ...

    @property
    def topics(self) -> Mapping[str, Declared]: ...

    @property
    def streams(self) -> Mapping[str, Declared]: ...


class Host(Protocol):
    """A running node, as a pattern's background service sees it."""

    @property
    def broker(self) -> Broker: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def node(self) -> str: ...
