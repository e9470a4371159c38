"""A lease in the kv store: one holder at a time of a key with a TTL (the outbox relay of an app,
a partition of a consumer group, and soon a schedule).

It is taken only when the key is free (``put_if_absent``), renewed by a compare-and-set on the
revision it holds (so a holder that lost it, its entry expired and taken by another, learns so and
never overwrites the new holder), and given up by deleting that revision. A holder that dies lets
it run out within its TTL, except one whose process on this machine is gone (a SIGKILL, a crash):
its lease is taken over at once, so a node restarted in its place does not wait out the TTL. An
owner names its process as a node id does (``host-pid-<mark><random>``, ``runtime.cluster.node_id``):
the mark (``machine_mark``) fingerprints this machine's boot and pid namespace, so a process of
another machine or container that shares the host name is never taken for one of ours.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import socket
from pathlib import Path

from swell.brokers.base import KV
from swell.core.clock import Clock
from swell.core.errors import SwellError

__all__ = ["Lease"]

log = logging.getLogger("swell.lease")


class Lease:
    """``key`` held by ``owner`` for ``ttl_s`` at a time; ``hold()`` takes or renews it."""

    def __init__(self, kv: KV, key: str, owner: str, clock: Clock, *, ttl_s: float) -> None:
        self.kv = kv
        self.key = key
        self.owner = owner.encode()
        self.clock = clock
        self.ttl_s = ttl_s
        self.revision: int | None = None
        self.renewed = 0.0

    @property
    def held(self) -> bool:
        return self.revision is not None

    async def take(self) -> bool:
        """Take the lease if the key is free, or held by a process of this machine that is gone."""
        self.revision = await self.kv.put_if_absent(self.key, self.owner, ttl_s=self.ttl_s)
        if self.revision is None:
            self.revision = await self._take_from_the_dead()
        self.renewed = self.clock.monotonic()
        return self.revision is not None

    async def _take_from_the_dead(self) -> int | None:
        entry = await self.kv.get(self.key)
        if entry is None or not gone(entry.value):
            return None
        log.info("lease %s: its holder %s is gone, taken over at once", self.key,
                 entry.value.decode(errors="replace"))
        return await self.kv.compare_and_set(self.key, self.owner, entry.revision,
                                             ttl_s=self.ttl_s)

    async def renew(self) -> bool:
        """Renew the lease held; ``False`` if it was lost meanwhile."""
        if self.revision is not None:
            self.revision = await self.kv.compare_and_set(self.key, self.owner, self.revision,
                                                          ttl_s=self.ttl_s)
            self.renewed = self.clock.monotonic()
        return self.revision is not None

    async def hold(self) -> bool:
        """Hold the lease: renewed once a third of its TTL has passed, taken again if lost."""
        if self.revision is not None:
            if self.clock.monotonic() - self.renewed < self.ttl_s / 3:
                return True
            if await self.renew():
                return True
        return await self.take()

    async def release(self) -> None:
        """Give the lease up (a failure is logged: it runs out on its own)."""
        if self.revision is not None:
            revision, self.revision = self.revision, None
            try:
                await self.kv.delete(self.key, revision)
            except SwellError as exc:
                log.debug("could not give up the lease %s: %s", self.key, exc)


_OWNER = re.compile(rb"(?P<host>.+)-(?P<pid>\d+)-(?P<mark>[0-9a-f]{6})[0-9a-f]{4}")


@functools.cache
def machine_mark() -> str | None:
    """Six hex digits naming this boot of this machine and this pid namespace (``None`` where
    they cannot be read: then no lease is ever taken over early)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return hashlib.sha256(f"{boot}:{namespace}".encode()).hexdigest()[:6]


def gone(owner: bytes) -> bool:
    """Whether ``owner`` (a node id) was a process of this machine, boot and pid namespace that no
    longer runs (never this process: two runtimes in one process hold leases apart)."""
    m, mark = _OWNER.fullmatch(owner), machine_mark()
    if m is None or mark is None or m["mark"].decode() != mark \
            or m["host"].decode(errors="replace") != socket.gethostname():
        return False
    pid = int(m["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False
