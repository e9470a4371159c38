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
  found valid;
- the general path for anything else (other writers, extension attributes, ``data_base64``, and
  every error), which checks each rule in turn and words the error.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import msgspec

from swell.core.codec import decode_json, encode_json
from swell.core.errors import PayloadError

T = TypeVar("T")

#: Context attributes of CloudEvents 1.0 plus the extensions swell uses, in wire order.
_ATTRIBUTES = (
    "id", "source", "type", "subject", "time", "datacontenttype", "dataschema",
    "key", "idempotencykey", "correlationid", "traceparent",
)
_SWELL_EXTENSIONS = ("key", "idempotencykey", "correlationid", "traceparent")
_VARYING_STRINGS = ("subject", *_SWELL_EXTENSIONS)  # String attributes that differ event to event
#: Names an extension attribute cannot take (the attributes above, and the data members).
RESERVED_ATTRIBUTES = frozenset(("specversion", *_ATTRIBUTES, "data", "data_base64"))
_INT32 = range(-(2**31), 2**31)
_CACHE_MAX = 4096  # distinct values remembered as valid, per kind (sources, types, media types...)

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
_Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
_to_timestamp: Callable[[bytes], datetime] = msgspec.json.Decoder(_Timestamp).decode


def new_id() -> str:
    """A random, unique event id."""
    return uuid.uuid4().hex


# ------------------------------------------------------------------------------------------ the rules


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...{text[-16:]} ({len(text)} chars)"


def _refuse(name: str, rule: str, value: Any) -> PayloadError:
    return PayloadError(f"attribute {name!r} {rule}, not {_shown(value)}")


_STRING_RULE = ("must be a String (CloudEvents 1.0 type system): no control characters "
                "(U+0000-U+001F, U+007F-U+009F), noncharacters or lone surrogates")
_NON_EMPTY_RULE = "must be a non-empty String (CloudEvents 1.0)"
_TIME_RULE = ("must be an RFC 3339 date-time with a time offset, like '2018-04-05T17:31:00Z' "
              "(CloudEvents 1.0 type Timestamp)")
_URI_REFERENCE_RULE = "must be a non-empty URI-reference (RFC 3986; CloudEvents 1.0 type URI-reference)"
_URI_RULE = "must be a non-empty absolute URI (RFC 3986: scheme ':' ...; CloudEvents 1.0 type URI)"
_MEDIA_TYPE_RULE = ("must be a non-empty media type per RFC 2046, like 'application/json' or "
                    "'text/plain; charset=utf-8' (CloudEvents 1.0)")
_NAME_RULE = "name must be lower-case letters a-z and digits 0-9 only (CloudEvents 1.0 naming)"
_VALUE_RULE = ("must be in the CloudEvents 1.0 type system: a String, a Boolean, or an Integer "
               "within 32 bits (-2147483648..2147483647)")

_BAD_CHAR = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"\\U{plane:04x}fffe\\U{plane:04x}ffff" for plane in range(17)) + "]")
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
                      r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})")
_EXTENSION_NAME = re.compile(r"[a-z0-9]+")

# RFC 3986, appendix A (an IP-literal's inside is checked apart, with the ipaddress module)
_CHARS = r"A-Za-z0-9\-._~!$&'()*+,;="  # unreserved and sub-delims
_PCHAR = rf"(?:[{_CHARS}:@]|%[0-9A-Fa-f]{{2}})"
_AUTHORITY = (rf"(?:(?:[{_CHARS}:]|%[0-9A-Fa-f]{{2}})*@)?"
              rf"(?:\[[^\[\]]*\]|(?:[{_CHARS}]|%[0-9A-Fa-f]{{2}})*)(?::[0-9]*)?")
_TAIL = rf"(?:/{_PCHAR}*)*"
_HIER_PART = rf"(?://{_AUTHORITY}{_TAIL}|/(?:{_PCHAR}+{_TAIL})?|{_PCHAR}+{_TAIL}|)"
_RELATIVE_PART = (rf"(?://{_AUTHORITY}{_TAIL}|/(?:{_PCHAR}+{_TAIL})?"
                  rf"|(?:[{_CHARS}@]|%[0-9A-Fa-f]{{2}})+{_TAIL}|)")
_QUERY_FRAGMENT = rf"(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
_URI = re.compile(rf"{_SCHEME}:{_HIER_PART}{_QUERY_FRAGMENT}")
_URI_REFERENCE = re.compile(rf"(?:{_SCHEME}:{_HIER_PART}|{_RELATIVE_PART}){_QUERY_FRAGMENT}")
_IP_FUTURE = re.compile(rf"v[0-9A-Fa-f]+\.[{_CHARS}:]+")

# RFC 2045 section 5.1 (RFC 2046 media types): type "/" subtype *(";" attribute "=" value)
_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}="
                         rf"(?:{_TOKEN}|\"(?:[\t !#-\[\]-~]|\\[\t -~])*\"))*")

# values found valid, so that the fast path checks a repeated value with one set lookup
_STRINGS: set[str] = set()
_URI_REFERENCES: set[str] = set()
_URIS: set[str] = set()
_EXTENSION_NAMES: set[str] = set()
_MEDIA_TYPES: dict[str, bool] = {}  # media type -> whether it declares JSON data


def _remember(cache: set[str] | dict[str, bool], value: str, is_json: bool = False) -> None:
    if len(cache) < _CACHE_MAX:
        if isinstance(cache, set):
            cache.add(value)
        else:
            cache[value] = is_json


def _check_string(name: str, value: Any) -> str:
    if type(value) is not str:
        raise _refuse(name, _STRING_RULE, value)
    if not value.isprintable() and _BAD_CHAR.search(value):  # isprintable: the quick yes
        raise _refuse(name, _STRING_RULE, value)
    return value


def _check_non_empty(name: str, value: Any) -> str:
    if type(value) is not str or not value:
        raise _refuse(name, _NON_EMPTY_RULE, value)
    return _check_string(name, value)


def _check_cached_string(name: str, value: Any) -> str:
    if type(value) is not str or value not in _STRINGS:
        _remember(_STRINGS, _check_non_empty(name, value))
    return value  # type: ignore[no-any-return]


def _ip_literal_ok(value: str) -> bool:
    start = value.find("[")
    if start < 0:
        return True
    inside = value[start + 1 : value.index("]", start)]
    if _IP_FUTURE.fullmatch(inside):
        return True
    try:
        ipaddress.IPv6Address(inside)
    except ValueError:
        return False
    return "%" not in inside  # a zone id is not RFC 3986


def _check_uri_reference(name: str, value: Any) -> str:
    if type(value) is not str or value not in _URI_REFERENCES:
        if type(value) is not str or not _URI_REFERENCE.fullmatch(value) or not value \
                or not _ip_literal_ok(value):
            raise _refuse(name, _URI_REFERENCE_RULE, value)
        _remember(_URI_REFERENCES, value)
    return value


def _check_uri(name: str, value: Any) -> str:
    if type(value) is not str or value not in _URIS:
        if type(value) is not str or not _URI.fullmatch(value) or not _ip_literal_ok(value):
            raise _refuse(name, _URI_RULE, value)
        _remember(_URIS, value)
    return value


def _media_type_is_json(value: Any) -> bool:
    """Check a ``datacontenttype``; whether it declares JSON data (``*/json``, ``*/*+json``)."""
    is_json = _MEDIA_TYPES.get(value) if type(value) is str else None
    if is_json is None:
        if type(value) is not str or not _MEDIA_TYPE.fullmatch(value):
            raise _refuse("datacontenttype", _MEDIA_TYPE_RULE, value)
        is_json = _is_json(value)
        _remember(_MEDIA_TYPES, value, is_json)
    return is_json


def _is_json(content_type: str | None) -> bool:
    """JSON event format 3.1: absent, or a media type of the form ``*/json`` or ``*/*+json``."""
    if content_type is None:
        return True
    subtype = content_type.split(";", 1)[0].strip().lower().partition("/")[2]
    return subtype == "json" or subtype.endswith("+json")


def _parse_time(name: str, value: Any) -> datetime:
    """An RFC 3339 date-time with an offset (``T``/``Z`` in either case), parsed by msgspec as on the
    fast path (a fraction beyond microseconds is rounded). msgspec's parser checks every field;
    it also takes a space for the ``T`` and an offset without its colon, which RFC 3339 does not."""
    if type(value) is str and value[10:11] in ("T", "t") \
            and (value[-1:] in ("Z", "z") or value[-3:-2] == ":"):
        try:
            return _to_timestamp(encode_json(value))
        except msgspec.DecodeError:
            pass
    rule = _TIME_RULE
    if type(value) is str and _RFC3339.fullmatch(value) and value[17:19] == "60":
        rule = "is a leap second (:60), which swell cannot represent; " + rule
    raise _refuse(name, rule, value)


def _check_media_type(name: str, value: Any) -> str:
    _media_type_is_json(value)
    return value  # type: ignore[no-any-return]


#: The optional attributes and their checks, in wire order.
_OPTIONAL_ATTRIBUTES: tuple[tuple[str, Callable[[str, Any], Any]], ...] = (
    ("subject", _check_non_empty), ("time", _parse_time), ("datacontenttype", _check_media_type),
    ("dataschema", _check_uri), *((name, _check_string) for name in _SWELL_EXTENSIONS))


def _check_extension(name: Any, value: Any) -> None:
    if type(name) is not str or name not in _EXTENSION_NAMES:
        if type(name) is not str or not _EXTENSION_NAME.fullmatch(name):
            raise PayloadError(f"extension attribute {_shown(name)}: its {_NAME_RULE}")
        _remember(_EXTENSION_NAMES, name)
    if type(value) is str:
        _check_string(name, value)
    elif type(value) is not bool and (type(value) is not int or value not in _INT32):
        raise _refuse(name, _VALUE_RULE, value)


def _extensions(members: dict[str, Any]) -> dict[str, Any]:
    """The extension attributes among ``members`` (those not null), checked."""
    extensions = {}
    for name, value in members.items():
        if value is not None:
            _check_extension(name, value)
            extensions[name] = value
    return extensions


def _check_data(content_type: str | None, is_json: bool, data: Any) -> None:
    if not is_json and data is not None and not isinstance(data, str | bytes | bytearray | memoryview):
        raise PayloadError(f"'data' of datacontenttype {content_type!r} (not JSON) must be a string or "
                           f"bytes (JSON event format 3.1: the data member holds its string form), "
                           f"not {_shown(data)}")


def _pop_data(obj: dict[str, Any], content_type: str | None, is_json: bool) -> Any:
    data, data_base64 = obj.pop("data", None), obj.pop("data_base64", None)
    if data_base64 is None:
        _check_data(content_type, is_json, data)
        return data
    if data is not None:
        raise PayloadError("an event has 'data' or 'data_base64', not both (JSON event format 3.1)")
    try:
        return base64.b64decode(data_base64, validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise PayloadError(f"data_base64 is not valid base64 (RFC 4648): {exc}") from exc


def _format_time(t: datetime) -> str:
    offset = t.utcoffset()
    if offset is None:  # naive: taken as UTC
        t = t.replace(tzinfo=UTC)
    elif offset % timedelta(minutes=1):  # RFC 3339 offsets are whole minutes
        t = t.astimezone(UTC)
    return t.isoformat().replace("+00:00", "Z")


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


# ------------------------------------------------------------------------------------------ the event


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
    time: _Timestamp | None = None
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
        """The event as CloudEvents JSON (``to_dict``, encoded); an invalid one raises ``PayloadError``."""
        self._check()
        if self.extensions or isinstance(self.data, bytes | bytearray | memoryview) \
                or not _canonical_time(self.time):
            return encode_json(self._wire())
        return encode_json(self)  # the struct as it stands: the form the fast path reads

    def _check(self) -> None:
        _check_non_empty("id", self.id)
        _check_uri_reference("source", self.source)
        _check_cached_string("type", self.type)
        if self.subject is not None:
            _check_non_empty("subject", self.subject)
        if self.time is not None and not isinstance(self.time, datetime):
            raise _refuse("time", _TIME_RULE, self.time)
        is_json = True
        if self.datacontenttype is not None:
            is_json = _media_type_is_json(self.datacontenttype)
        if self.dataschema is not None:
            _check_uri("dataschema", self.dataschema)
        for name in _SWELL_EXTENSIONS:
            value = getattr(self, name)
            if value is not None:
                _check_string(name, value)
        for name, value in self.extensions.items():
            if name in RESERVED_ATTRIBUTES:
                raise PayloadError(f"extension attribute {name!r} is a CloudEvents or swell attribute")
            if value is not None:
                _check_extension(name, value)
        _check_data(self.datacontenttype, is_json, self.data)

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
                               f"1.0), not {_shown(version)}")
        fields: dict[str, Any] = {
            "id": _check_non_empty("id", obj.pop("id", None)),
            "source": _check_uri_reference("source", obj.pop("source", None)),
            "type": _check_cached_string("type", obj.pop("type", None)),
        }
        for name, check in _OPTIONAL_ATTRIBUTES:
            value = obj.pop(name, None)
            if value is not None:  # null is the same as absent
                fields[name] = check(name, value)
        content_type = fields.get("datacontenttype")
        data = _pop_data(obj, content_type, content_type is None or _media_type_is_json(content_type))
        if data is not None:
            fields["data"] = data
        if obj:
            fields["extensions"] = _extensions(obj)
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
        if event.source not in _URI_REFERENCES:
            _check_uri_reference("source", event.source)
        if event.type not in _STRINGS:
            _check_cached_string("type", event.type)
        if (event.subject or event.key or event.idempotencykey or event.correlationid or event.traceparent
                or event.datacontenttype or event.dataschema):
            _check_canonical_rest(event, raw)  # type: ignore[arg-type]  # (a str is never canonical)
        elif not event.id.isprintable():
            _check_string("id", event.id)
        return event

    # -- helpers -----------------------------------------------------------------------------
    @property
    def is_json(self) -> bool:
        """Whether ``data`` is JSON (by ``datacontenttype``; absent means JSON)."""
        return _is_json(self.datacontenttype)

    def replace(self, **changes: Any) -> Event[Any]:
        """A copy with some attributes changed."""
        return msgspec.structs.replace(self, **changes)


_decode_wire = msgspec.json.Decoder(Event).decode
_encode_wire = msgspec.json.Encoder().encode
_decode_data = msgspec.json.Decoder().decode
_SPLIT_ABOVE = 512  # bytes: above, encoding the data again would cost more than splitting it off


def _check_canonical_rest(event: Event[Any], raw: bytes | bytearray | memoryview) -> None:
    """The fast path's checks of the optional attributes (and of id)."""
    if type(raw) is memoryview:
        raw = bytes(raw)
    # one look at the bytes clears all strings: msgspec escapes every U+0000-U+001F, so printable
    # ASCII with no backslash holds no character the spec refuses
    if not (raw.isascii() and raw.find(b"\\") < 0 and raw.find(b"\x7f") < 0):
        for name in ("id", *_VARYING_STRINGS):
            if getattr(event, name):
                _check_string(name, getattr(event, name))
    content_type = event.datacontenttype
    if content_type is not None and not _MEDIA_TYPES.get(content_type):  # not known as JSON
        _check_data(content_type, _media_type_is_json(content_type), event.data)
    if event.dataschema is not None and event.dataschema not in _URIS:
        _check_uri("dataschema", event.dataschema)


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
