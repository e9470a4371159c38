"""The event envelope: CloudEvents 1.0, JSON structured mode on the wire."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import msgspec

from swell.core.codec import decode_json, encode_json
from swell.core.errors import PayloadError

T = TypeVar("T")

#: Context attributes of CloudEvents 1.0 plus the extensions swell uses, in wire order.
_ATTRIBUTES = (
    "specversion", "id", "source", "type", "subject", "time",
    "datacontenttype", "dataschema", "key", "idempotencykey", "correlationid", "traceparent",
)
_REQUIRED = ("id", "source", "type")
#: Names an extension attribute cannot take (the attributes above, and the data members).
RESERVED_ATTRIBUTES = frozenset((*_ATTRIBUTES, "data", "data_base64"))
_JSON_TYPES = ("application/json", "text/json")


def new_id() -> str:
    """A random, unique event id."""
    return uuid.uuid4().hex


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True
    base = content_type.split(";", 1)[0].strip().lower()
    return base in _JSON_TYPES or base.endswith("+json")


def _format_time(t: datetime) -> str:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"attribute 'time' is not RFC 3339: {exc}") from exc


class Event(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """A CloudEvents 1.0 event. ``Event[Order]`` in a handler's signature gives the whole envelope
    with ``data`` validated as ``Order``.

    ``data`` holds JSON data, or ``bytes`` for binary content (``data_base64`` on the wire).
    Extension attributes other than swell's own four are kept in ``extensions``.
    """

    type: str
    source: str
    id: str = msgspec.field(default_factory=new_id)
    specversion: str = "1.0"
    subject: str | None = None
    time: datetime | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: T | None = None
    key: str | None = None
    idempotencykey: str | None = None
    correlationid: str | None = None
    traceparent: str | None = None
    extensions: dict[str, Any] = msgspec.field(default_factory=dict)

    # -- wire format -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The event as a CloudEvents JSON structured-mode object (absent attributes omitted)."""
        out: dict[str, Any] = {}
        for name in _ATTRIBUTES:
            value = getattr(self, name)
            if value is not None:
                out[name] = _format_time(value) if name == "time" else value
        out.update(self.extensions)
        data = self.data
        if isinstance(data, bytes | bytearray | memoryview):
            out["data_base64"] = base64.b64encode(data).decode("ascii")
        elif data is not None:
            out["data"] = data
        return out

    def to_json(self) -> bytes:
        return encode_json(self.to_dict())

    @classmethod
    def from_dict(cls, obj: Any) -> Event[Any]:
        """Read a CloudEvents JSON object; a missing or malformed attribute raises ``PayloadError``."""
        if not isinstance(obj, dict):
            raise PayloadError("a CloudEvent must be a JSON object")
        obj = dict(obj)
        if obj.pop("specversion", None) != "1.0":
            raise PayloadError("specversion must be '1.0'")
        for name in _REQUIRED:
            if not isinstance(obj.get(name), str) or not obj[name]:
                raise PayloadError(f"attribute {name!r} must be a non-empty string")
        fields: dict[str, Any] = {}
        for name in _ATTRIBUTES[1:]:
            value = obj.pop(name, None)
            if value is not None:
                if name != "time" and not isinstance(value, str):
                    raise PayloadError(f"attribute {name!r} must be a string")
                fields[name] = value
        if "time" in fields:
            fields["time"] = _parse_time(fields["time"])
        if "data_base64" in obj:
            if "data" in obj:
                raise PayloadError("an event has 'data' or 'data_base64', not both")
            try:
                fields["data"] = base64.b64decode(obj.pop("data_base64"), validate=True)
            except (binascii.Error, TypeError, ValueError) as exc:
                raise PayloadError(f"data_base64 is not valid base64: {exc}") from exc
        else:
            fields["data"] = obj.pop("data", None)
        # what is left are extension attributes; a null one is the same as an absent one
        fields["extensions"] = {k: v for k, v in obj.items() if v is not None}
        return Event(**fields)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event[Any]:
        try:
            wire = _wire_decoder.decode(raw)
        except msgspec.DecodeError:  # extensions, data_base64, malformed: the general path
            return cls.from_dict(decode_json(raw))
        if wire.specversion != "1.0" or not (wire.id and wire.source and wire.type):
            return cls.from_dict(decode_json(raw))  # which says what is wrong
        time = None
        if wire.time is not None:
            time = _parse_time(wire.time)
        return Event(type=wire.type, source=wire.source, id=wire.id, subject=wire.subject,
                     time=time, datacontenttype=wire.datacontenttype, dataschema=wire.dataschema,
                     data=wire.data, key=wire.key, idempotencykey=wire.idempotencykey,
                     correlationid=wire.correlationid, traceparent=wire.traceparent)

    # -- helpers -----------------------------------------------------------------------------
    @property
    def is_json(self) -> bool:
        """Whether ``data`` is JSON (by ``datacontenttype``; absent means JSON)."""
        return _is_json(self.datacontenttype)

    def replace(self, **changes: Any) -> Event[Any]:
        """A copy with some attributes changed."""
        return msgspec.structs.replace(self, **changes)


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    """The usual event on the wire: only the attributes above, and JSON ``data``. It decodes in one
    step; anything else (other extensions, ``data_base64``, a wrong type) fails to decode and takes
    ``Event.from_dict``, which keeps extensions and words the errors. ``time`` stays a string here,
    so both paths parse it the same way."""

    specversion: str
    id: str
    source: str
    type: str
    subject: str | None = None
    time: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: Any = None
    key: str | None = None
    idempotencykey: str | None = None
    correlationid: str | None = None
    traceparent: str | None = None


_wire_decoder = msgspec.json.Decoder(_Wire)
