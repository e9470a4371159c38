"""What a parent and its worker processes say to each other: msgpack messages over a socket pair,
each framed as a 4-byte length, then the message. Event bodies and data never go through pickle."""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from swell.core.outcome import Outcome

HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024


# -- parent -> worker --------------------------------------------------------------------------------
class Run(msgspec.Struct, tag="run", array_like=True):
    body: bytes
    attempt: int
    timeout_s: float | None


class Reply(msgspec.Struct, tag="reply", array_like=True):
    value: Any = None
    error: str | None = None
    error_type: str | None = None


# -- worker -> parent --------------------------------------------------------------------------------
class Ready(msgspec.Struct, tag="ready", array_like=True):
    pid: int
    is_async: bool


class LoadFailed(msgspec.Struct, tag="load_failed", array_like=True):
    error: str


class Done(msgspec.Struct, tag="done", array_like=True):
    outcome: Outcome
    queued_s: float  # from the run message arriving to the handler being called
    event_id: str | None = None
    trace: str | None = None  # a failed attempt's traceback, for the parent's log


class Publish(msgspec.Struct, tag="publish", array_like=True):
    queue: str
    data: Any
    attrs: dict[str, Any]
    delay_s: float = 0.0


class Extend(msgspec.Struct, tag="extend", array_like=True):
    seconds: float


class Block(msgspec.Struct, tag="block", array_like=True):
    """``ctx.idempotent(key)``: ``op`` begin, then done or failed with the ``token`` begin gave.
    A begin is answered ``[token, done, result]``, or ``None`` if another attempt holds the key."""

    op: str
    key: str = ""
    token: int = 0
    result: Any = None


class Skip(msgspec.Struct, tag="skip", array_like=True):
    """``ctx.skip_idempotency(reason)``, logged and kept by the parent."""

    reason: str
    event_id: str


ToWorker = Run | Reply
FromWorker = Ready | LoadFailed | Done | Publish | Extend | Block | Skip
Request = Publish | Extend | Block | Skip
"""What a worker's Context asks its parent for."""


def _enc_hook(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)  # pydantic models travel as their JSON form, as inline
    if dump is not None:
        return dump(mode="json")
    raise TypeError(f"cannot encode {type(obj).__name__}")


_encode = msgspec.msgpack.Encoder(enc_hook=_enc_hook).encode
decode_in_parent = msgspec.msgpack.Decoder(FromWorker).decode
decode_in_worker = msgspec.msgpack.Decoder(ToWorker).decode


def frame(msg: msgspec.Struct) -> bytes:
    payload = _encode(msg)
    return HEADER.pack(len(payload)) + payload
