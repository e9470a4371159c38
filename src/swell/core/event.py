"""The event envelope: CloudEvents 1.0, JSON structured mode on the wire.

Reading is strict: what the CloudEvents 1.0 spec (core attributes, type system, JSON event format)
refuses raises :class:`PayloadError` naming the rule, and swell never writes such an event. Reading
has two paths that give the same answers:

- the fast path, for the canonical form swell itself writes (compact, attributes in wire order,
  ``data`` last, no other extension attributes): msgspec decodes it straight into an :class:`Event`
  and encodes that again. Equal bytes prove there is no duplicate member and nothing else, and that
  ``time`` is RFC 3339 (the only form msgspec writes). A large event is split at its data member
  first, so that only its attributes are encoded again. What msgspec does not check (control
  characters, URI and media-type syntax) is checked after, mostly through caches of values already
  found valid (``swell.core.cloudevents`` holds the rules and their caches);
- the general path for anything else (other writers, extension attributes, ``data_base64``, and
  every error), which checks each rule in turn and words the error.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import msgspec

from swell.core.cloudevents import (
    ATTRIBUTES,
    KNOWN_MEDIA_TYPES,
    KNOWN_STRINGS,
    KNOWN_URI_REFERENCES,
    KNOWN_URIS,
    OPTIONAL_ATTRIBUTES,
    RESERVED_ATTRIBUTES,
    SWELL_EXTENSIONS,
    TIME_RULE,
    Timestamp,
    check_cached_string,
    check_data,
    check_extension,
    check_extensions,
    check_non_empty,
    check_string,
    check_uri,
    check_uri_reference,
    declares_json,
    format_time,
    media_type_is_json,
    pop_data,
    refuse,
    shown,
)
from swell.core.codec import decode_json, encode_json
from swell.core.errors import PayloadError

__all__ = ["RESERVED_ATTRIBUTES", "Event", "new_id"]

T = TypeVar("T")
_VARYING_STRINGS = ("subject", *SWELL_EXTENSIONS)  # String attributes that differ event to event
_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


def new_id() -> str:
    """A random, unique event id."""
    return uuid.uuid4().hex


class Event(msgspec.Struct, Generic[T], frozen=True, kw_only=True, forbid_unknown_fields=True,
            omit_defaults=True, tag_field="specversion", tag="1.0"):
    """A CloudEvents 1.0 event. ``Event[Order]`` in a handler's signature gives the whole envelope
    with ``data`` validated as ``Order``.

    ``data`` holds JSON data, or ``bytes`` for binary content (``data_base64`` on the wire).
    Extension attributes other than swell's own four are kept in ``extensions``.
    """

    specversion: ClassVar[str] = "1.0"
    # Fields in wire order: msgspec writes the struct itself as the canonical CloudEvent (the
    # specversion tag first, None and empty fields left out), and reads that form back in one step.
    id: _NonEmpty = msgspec.field(default_factory=new_id)
    source: _NonEmpty
    type: _NonEmpty
    subject: _NonEmpty | None = None
    time: Timestamp | None = None
    datacontenttype: _NonEmpty | None = None
    dataschema: _NonEmpty | None = None
    key: str | None = None
    idempotencykey: str | None = None
    correlationid: str | None = None
    traceparent: str | None = None
    extensions: dict[str, Any] = msgspec.field(default_factory=dict)
    data: T | None = None

    # -- wire format -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The event as a CloudEvents JSON structured-mode object (absent attributes omitted). An
        attribute the spec refuses raises ``PayloadError``: swell never writes an invalid event."""
        self._check()
        return self._wire()

    def _wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"specversion": "1.0"}
        for name in ATTRIBUTES:
            value = getattr(self, name)
            if value is not None:
                out[name] = format_time(value) if name == "time" else value
        out.update(self.extensions)
        data = self.data
        if isinstance(data, bytes | bytearray | memoryview):
            out["data_base64"] = base64.b64encode(data).decode("ascii")
        elif data is not None:
            out["data"] = data
        return out

    def to_json(self) -> bytes:
        """The event as CloudEvents JSON (``to_dict``, encoded); an invalid one raises ``PayloadError``."""
        self._check()
        if isinstance(self.data, bytes | bytearray | memoryview) or not _canonical_time(self.time):
            return encode_json(self._wire())
        if self.extensions:  # the attributes as the struct writes them, the extensions, the data
            head = encode_json(msgspec.structs.replace(self, extensions={}, data=None))
            out = head[:-1] + b"," + encode_json(self.extensions)[1:-1]
            return out + (b"}" if self.data is None else b',"data":' + encode_json(self.data) + b"}")
        return encode_json(self)  # the struct as it stands: the form the fast path reads

    def _check(self) -> None:
        check_non_empty("id", self.id)
        check_uri_reference("source", self.source)
        check_cached_string("type", self.type)
        if self.subject is not None:
            check_non_empty("subject", self.subject)
        if self.time is not None and not isinstance(self.time, datetime):
            raise refuse("time", TIME_RULE, self.time)
        is_json = True
        if self.datacontenttype is not None:
            is_json = media_type_is_json(self.datacontenttype)
        if self.dataschema is not None:
            check_uri("dataschema", self.dataschema)
        for name in SWELL_EXTENSIONS:
            value = getattr(self, name)
            if value is not None:
                check_string(name, value)
        for name, value in self.extensions.items():
            if name in RESERVED_ATTRIBUTES:
                raise PayloadError(f"extension attribute {name!r} is a CloudEvents or swell attribute")
            if value is not None:
                check_extension(name, value)
        check_data(self.datacontenttype, is_json, self.data)

    @classmethod
    def from_dict(cls, obj: Any) -> Event[Any]:
        """Read a CloudEvents JSON object; anything the spec refuses raises ``PayloadError`` naming
        the rule. (A dict cannot hold a member twice: ``from_json`` checks that.)"""
        if not isinstance(obj, dict):
            raise PayloadError("a CloudEvent must be a JSON object")
        obj = dict(obj)  # popped as read: what is left are extension attributes
        version = obj.pop("specversion", None)
        if version != "1.0":
            raise PayloadError("attribute 'specversion' is required and must be '1.0' (CloudEvents "
                               f"1.0), not {shown(version)}")
        fields: dict[str, Any] = {
            "id": check_non_empty("id", obj.pop("id", None)),
            "source": check_uri_reference("source", obj.pop("source", None)),
            "type": check_cached_string("type", obj.pop("type", None)),
        }
        for name, check in OPTIONAL_ATTRIBUTES:
            value = obj.pop(name, None)
            if value is not None:  # null is the same as absent
                fields[name] = check(name, value)
        content_type = fields.get("datacontenttype")
        data = pop_data(obj, content_type, content_type is None or media_type_is_json(content_type))
        if data is not None:
            fields["data"] = data
        if obj:
            fields["extensions"] = check_extensions(obj)
        return Event(**fields)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event[Any]:
        """Read a CloudEvent from its JSON; anything the spec refuses, or malformed JSON (nested too
        deeply too), raises ``PayloadError`` naming the rule."""
        try:
            if len(raw) <= _SPLIT_ABOVE:
                event = _decode_wire(raw)
                if event.extensions or _encode_wire(event) != raw:  # a str, another writer's JSON...
                    return _read_general(raw)
            else:
                event = _read_split(raw) if type(raw) is bytes else None  # type: ignore[assignment]
                if event is None:
                    return _read_general(raw)
        except msgspec.DecodeError:
            return _read_general(raw)
        except RecursionError as exc:
            raise PayloadError(f"JSON nested too deeply: {exc}") from exc
        # the canonical form: what is left to check is what msgspec does not
        if event.source not in KNOWN_URI_REFERENCES:
            check_uri_reference("source", event.source)
        if event.type not in KNOWN_STRINGS:
            check_cached_string("type", event.type)
        if (event.subject or event.key or event.idempotencykey or event.correlationid or event.traceparent
                or event.datacontenttype or event.dataschema):
            _check_canonical_rest(event, raw)  # type: ignore[arg-type]  # (a str is never canonical)
        elif not event.id.isprintable():
            check_string("id", event.id)
        return event

    # -- helpers -----------------------------------------------------------------------------
    @property
    def is_json(self) -> bool:
        """Whether ``data`` is JSON (by ``datacontenttype``; absent means JSON)."""
        return declares_json(self.datacontenttype)

    def replace(self, **changes: Any) -> Event[Any]:
        """A copy with some attributes changed."""
        return msgspec.structs.replace(self, **changes)


_decode_wire = msgspec.json.Decoder(Event).decode
_encode_wire = msgspec.json.Encoder().encode
_decode_data = msgspec.json.Decoder().decode
_SPLIT_ABOVE = 512  # bytes: above, encoding the data again would cost more than splitting it off
# whether a media type found valid declares JSON (None: not checked yet). Bound once: Python 3.11
# compiles a method call on an imported name (KNOWN_MEDIA_TYPES.get) to a slower attribute load
_known_json = KNOWN_MEDIA_TYPES.get


def _check_canonical_rest(event: Event[Any], raw: bytes | bytearray | memoryview) -> None:
    """The fast path's checks of the optional attributes (and of id)."""
    if type(raw) is memoryview:
        raw = bytes(raw)
    # one look at the bytes clears all strings: msgspec escapes every U+0000-U+001F, so printable
    # ASCII with no backslash holds no character the spec refuses
    if not (raw.isascii() and raw.find(b"\\") < 0 and raw.find(b"\x7f") < 0):
        for name in ("id", *_VARYING_STRINGS):
            if getattr(event, name):
                check_string(name, getattr(event, name))
    content_type = event.datacontenttype
    if content_type is not None and not _known_json(content_type):
        check_data(content_type, media_type_is_json(content_type), event.data)
    if event.dataschema is not None and event.dataschema not in KNOWN_URIS:
        check_uri("dataschema", event.dataschema)


def _read_split(raw: bytes) -> Event[Any] | None:
    """The fast path for a large event, ``{attributes,"data":DATA}``, read as two parts so that only
    the attributes are re-encoded; ``None`` if it is not in the canonical form.

    ``,"data":`` cannot occur inside a JSON string (a quote there is escaped), so its first
    occurrence is a member named data. If the part before it, closed, is the canonical form of an
    event (which has no data member), that member is a top-level one; DATA decoding as one JSON
    value, with nothing after it but the closing brace, proves no member follows."""
    at = raw.find(b',"data":')
    if at < 0:  # no data
        event = _decode_wire(raw)
        return None if event.extensions or _encode_wire(event) != raw else event
    if raw[-1] != 0x7D:  # "}"
        return None
    head = raw[:at] + b"}"
    event = _decode_wire(head)
    if event.extensions or _encode_wire(event) != head:
        return None
    msgspec.structs.force_setattr(event, "data", _decode_data(raw[at + 8 : -1]))
    return event


def _read_general(raw: bytes | str) -> Event[Any]:
    obj = decode_json(raw)
    if isinstance(obj, dict) and encode_json(obj) != (raw.encode("utf-8", "replace")
                                                      if isinstance(raw, str) else raw):
        duplicate = _top_level_duplicate(raw)  # not the canonical form: look closer
        if duplicate is not None:
            raise PayloadError(f"member {duplicate!r} appears twice in the event (CloudEvents 1.0: each "
                               "attribute appears at most once)")
    return Event.from_dict(obj)


def _canonical_time(t: datetime | None) -> bool:
    """Whether msgspec writes ``t`` as RFC 3339 as it stands (aware, offset in whole minutes)."""
    if t is None:
        return True
    offset = t.utcoffset()
    return offset is not None and not offset % timedelta(minutes=1)


def _top_level_duplicate(raw: bytes | str) -> str | None:
    """The first member name that appears twice in the top-level JSON object of ``raw``."""
    last: list[list[tuple[str, Any]]] = [[]]

    def pairs(items: list[tuple[str, Any]]) -> None:
        last[0] = items  # objects complete inside out: the top-level one comes last

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except RecursionError as exc:
        raise PayloadError(f"JSON nested too deeply: {exc}") from exc
    seen: set[str] = set()
    for key, _ in last[0]:
        if key in seen:
            return key
        seen.add(key)
    return None
