"""A function's intake paused from outside (the admin API): a flag per function in the kv store,
``swell/paused/<app>/<function>`` (see ``swell.core.keys``), that every node reads.

While the flag is there, a node's decision for the function is 0 whatever its controller says
(its reason ``paused by <who>``, so ``swell status`` says so), with no warm floor and no
activation: events wait in the queue, what is in flight finishes. Every node reads the flag
itself, so the pause holds on every node even while the leader has not seen it yet. The flag
outlives restarts, like a saga's pause; resuming removes it.

The runtime asks twice per tick: ``refresh`` (the flags, read at most every ``READ_EVERY_S``:
one kv scan whatever the number of functions) and ``hold`` (from ``_apply``, per function)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from swell.brokers.base import KV
from swell.core import keys
from swell.core.errors import SwellError
from swell.scaling.base import Decision

if TYPE_CHECKING:
    from swell.runtime.runtime import Runtime
    from swell.runtime.state import FunctionState

__all__ = ["READ_EVERY_S", "Paused", "hold", "pause", "read_paused", "refresh", "resume"]

READ_EVERY_S = 1.0
"""How often a node reads the flags: a pause or resume takes effect within this and a tick."""


class Paused(msgspec.Struct, frozen=True, kw_only=True):
    """Who paused a function, when (epoch seconds) and why."""

    by: str
    at: float
    reason: str | None = None

    @property
    def said(self) -> str:
        return f"paused by {self.by}" + (f": {self.reason}" if self.reason else "")


async def pause(kv: KV, app: str, function: str, *, by: str, at: float,
                reason: str | None = None) -> Paused:
    flag = Paused(by=by, at=at, reason=reason)
    await kv.put(keys.paused(app, function), msgspec.json.encode(flag))
    return flag


async def resume(kv: KV, app: str, function: str) -> bool:
    """Remove the flag; whether there was one."""
    return await kv.delete(keys.paused(app, function))


async def read_paused(kv: KV, app: str) -> dict[str, Paused]:
    """The paused functions of ``app`` (a flag that does not decode counts as paused by someone
    unknown: a pause is never lost to a format change)."""
    prefix = keys.paused(app)
    out = {}
    for e in await kv.scan(prefix):
        try:
            out[e.key[len(prefix):]] = msgspec.json.decode(e.value, type=Paused)
        except msgspec.DecodeError:
            out[e.key[len(prefix):]] = Paused(by="(unknown)", at=0.0)
    return out


@dataclass
class _Seen:
    at: float
    flags: dict[str, Paused] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)
    """When each paused function's decision fell to 0 (its ``decided_at`` while paused)."""


_SEEN: weakref.WeakKeyDictionary[Runtime, _Seen] = weakref.WeakKeyDictionary()


async def refresh(rt: Runtime, *, force: bool = False) -> None:
    """Read the flags again if the last read is ``READ_EVERY_S`` old; a function whose flag came
    or went is woken from rest, so this tick applies the change. A failed read keeps the last."""
    seen = _SEEN.get(rt)
    now = rt.clock.monotonic()
    if seen is not None and not force and now - seen.at < READ_EVERY_S:
        return
    try:
        flags = await read_paused(rt.broker.kv, rt.app.name)
    except SwellError:
        if seen is not None:
            return
        flags = {}
    before = {} if seen is None else seen.flags
    if seen is None:
        seen = _SEEN[rt] = _Seen(now)
    seen.at, seen.flags = now, flags
    for name in set(before) ^ set(flags):
        st = rt.functions.get(name)
        if st is not None:
            st.resting = False


async def hold(rt: Runtime, st: FunctionState) -> bool:
    """Whether ``st``'s function is paused; if it is, its decision is 0 and says by whom."""
    if rt not in _SEEN:
        await refresh(rt)  # (the start: before the first tick)
    seen = _SEEN[rt]
    flag = seen.flags.get(st.fn.name)
    if flag is None:
        seen.since.pop(st.fn.name, None)
        return False
    st.decision = Decision(0, flag.said)
    st.decided_at = seen.since.setdefault(st.fn.name, rt.clock.time())
    return True
