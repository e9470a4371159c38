"""The rules of CloudEvents 1.0 that swell checks: its attributes, the type system (String, URI,
URI-reference, Timestamp, Integer), extension names and values, media types (RFC 2046) and the data
members of the JSON event format. A check raises :class:`PayloadError` naming the rule.

The checks that find a value valid remember it (up to a bound per kind), so that the event's fast
path clears a repeated source, type, schema or media type with one set lookup.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec

from swell.core.codec import encode_json
from swell.core.errors import PayloadError

#: Context attributes of CloudEvents 1.0 plus the extensions swell uses, in wire order.
ATTRIBUTES = (
    "id", "source", "type", "subject", "time", "datacontenttype", "dataschema",
    "key", "idempotencykey", "correlationid", "traceparent",
)
SWELL_EXTENSIONS = ("key", "idempotencykey", "correlationid", "traceparent")
#: Names an extension attribute cannot take (the attributes above, and the data members).
RESERVED_ATTRIBUTES = frozenset(("specversion", *ATTRIBUTES, "data", "data_base64"))
_INT32 = range(-(2**31), 2**31)
_CACHE_MAX = 4096  # distinct values remembered as valid, per kind (sources, types, media types...)
#: The type Timestamp as msgspec reads it: a datetime with its offset.
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
_to_timestamp: Callable[[bytes], datetime] = msgspec.json.Decoder(Timestamp).decode


def shown(value: Any) -> str:
    """``value`` as an error message shows it: its repr, cut in the middle past 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...{text[-16:]} ({len(text)} chars)"


def refuse(name: str, rule: str, value: Any) -> PayloadError:
    """The error for attribute ``name`` holding ``value`` against ``rule``."""
    return PayloadError(f"attribute {name!r} {rule}, not {shown(value)}")


_STRING_RULE = ("must be a String (CloudEvents 1.0 type system): no control characters "
                "(U+0000-U+001F, U+007F-U+009F), noncharacters or lone surrogates")
_NON_EMPTY_RULE = "must be a non-empty String (CloudEvents 1.0)"
TIME_RULE = ("must be an RFC 3339 date-time with a time offset, like '2018-04-05T17:31:00Z' "
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
KNOWN_STRINGS: set[str] = set()
KNOWN_URI_REFERENCES: set[str] = set()
KNOWN_URIS: set[str] = set()
_EXTENSION_NAMES: set[str] = set()
KNOWN_MEDIA_TYPES: dict[str, bool] = {}  # media type -> whether it declares JSON data


def _remember(cache: set[str] | dict[str, bool], value: str, is_json: bool = False) -> None:
    if len(cache) < _CACHE_MAX:
        if isinstance(cache, set):
            cache.add(value)
        else:
            cache[value] = is_json


def check_string(name: str, value: Any) -> str:
    """``value`` if it is a String of the type system."""
    if type(value) is not str:
        raise refuse(name, _STRING_RULE, value)
    if not value.isprintable() and _BAD_CHAR.search(value):  # isprintable: the quick yes
        raise refuse(name, _STRING_RULE, value)
    return value


def check_non_empty(name: str, value: Any) -> str:
    """``value`` if it is a non-empty String."""
    if type(value) is not str or not value:
        raise refuse(name, _NON_EMPTY_RULE, value)
    return check_string(name, value)


def check_cached_string(name: str, value: Any) -> str:
    """``value`` if it is a non-empty String, remembered (for ``type``: few distinct values)."""
    if type(value) is not str or value not in KNOWN_STRINGS:
        _remember(KNOWN_STRINGS, check_non_empty(name, value))
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


def check_uri_reference(name: str, value: Any) -> str:
    """``value`` if it is a non-empty URI-reference (RFC 3986), remembered."""
    if type(value) is not str or value not in KNOWN_URI_REFERENCES:
        if type(value) is not str or not _URI_REFERENCE.fullmatch(value) or not value \
                or not _ip_literal_ok(value):
            raise refuse(name, _URI_REFERENCE_RULE, value)
        _remember(KNOWN_URI_REFERENCES, value)
    return value


def check_uri(name: str, value: Any) -> str:
    """``value`` if it is an absolute URI (RFC 3986), remembered."""
    if type(value) is not str or value not in KNOWN_URIS:
        if type(value) is not str or not _URI.fullmatch(value) or not _ip_literal_ok(value):
            raise refuse(name, _URI_RULE, value)
        _remember(KNOWN_URIS, value)
    return value


def media_type_is_json(value: Any) -> bool:
    """Check a ``datacontenttype``; whether it declares JSON data (``*/json``, ``*/*+json``)."""
    is_json = KNOWN_MEDIA_TYPES.get(value) if type(value) is str else None
    if is_json is None:
        if type(value) is not str or not _MEDIA_TYPE.fullmatch(value):
            raise refuse("datacontenttype", _MEDIA_TYPE_RULE, value)
        is_json = declares_json(value)
        _remember(KNOWN_MEDIA_TYPES, value, is_json)
    return is_json


def declares_json(content_type: str | None) -> bool:
    """JSON event format 3.1: absent, or a media type of the form ``*/json`` or ``*/*+json``."""
    if content_type is None:
        return True
    subtype = content_type.split(";", 1)[0].strip().lower().partition("/")[2]
    return subtype == "json" or subtype.endswith("+json")


def parse_time(name: str, value: Any) -> datetime:
    """An RFC 3339 date-time with an offset (``T``/``Z`` in either case), parsed by msgspec as on the
    fast path (a fraction beyond microseconds is rounded). msgspec's parser checks every field;
    it also takes a space for the ``T`` and an offset without its colon, which RFC 3339 does not."""
    if type(value) is str and value[10:11] in ("T", "t") \
            and (value[-1:] in ("Z", "z") or value[-3:-2] == ":"):
        try:
            return _to_timestamp(encode_json(value))
        except msgspec.DecodeError:
            pass
    rule = TIME_RULE
    if type(value) is str and _RFC3339.fullmatch(value) and value[17:19] == "60":
        rule = "is a leap second (:60), which swell cannot represent; " + rule
    raise refuse(name, rule, value)


def check_media_type(name: str, value: Any) -> str:
    """``value`` if it is a media type (RFC 2046)."""
    media_type_is_json(value)
    return value  # type: ignore[no-any-return]


#: The optional attributes and their checks, in wire order.
OPTIONAL_ATTRIBUTES: tuple[tuple[str, Callable[[str, Any], Any]], ...] = (
    ("subject", check_non_empty), ("time", parse_time), ("datacontenttype", check_media_type),
    ("dataschema", check_uri), *((name, check_string) for name in SWELL_EXTENSIONS))


def check_extension(name: Any, value: Any) -> None:
    """Check an extension attribute's name (CloudEvents naming) and value (the type system)."""
    if type(name) is not str or name not in _EXTENSION_NAMES:
        if type(name) is not str or not _EXTENSION_NAME.fullmatch(name):
            raise PayloadError(f"extension attribute {shown(name)}: its {_NAME_RULE}")
        _remember(_EXTENSION_NAMES, name)
    if type(value) is str:
        check_string(name, value)
    elif type(value) is not bool and (type(value) is not int or value not in _INT32):
        raise refuse(name, _VALUE_RULE, value)


def check_extensions(members: dict[str, Any]) -> dict[str, Any]:
    """The extension attributes among ``members`` (those not null), checked."""
    extensions = {}
    for name, value in members.items():
        if value is not None:
            check_extension(name, value)
            extensions[name] = value
    return extensions


def check_data(content_type: str | None, is_json: bool, data: Any) -> None:
    """Data of a media type that is not JSON must be a string or bytes (JSON event format 3.1)."""
    if not is_json and data is not None and not isinstance(data, str | bytes | bytearray | memoryview):
        raise PayloadError(f"'data' of datacontenttype {content_type!r} (not JSON) must be a string or "
                           f"bytes (JSON event format 3.1: the data member holds its string form), "
                           f"not {shown(data)}")


def pop_data(obj: dict[str, Any], content_type: str | None, is_json: bool) -> Any:
    """Take ``data`` or ``data_base64`` (decoded to bytes) out of an event's members, checked."""
    data, data_base64 = obj.pop("data", None), obj.pop("data_base64", None)
    if data_base64 is None:
        check_data(content_type, is_json, data)
        return data
    if data is not None:
        raise PayloadError("an event has 'data' or 'data_base64', not both (JSON event format 3.1)")
    try:
        return base64.b64decode(data_base64, validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise PayloadError(f"data_base64 is not valid base64 (RFC 4648): {exc}") from exc


def format_time(t: datetime) -> str:
    """``t`` in RFC 3339 (naive: taken as UTC; an offset of seconds: moved to UTC)."""
    offset = t.utcoffset()
    if offset is None:  # naive: taken as UTC
        t = t.replace(tzinfo=UTC)
    elif offset % timedelta(minutes=1):  # RFC 3339 offsets are whole minutes
        t = t.astimezone(UTC)
    return t.isoformat().replace("+00:00", "Z")

