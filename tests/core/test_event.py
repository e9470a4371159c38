"""The event envelope: CloudEvents 1.0 in JSON structured mode (the spec's examples, and errors)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swell import Event, PayloadError

THRIFT_BYTES = bytes(range(256)) + b"\x00\x01thrift"

# The three examples of the CloudEvents JSON Event Format v1.0, section 3 (a real base64 string in
# the first; the null-valued attributes of the spec's examples in the other two).
SPEC_BINARY = """{
    "specversion" : "1.0",
    "type" : "com.example.someevent",
    "source" : "/mycontext",
    "id" : "A234-1234-1234",
    "time" : "2018-04-05T17:31:00Z",
    "comexampleextension1" : "value",
    "comexampleothervalue" : 5,
    "datacontenttype" : "application/vnd.apache.thrift.binary",
    "data_base64" : "BASE64"
}""".replace("BASE64", base64.b64encode(THRIFT_BYTES).decode())

SPEC_JSON = """{
    "specversion" : "1.0",
    "type" : "com.example.someevent",
    "source" : "/mycontext",
    "subject": null,
    "id" : "C234-1234-1234",
    "time" : "2018-04-05T17:31:00Z",
    "comexampleextension1" : "value",
    "comexampleothervalue" : 5,
    "unsetextension": null,
    "datacontenttype" : "application/json",
    "data" : {
        "appinfoA" : "abc",
        "appinfoB" : 123,
        "appinfoC" : true
    }
}"""

SPEC_XML = r"""{
    "specversion" : "1.0",
    "type" : "com.example.someevent",
    "source" : "/mycontext",
    "id" : "B234-1234-1234",
    "time" : "2018-04-05T17:31:00Z",
    "comexampleextension1" : "value",
    "comexampleothervalue" : 5,
    "unsetextension": null,
    "datacontenttype" : "application/xml",
    "data" : "<much wow=\"xml\"/>"
}"""

SPEC_EXAMPLES = pytest.mark.parametrize("raw", [SPEC_BINARY, SPEC_JSON, SPEC_XML],
                                        ids=["binary", "json", "xml"])


def without_nulls(obj: dict[str, Any]) -> dict[str, Any]:
    """A null attribute is the same as an absent one (JSON format 1.0, section 2.2)."""
    return {k: v for k, v in obj.items() if v is not None}


def valid(**changes: Any) -> dict[str, Any]:
    """A minimal valid event object with some members changed (``None`` removes a member)."""
    obj: dict[str, Any] = {"specversion": "1.0", "id": "e-1", "source": "/test", "type": "t.x"}
    obj.update(changes)
    return without_nulls(obj)


# -- the spec's examples ---------------------------------------------------------------------------
@SPEC_EXAMPLES
def test_spec_example_reads_and_writes_back(raw: str) -> None:
    event = Event.from_json(raw)

    assert event.to_dict() == without_nulls(json.loads(raw))


@SPEC_EXAMPLES
def test_spec_example_survives_a_trip_over_the_wire(raw: str) -> None:
    event = Event.from_json(raw)

    assert json.loads(event.to_json()) == without_nulls(json.loads(raw))
    assert Event.from_json(event.to_json()) == event


def test_spec_binary_example_gives_the_decoded_bytes() -> None:
    event = Event.from_json(SPEC_BINARY)

    assert event.data == THRIFT_BYTES
    assert event.datacontenttype == "application/vnd.apache.thrift.binary"
    assert not event.is_json
    assert event.extensions == {"comexampleextension1": "value", "comexampleothervalue": 5}


def test_spec_json_example_gives_the_data_object_and_drops_nulls() -> None:
    event = Event.from_json(SPEC_JSON)

    assert event.data == {"appinfoA": "abc", "appinfoB": 123, "appinfoC": True}
    assert event.subject is None
    assert "unsetextension" not in event.extensions
    assert event.is_json
    assert event.time == datetime(2018, 4, 5, 17, 31, tzinfo=UTC)


def test_spec_xml_example_keeps_the_string_data() -> None:
    event = Event.from_json(SPEC_XML)

    assert event.data == '<much wow="xml"/>'
    assert not event.is_json
    assert event.id == "B234-1234-1234"


@pytest.mark.parametrize("attribute", ["subject", "time", "datacontenttype", "dataschema", "key",
                                       "idempotencykey", "correlationid", "traceparent"])
def test_a_null_optional_attribute_is_the_same_as_absent(attribute: str) -> None:
    raw = json.dumps({**valid(data={"a": 1}), attribute: None})

    assert Event.from_json(raw) == Event.from_dict(valid(data={"a": 1}))


# -- swell's own extensions and time -------------------------------------------------------------
def test_swell_extensions_round_trip_as_top_level_members() -> None:
    event = Event(type="orders.created", source="/shop", subject="o-1", key="customer-7",
                  idempotencykey="charge-o-1", correlationid="c0ffee",
                  traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                  data={"id": "o-1"})

    wire = json.loads(event.to_json())
    back = Event.from_json(event.to_json())

    assert back == event
    assert back.extensions == {}
    assert {k: wire[k] for k in ("key", "idempotencykey", "correlationid", "traceparent")} == {
        "key": "customer-7", "idempotencykey": "charge-o-1", "correlationid": "c0ffee",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    assert wire["specversion"] == "1.0"


def test_other_extensions_round_trip() -> None:
    event: Event[Any] = Event(type="t", source="/s", extensions={"comexampleothervalue": 5, "tenant": "acme"})

    back = Event.from_json(event.to_json())

    assert back.extensions == {"comexampleothervalue": 5, "tenant": "acme"}
    assert json.loads(event.to_json())["tenant"] == "acme"


@pytest.mark.parametrize("data", [{"a": [1, 2]}, None, "text", 3, b"\x00bytes"])
def test_an_event_with_extensions_is_written_in_wire_order(data: Any) -> None:
    """Attributes, then extensions, then data: what ``to_dict`` gives, encoded."""
    event: Event[Any] = Event(type="t", source="/s", subject="sub", key="k", data=data,
                              time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                              extensions={"pglsn": "0/1A", "pgxid": 12})
    raw = event.to_json()
    assert raw == json.dumps(event.to_dict(), separators=(",", ":")).encode()
    tail = ["pglsn", "pgxid"]
    if data is not None:
        tail.append("data_base64" if isinstance(data, bytes) else "data")
    assert list(json.loads(raw))[-len(tail):] == tail
    assert Event.from_json(raw) == event


@pytest.mark.parametrize("when", [datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                                  datetime(2024, 1, 2, 3, 4, 5)],  # naive: taken as UTC
                         ids=["utc", "naive"])
def test_time_is_written_in_utc_with_z(when: datetime) -> None:
    event: Event[Any] = Event(type="t", source="/s", time=when)

    wire = event.to_dict()

    assert wire["time"] == "2024-01-02T03:04:05Z"
    assert Event.from_dict(wire).time == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_time_with_an_offset_keeps_its_instant() -> None:
    when = datetime(2024, 1, 2, 5, 4, 5, 123000, tzinfo=timezone(timedelta(hours=2)))

    back = Event.from_json(Event(type="t", source="/s", time=when).to_json())

    assert back.time == when


def test_an_event_gets_a_fresh_id() -> None:
    a: Event[Any] = Event(type="t", source="/s")
    b: Event[Any] = Event(type="t", source="/s")

    assert a.id and b.id and a.id != b.id


# -- what is not a valid event -------------------------------------------------------------------
@pytest.mark.parametrize("specversion", ["0.3", "1", 1.0, None])
def test_a_specversion_other_than_1_0_is_refused(specversion: Any) -> None:
    with pytest.raises(PayloadError, match="specversion"):
        Event.from_dict(valid(specversion=specversion))


@pytest.mark.parametrize("attribute", ["id", "source", "type"])
@pytest.mark.parametrize("value", [None, "", 5], ids=["missing", "empty", "number"])
def test_a_missing_required_attribute_is_refused(attribute: str, value: Any) -> None:
    with pytest.raises(PayloadError, match=attribute):
        Event.from_dict(valid(**{attribute: value}))


def test_a_non_string_attribute_is_refused() -> None:
    with pytest.raises(PayloadError, match="subject"):
        Event.from_dict(valid(subject=5))


def test_data_and_data_base64_together_are_refused() -> None:
    with pytest.raises(PayloadError, match="data_base64"):
        Event.from_dict(valid(data={"a": 1}, data_base64=base64.b64encode(b"x").decode()))


@pytest.mark.parametrize("bad", ["not base64!", "QUJ", 17], ids=["chars", "padding", "number"])
def test_bad_base64_is_refused(bad: Any) -> None:
    with pytest.raises(PayloadError, match="base64"):
        Event.from_dict(valid(data_base64=bad))


@pytest.mark.parametrize("raw", ["[1, 2]", '"an event"', "5", "null", "true"])
def test_json_that_is_not_an_object_is_refused(raw: str) -> None:
    with pytest.raises(PayloadError, match="object"):
        Event.from_json(raw)


@pytest.mark.parametrize("raw", [b'{"specversion": "1.0", "id":', b"\xff\xfe", b"", b"{'id': 1}"])
def test_malformed_json_is_refused(raw: bytes) -> None:
    with pytest.raises(PayloadError, match="JSON"):
        Event.from_json(raw)


# -- any JSON data makes the trip ----------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, database=None)
@given(data=st.dictionaries(st.text(), json_values, max_size=6))
def test_any_json_object_data_round_trips(data: dict[str, Any]) -> None:
    event = Event(type="t", source="/s", data=data)

    back = Event.from_json(event.to_json())

    assert back.data == data
    assert back.to_json() == event.to_json()  # same types too: 1 stays 1, 1.0 stays 1.0
