"""One holder at a time across nodes: a kv record with a TTL that its holder renews. Sources that
read something only one reader may drain (a replication slot, a change table) hold a ``Lease``
while they read; the others stand by and take over once it lapses (its holder stopped, or died and
stopped renewing). A holder that died on this machine (its process is gone: a SIGKILL, a crash)
is taken over at once, so a node restarted in its place does not wait out the TTL."""

from __future__ import annotations

import os
import socket
from contextlib import suppress

import msgspec

from swell.brokers.base import KV
from swell.core.clock import Clock
from swell.core.errors import SwellError

__all__ = ["Lease"]


class Lease:
    """A lease on ``key``: ``await hold()`` takes it when free and renews it when held (every
    ``ttl_s / 3``); it answers whether this holder has it now."""

    def __init__(self, kv: KV, key: str, holder: str, clock: Clock, ttl_s: float = 15.0) -> None:
        self.kv = kv
        self.key = key
        self.holder = msgspec.json.encode(Holder(node=holder, host=socket.gethostname(),
                                                 pid=os.getpid()))
        self.clock = clock
        self.ttl_s = ttl_s
        self._revision: int | None = None
        self._renewed = 0.0

    @property
    def held(self) -> bool:
        """Held as of the last ``hold()`` and not yet due to lapse."""
        return self._revision is not None and \
            self.clock.monotonic() - self._renewed < self.ttl_s * 2 / 3

    async def hold(self) -> bool:
        """Take or renew the lease; whether it is held. A kv store that fails loses it (another
        node may take it once the record lapses)."""
        now = self.clock.monotonic()
        try:
            if self._revision is None:
                self._revision = await self.kv.put_if_absent(self.key, self.holder, self.ttl_s) \
                    or await self._take_from_the_dead()
            elif now - self._renewed >= self.ttl_s / 3:
                self._revision = await self.kv.compare_and_set(self.key, self.holder,
                                                               self._revision, self.ttl_s)
            else:
                return True
        except SwellError:
            self._revision = None
        if self._revision is not None:
            self._renewed = now
        return self._revision is not None

    async def _take_from_the_dead(self) -> int | None:
        entry = await self.kv.get(self.key)
        if entry is None:
            return None
        try:
            held = msgspec.json.decode(entry.value, type=Holder)
        except msgspec.DecodeError:
            return None
        if held.host != socket.gethostname() or held.pid == os.getpid() or alive(held.pid):
            return None
        return await self.kv.compare_and_set(self.key, self.holder, entry.revision, self.ttl_s)

    async def release(self) -> None:
        """Give it up now (a graceful stop), so another node need not wait out the TTL."""
        revision, self._revision = self._revision, None
        if revision is not None:
            with suppress(SwellError):  # (else it lapses on its own)
                await self.kv.delete(self.key, revision=revision)


class Holder(msgspec.Struct, frozen=True):
    """Who holds a lease."""

    node: str
    host: str
    pid: int


def alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
