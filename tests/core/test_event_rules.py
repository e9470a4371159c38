"""The rules of CloudEvents 1.0 (core: naming, type system, attributes; JSON event format) that the
reader enforces and the writer keeps, one section per rule. Every input is read in two forms: spaced,
as another writer sends it (the general path), and compact in swell's wire order (the fast path when
the envelope allows): both must give the same answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swell import Event, PayloadError
from swell.brokers.base import Broker
from swell.brokers.producer import Producer

WIRE_ORDER = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema",
              "key", "idempotencykey", "correlationid", "traceparent")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def valid(**changes: Any) -> dict[str, Any]:
    """A minimal valid event object with some members changed (``None`` removes a member)."""
    obj: dict[str, Any] = {"specversion": "1.0", "id": "e-1", "source": "/test", "type": "t.x"}
    obj.update(changes)
    return {k: v for k, v in obj.items() if v is not None}


def forms(obj: dict[str, Any]) -> list[bytes]:
    """``obj`` spaced (another writer), and compact in swell's wire order, data last."""
    ordered = {k: obj[k] for k in WIRE_ORDER if k in obj}
    ordered.update((k, v) for k, v in obj.items() if k not in ordered and k not in ("data", "data_base64"))
    ordered.update((k, obj[k]) for k in ("data", "data_base64") if k in obj)
    return [json.dumps(obj, indent=1).encode(), msgspec.json.encode(ordered)]


def read(obj: dict[str, Any]) -> Event[Any]:
    """``obj`` read in both forms, which must agree."""
    first, second = (Event.from_json(raw) for raw in forms(obj))
    assert first == second
    return first


def refused(obj: dict[str, Any] | bytes, rule: str) -> None:
    for raw in forms(obj) if isinstance(obj, dict) else [obj]:
        with pytest.raises(PayloadError, match=rule):
            Event.from_json(raw)


# -- time: an RFC 3339 date-time with an offset (type Timestamp) ---------------------------------
@pytest.mark.parametrize("text", ["2018-04-05t17:31:00z", "2018-04-05T17:31:00z", "2018-04-05t17:31:00Z",
                                  "2018-04-05t18:31:00.000+01:00"])
def test_time_takes_lower_case_t_and_z_as_rfc3339_allows(text: str) -> None:
    assert read(valid(time=text)).time == datetime(2018, 4, 5, 17, 31, tzinfo=UTC)


@pytest.mark.parametrize("text", [
    pytest.param("2018-04-05T17:31:00", id="no offset"),
    pytest.param("2018-04-05 17:31:00Z", id="a space for T"),
    pytest.param("2018-04-05T17:31Z", id="no seconds"),
    pytest.param("2018-04-05T17:31:00+0100", id="an offset without colon"),
    pytest.param("2018-04-05T17:31:00+01", id="an offset of hours only"),
    pytest.param("2018-04-05T17:31:00+01:00:00", id="an offset with seconds"),
    pytest.param("2018-04-05T17:31:00.Z", id="a fraction without digits"),
    pytest.param("2018-04-05T17:31:00,5Z", id="a decimal comma"),
    pytest.param("20180405T173100Z", id="the basic format"),
    pytest.param("2018-W14-4T17:31:00Z", id="a week date"),
    pytest.param("2018-095T17:31:00Z", id="an ordinal date"),
    pytest.param("2018-04-05", id="a date alone"),
    pytest.param("2018-04-05T24:00:00Z", id="hour 24"),
    pytest.param("2018-02-30T17:31:00Z", id="a day the month does not have"),
    pytest.param("2018-04-05T17:31:00+24:00", id="an offset of 24 hours"),
    pytest.param("\u0662018-04-05T17:31:00Z", id="a digit that is not ASCII"),
    pytest.param(" 2018-04-05T17:31:00Z", id="a leading space"),
    pytest.param(1522949460, id="a number"),
])
def test_time_that_is_not_rfc3339_with_offset_is_refused(text: Any) -> None:
    refused(valid(time=text), "'time' must be an RFC 3339 date-time with a time offset")


def test_a_leap_second_is_refused_saying_so() -> None:
    refused(valid(time="2016-12-31T23:59:60Z"), "leap second")


# -- empty optional attributes ------------------------------------------------------------------
@pytest.mark.parametrize(("name", "rule"), [
    ("subject", "'subject' must be a non-empty String"),
    ("datacontenttype", "'datacontenttype' must be a non-empty media type"),
    ("dataschema", "'dataschema' must be a non-empty absolute URI"),
])
def test_an_empty_optional_attribute_is_refused(name: str, rule: str) -> None:
    refused(valid(**{name: ""}), rule)


# -- dataschema: an absolute URI; source: a URI-reference (RFC 3986) -----------------------------
@pytest.mark.parametrize("uri", ["https://example.com/schemas/order.json", "urn:example:order:v2",
                                 "https://example.com/s.json#/definitions/order", "http://[::1]:8080/s"])
def test_dataschema_takes_an_absolute_uri(uri: str) -> None:
    assert read(valid(dataschema=uri)).dataschema == uri


@pytest.mark.parametrize("uri", ["/schemas/order.json", "order.json", "//example.com/s", "#order", "?v=2",
                                 "https://exa mple.com/s", "https://example.com/<s>", "ht tp://x", "1http://x"])
def test_a_relative_or_malformed_dataschema_is_refused(uri: str) -> None:
    refused(valid(dataschema=uri), "'dataschema' must be a non-empty absolute URI")


@pytest.mark.parametrize("uri", [  # the spec's examples first
    "https://github.com/cloudevents", "mailto:cncf-wg-serverless@lists.cncf.io",
    "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", "/cloudevents/spec/pull/123", "1-555-123-4567",
    "cloudevents/spec", "#fragment", "//authority/path", "/swell/shop", "http://[2001:db8::1]/x", "a%20b",
    "http://x/?q=a/b#c?d"])
def test_source_takes_a_uri_reference(uri: str) -> None:
    assert read(valid(source=uri)).source == uri


@pytest.mark.parametrize("uri", ["a b", "/swell/my shop", "/café", "%zz", "%2", "/a<b>", "a\\b", '/a"b',
                                 "http://[zz]/", "http://[::1", "http://x:8x/", "/{x}", "a|b", "a^b", "a`b",
                                 "http://[fe80::1%25eth0]/"])
def test_a_source_that_is_not_a_uri_reference_is_refused(uri: str) -> None:
    refused(valid(source=uri), "'source' must be a non-empty URI-reference")


# -- datacontenttype: a media type (RFC 2046) ---------------------------------------------------
@pytest.mark.parametrize("media_type", ["application/json", "application/cloudevents+json",
                                        "text/plain; charset=utf-8", 'text/plain;charset="utf-8"',
                                        "TEXT/Plain; CharSet=utf-8", "application/vnd.apache.thrift.binary",
                                        "multipart/form-data; boundary=x; a=b"])
def test_datacontenttype_takes_a_media_type(media_type: str) -> None:
    assert read(valid(datacontenttype=media_type)).datacontenttype == media_type


@pytest.mark.parametrize("media_type", ["xyz", "text/", "/json", "text plain", "text/plain;",
                                        "text/plain; charset", "text/plain; charset=",
                                        "text/plain, text/html", "text/pl ain", "application/json\n"])
def test_a_datacontenttype_that_is_not_a_media_type_is_refused(media_type: str) -> None:
    refused(valid(datacontenttype=media_type), "'datacontenttype' must be a non-empty media type")


def test_data_of_a_non_json_media_type_must_be_a_string() -> None:
    assert read(valid(datacontenttype="text/plain", data="hi")).data == "hi"
    assert read(valid(datacontenttype="application/problem+json", data={"a": 1})).data == {"a": 1}
    refused(valid(datacontenttype="text/plain", data={"a": 1}), "must be a string or bytes")


# -- extension attributes: names of a-z and 0-9, values in the type system ------------------------
@pytest.mark.parametrize("name", ["MyExtension", "my.extension", "my-ext", "my_ext", "ext!", "\u00fcnicode",
                                  "", "Ext1", "e x"])
def test_an_extension_name_other_than_lower_case_letters_and_digits_is_refused(name: str) -> None:
    refused(valid(**{name: "x"}), "name must be lower-case letters a-z and digits 0-9")


@pytest.mark.parametrize("value", [1.5, 1.0, -0.0, 1e3, {"a": 1}, {}, [1], [], 2**31, -(2**31) - 1, 2**63],
                         ids=repr)
def test_an_extension_value_outside_the_type_system_is_refused(value: Any) -> None:
    refused(valid(ext=value), "'ext' must be in the CloudEvents 1.0 type system")


@pytest.mark.parametrize("value", [2**31 - 1, -(2**31), 0, True, False, "text", "", "2018-04-05T17:31:00Z"],
                         ids=repr)
def test_an_extension_value_in_the_type_system_is_kept(value: Any) -> None:
    assert read(valid(ext=value)).extensions == {"ext": value}


def test_a_null_extension_is_unset() -> None:
    assert read(valid(ext=None, other=1) | {"ext": None}).extensions == {"other": 1}


# -- String: no control characters, noncharacters or lone surrogates -----------------------------
BAD_CHARS = ["\x00", "\n", "\t", "\x1f", "\x7f", "\x85", "\x9f", "\ufdd0", "\ufffe", "\uffff", "\U0001fffe",
             "\U0010ffff"]
STRING_ATTRIBUTES = ["id", "type", "subject", "key", "idempotencykey", "correlationid", "traceparent", "ext"]


@pytest.mark.parametrize("char", BAD_CHARS, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("name", STRING_ATTRIBUTES)
def test_a_string_with_a_control_character_or_noncharacter_is_refused(name: str, char: str) -> None:
    refused(valid(**{name: f"a{char}b"}), f"'{name}' must be a String")


@pytest.mark.parametrize("name", ["id", "source", "type", "subject", "key", "correlationid", "ext"])
def test_a_control_character_is_refused_in_a_large_event_too(name: str) -> None:
    big = {f"field{i}": "x" * 20 for i in range(40)}  # past the size where the reader splits off data
    value = "/a\nb" if name == "source" else "a\nb"
    refused(valid(**{name: value}, data=big), f"'{name}' must be a")


@pytest.mark.parametrize("text", ["caf\u00e9", "\u00a0", "\u200d", "\u2028", "\ue000", "\U0001f30e",
                                  "\ud83c\udf0e".encode("utf-16", "surrogatepass").decode("utf-16")])
def test_a_string_with_other_characters_is_kept(text: str) -> None:
    event = read(valid(subject=text, key=text, ext=text))
    assert (event.subject, event.key, event.extensions["ext"]) == (text, text, text)


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(PayloadError):
        Event.from_json(b'{"specversion":"1.0","id":"\\ud800","source":"/s","type":"t"}')
    with pytest.raises(PayloadError, match="'id' must be a String"):
        Event.from_dict(valid(id="a\ud800"))


# -- a member appears once ----------------------------------------------------------------------
BIG_DATA = json.dumps({f"field{i}": "x" * 20 for i in range(40)}, separators=(",", ":"))
HEAD = '{"specversion":"1.0","id":"a","source":"/s","type":"t"'


@pytest.mark.parametrize("raw", [
    HEAD + ',"id":"b"}',
    HEAD + ',"id":"a"}',  # even with the same value
    HEAD + ',"specversion":"1.0"}',
    HEAD + ',"data":1,"data":2}',
    HEAD + ',"data_base64":"eA==","data_base64":"eA=="}',
    HEAD + ',"ext":1,"ext":2}',
    HEAD + ',"\\u0069d":"b"}',  # the same name, escaped
    HEAD + ',"time":"2018-04-05T17:31:00Z","time":"2018-04-05T17:31:00Z"}',
    '{ "specversion": "1.0", "id": "a", "source": "/s", "type": "t", "type": "u" }',
    HEAD + ',"data":' + BIG_DATA + ',"id":"b"}',  # after a large data
    HEAD + ',"id":"b","data":' + BIG_DATA + "}",  # before it
    HEAD + ',"data":' + BIG_DATA + ',"data":' + BIG_DATA + "}",
], ids=["id", "id-same-value", "specversion", "data", "data_base64", "extension", "escaped-name", "time",
        "spaced", "after-large-data", "before-large-data", "large-data"])
def test_a_member_that_appears_twice_is_refused(raw: str) -> None:
    refused(raw.encode(), "appears twice")


def test_a_name_twice_inside_data_is_data() -> None:
    raw = HEAD + ',"data":{"a":1,"a":2}}'  # CloudEvents says nothing of data's insides; JSON: last wins
    assert Event.from_json(raw).data == {"a": 2}


# -- the fast path and the general path agree ----------------------------------------------------
strings = st.one_of(st.sampled_from(["o-1", "", "caf\u00e9", "a\nb", "a\x7fb", "\ufffe", "\u00a0", "a b",
                                     "/swell/shop", "https://example.com/s", "text/plain",
                                     "application/json"]),
                    st.text(max_size=8))
times = st.sampled_from(["2018-04-05T17:31:00Z", "2018-04-05t17:31:00z", "2018-04-05T17:31:00.123456+02:00",
                         "2018-04-05T17:31:00", "2018-04-05 17:31:00Z", "2018-04-05T17:31:00+0200", "x"])
attributes = st.fixed_dictionaries({}, optional={
    "id": strings, "source": strings, "type": strings, "subject": strings, "time": times,
    "datacontenttype": strings, "dataschema": strings, "key": strings, "correlationid": strings,
    "traceparent": strings,
    "ext": st.one_of(strings, st.integers(), st.booleans(), st.floats(allow_nan=False)),
    "data": st.one_of(st.none(), strings, st.dictionaries(st.text(max_size=3), st.integers(), max_size=3)),
})


def outcome(raw: bytes) -> tuple[str, Any]:
    try:
        return ("read", Event.from_json(raw))
    except PayloadError:
        return ("refused", None)


@settings(max_examples=300, database=None, deadline=None)
@given(obj=attributes, large=st.booleans())
def test_the_fast_and_the_general_path_agree(obj: dict[str, Any], large: bool) -> None:
    obj = {"specversion": "1.0", **obj}
    if large and isinstance(obj.get("data"), dict):
        obj["data"] = {**obj["data"], "pad": "x" * 600}
    spaced, compact = forms(obj)

    assert outcome(spaced) == outcome(compact)


# -- what swell writes is valid -----------------------------------------------------------------
def built_events() -> dict[str, Event[Any]]:
    when = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    producer = Producer(cast(Broker, None), source="/swell/shop")
    return {
        "everything": Event(type="orders.created", source="/swell/shop", subject="o-1", time=when,
                            datacontenttype="application/json", dataschema="https://example.com/order.json",
                            key="customer-7", idempotencykey="charge-o-1", correlationid="c0ffee",
                            traceparent=TRACEPARENT, data={"id": "o-1", "amount": 12.5}),
        "binary": Event(type="t", source="/s", datacontenttype="application/octet-stream",
                        data=bytes(range(256))),
        "binary-untyped": Event(type="t", source="/s", data=b"\x00\xff"),
        "extensions": Event(type="t", source="/s", data=[1, "two"],
                            extensions={"tenant": "acme", "n": -(2**31), "flag": False}),
        "xml": Event(type="t", source="/s", datacontenttype="application/xml", data='<much wow="xml"/>'),
        "offset": Event(type="t", source="/s", time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(
            hours=-9, minutes=-30)))),
        "naive-time": Event(type="t", source="/s", time=datetime(2024, 1, 2, 3, 4, 5)),
        "offset-in-seconds": Event(type="t", source="/s", time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(
            timedelta(seconds=30)))),
        "unicode": Event(type="t", source="/s", subject="caf\u00e9 \U0001f30e",
                         key="\u043a\u043b\u044e\u0447", data={"name": "Zo\u00eb\n", "quote": '"'}),
        "large": Event(type="t", source="/s", data={f"k{i}": "v" * 30 for i in range(40)}),
        "producer": producer.event("orders", {"id": "o-1"}, subject="orders.eu", key="c-7", id="o-1",
                                   correlationid="c0ffee", idempotencykey="k", traceparent=TRACEPARENT,
                                   attributes={"tenant": "acme", "priority": 3}),
        "producer-minimal": producer.event("orders", {"id": "o-1"}),
    }


@pytest.mark.parametrize(("name", "event"), built_events().items(), ids=built_events().keys())
def test_events_swell_builds_pass_the_strict_reader(name: str, event: Event[Any]) -> None:
    raw = event.to_json()

    back = Event.from_json(raw)

    assert json.loads(raw) == event.to_dict()
    assert back.to_json() == raw
    if event.time is not None:
        assert back.time == (event.time if event.time.tzinfo else event.time.replace(tzinfo=UTC))
    assert back.replace(time=event.time) == event


@pytest.mark.parametrize(("changes", "rule"), [
    ({"subject": ""}, "'subject' must be a non-empty String"),
    ({"type": ""}, "'type' must be a non-empty String"),
    ({"id": ""}, "'id' must be a non-empty String"),
    ({"source": "/my shop"}, "'source' must be a non-empty URI-reference"),
    ({"dataschema": "order.json"}, "'dataschema' must be a non-empty absolute URI"),
    ({"datacontenttype": "json"}, "'datacontenttype' must be a non-empty media type"),
    ({"key": "a\nb"}, "'key' must be a String"),
    ({"correlationid": "\x00"}, "'correlationid' must be a String"),
    ({"extensions": {"n": 2**31}}, "'n' must be in the CloudEvents 1.0 type system"),
    ({"extensions": {"ratio": 0.5}}, "'ratio' must be in the CloudEvents 1.0 type system"),
    ({"extensions": {"Tenant": "acme"}}, "name must be lower-case letters"),
    ({"extensions": {"subject": "x"}}, "is a CloudEvents or swell attribute"),
    ({"datacontenttype": "text/plain", "data": {"a": 1}}, "must be a string or bytes"),
    ({"time": "2024-01-02"}, "'time' must be an RFC 3339"),
])
def test_swell_refuses_to_write_an_invalid_event(changes: dict[str, Any], rule: str) -> None:
    event: Event[Any] = Event(**{"type": "t", "source": "/s", **changes})

    with pytest.raises(PayloadError, match=rule):
        event.to_json()
    with pytest.raises(PayloadError, match=rule):
        event.to_dict()


@pytest.mark.parametrize(("name", "value", "rule"), [
    ("source", {"a": 1}, "'source' must be a non-empty URI-reference"),
    ("source", 5, "'source' must be a non-empty URI-reference"),
    ("type", ["t"], "'type' must be a non-empty String"),
    ("subject", {}, "'subject' must be a non-empty String"),
    ("datacontenttype", ["text/plain"], "'datacontenttype' must be a non-empty media type"),
    ("dataschema", {"$ref": "x"}, "'dataschema' must be a non-empty absolute URI"),
    ("key", 5, "'key' must be a String"),
    ("time", {"t": 1}, "'time' must be an RFC 3339"),
])
def test_an_attribute_of_another_json_type_is_refused(name: str, value: Any, rule: str) -> None:
    refused(valid(**{name: value}), rule)
