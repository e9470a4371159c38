"""What every backend's log part shares: argument checks, and consumer-group checkpoints kept in
the broker's kv store (so they work on every backend, and a group's offsets live beside its
membership and assignment)."""

from __future__ import annotations

import msgspec

from swell.brokers.base import KV, StreamSpec
from swell.core import keys
from swell.core.errors import ConfigError

CHECKPOINTS = keys.GROUPS


def check_partition(spec: StreamSpec, partition: int) -> int:
    if not 0 <= partition < spec.partitions:
        raise ConfigError(f"stream {spec.name!r} has partitions 0..{spec.partitions - 1}, "
                          f"not {partition}")
    return partition


def partition_change(have: StreamSpec, want: StreamSpec) -> str:
    return (f"stream {want.name!r} exists with {have.partitions} partitions, the app declares "
            f"{want.partitions}: changing it would move keys between partitions (declare a new "
            "stream and replay into it)")


def _key(stream: str, group: str, partition: int) -> str:
    return f"{CHECKPOINTS}{stream}/{group}/offsets/{partition}"


async def commit(kv: KV, stream: str, group: str, offsets: dict[int, int]) -> None:
    """Record, per partition, the next offset ``group`` will read (everything before it is done)."""
    for partition, offset in offsets.items():
        await kv.put(_key(stream, group, partition), msgspec.json.encode(offset))


async def committed(kv: KV, stream: str, group: str) -> dict[int, int]:
    """The group's checkpoints: per partition, the next offset to read (absent: from the start)."""
    prefix = f"{CHECKPOINTS}{stream}/{group}/offsets/"
    return {int(e.key[len(prefix):]): msgspec.json.decode(e.value, type=int)
            for e in await kv.scan(prefix)}
