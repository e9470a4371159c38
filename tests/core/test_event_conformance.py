"""The public conformance cases of the CloudEvents project, JSON event format, re-expressed here.

Sources (github.com/cloudevents/conformance): ``format/json/valid-events.json`` and
``format/json/invalid-events.json`` (branch format-tests; the "golden" sample events are described in
``format/README.md``), and the structured-mode events of ``yaml/v1.0/v1_minimum.yaml``, ``yaml/v1.yaml``
and ``features/*.feature``. Each case keeps its id and says the rule it exercises; each is read in
two forms, as another writer would send it (spaced, the general path) and in the compact wire
order swell writes (the fast path when the envelope allows), and both must give the same answer.
The batch cases do not apply: swell has no JSON batch (``application/cloudevents-batch+json``) reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from swell import Event, PayloadError

WIRE_ORDER = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema",
              "key", "idempotencykey", "correlationid", "traceparent")
MINIMAL = {"specversion": "1.0", "id": "minimal", "type": "io.cloudevents.test",
           "source": "https://cloudevents.io"}
SAMPLE_TIME = datetime(2018, 4, 5, 17, 31, tzinfo=UTC)
MEDIA_TYPE_RULE = "'datacontenttype' must be a non-empty media type per RFC 2046"
CONFORMANCE_SOURCE = "//github.com/cloudevents/cloudeventsconformance/yaml/v1.yaml"


def spaced(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=2)


def compact(obj: dict[str, Any]) -> bytes:
    """The object in swell's wire order (attributes, extensions, data last), no spaces."""
    ordered = {k: obj[k] for k in WIRE_ORDER if k in obj}
    ordered.update((k, v) for k, v in obj.items() if k not in ordered and not k.startswith("data"))
    ordered.update((k, v) for k, v in obj.items() if k.startswith("data") and k not in ordered)
    return msgspec.json.encode(ordered)


@dataclass
class Valid:
    case: str
    what: str
    event: dict[str, Any]
    expect: dict[str, Any] = field(default_factory=dict)  # attributes of the Event read


@dataclass
class Invalid:
    case: str
    rule: str  # a regex the PayloadError must match: the rule it names
    event: dict[str, Any]


VALID = [
    # format/json/valid-events.json
    Valid("validMinimal", "only the required attributes", dict(MINIMAL),
          {"id": "minimal", "subject": None, "time": None, "data": None, "extensions": {}}),
    Valid("validMinimalWithNullForOptional", "null is the same as absent (JSON format 2.2)",
          {**MINIMAL, "datacontenttype": None, "dataschema": None, "subject": None, "time": None},
          {"datacontenttype": None, "dataschema": None, "subject": None, "time": None}),
    Valid("validAllCoreAttributes", "every core attribute, datacontenttype without data",
          {**MINIMAL, "id": "allCore", "datacontenttype": "text/plain",
           "dataschema": "https://cloudevents.io/dataschema", "subject": "tests",
           "time": "2018-04-05T17:31:00Z"},
          {"datacontenttype": "text/plain", "dataschema": "https://cloudevents.io/dataschema",
           "subject": "tests", "time": SAMPLE_TIME, "data": None}),
    Valid("validMinimalWithTimeUtc", "time: RFC 3339 with Z",
          {**MINIMAL, "id": "minimalWithTime", "time": "2018-04-05T17:31:00Z"}, {"time": SAMPLE_TIME}),
    Valid("validMinimalWithTimeToNanosecondsUtc", "time: any number of fraction digits",
          {**MINIMAL, "id": "minimalWithTime", "time": "2018-04-05T17:31:00.000000000Z"},
          {"time": SAMPLE_TIME}),
    Valid("validMinimalWithTimeUsingPositiveOffset", "time: an offset is the same instant",
          {**MINIMAL, "id": "minimalWithTime", "time": "2018-04-05T18:31:00+01:00"}, {"time": SAMPLE_TIME}),
    Valid("validMinimalWithTimeUsingNegativeOffset", "time: a negative offset",
          {**MINIMAL, "id": "minimalWithTime", "time": "2018-04-05T16:31:00-01:00"}, {"time": SAMPLE_TIME}),
    Valid("validRelativeSource", "source is a URI-reference: a fragment alone is one",
          {"id": "minimalWithRelativeSource", "specversion": "1.0", "type": "io.cloudevents.test",
           "source": "#fragment"}, {"source": "#fragment"}),
    Valid("validSimpleTextData", "string data of a non-JSON datacontenttype",
          {**MINIMAL, "id": "simpleTextData", "datacontenttype": "text/plain", "data": "Simple text"},
          {"data": "Simple text", "datacontenttype": "text/plain"}),
    Valid("validAllExtensionTypes", "an extension of each type (kept as JSON gives them: swell "
          "has no typed extension definitions, which the case allows)",
          {**MINIMAL, "id": "allExtensionTypes", "extinteger": 10, "extboolean": True, "extstring": "text",
           "exturi": "https://cloudevents.io", "exturiref": "//authority/path",
           "exttimestamp": "2023-03-31T15:12:00Z", "extbinary": "TWE="},
          {"extensions": {"extinteger": 10, "extboolean": True, "extstring": "text",
                          "exturi": "https://cloudevents.io", "exturiref": "//authority/path",
                          "exttimestamp": "2023-03-31T15:12:00Z", "extbinary": "TWE="}}),
    # yaml/v1.0/v1_minimum.yaml, as structured-mode JSON events
    Valid("conformance-0001", "datacontenttype with a parameter, text data",
          {"specversion": "1.0", "type": "io.cloudevents.minimum", "id": "conformance-0001",
           "source": CONFORMANCE_SOURCE, "datacontenttype": "text/plain; charset=us-ascii",
           "data": "Hello, World!\n"}, {"data": "Hello, World!\n", "source": CONFORMANCE_SOURCE}),
    Valid("conformance-0002", "text data outside ASCII",
          {"specversion": "1.0", "type": "io.cloudevents.minimum", "id": "conformance-0002",
           "source": CONFORMANCE_SOURCE, "datacontenttype": "text/plain; charset=utf-8",
           "data": "Hello, \U0001f30e!\n"}, {"data": "Hello, \U0001f30e!\n"}),
    Valid("conformance-0003", "JSON data that is a string",
          {"specversion": "1.0", "type": "io.cloudevents.minimum", "id": "conformance-0003",
           "source": CONFORMANCE_SOURCE, "datacontenttype": "application/json; charset=utf-8",
           "data": "Hello, \U0001f30e!"}, {"data": "Hello, \U0001f30e!"}),
    Valid("conformance-0004", "JSON data that is an object",
          {"specversion": "1.0", "type": "io.cloudevents.minimum", "id": "conformance-0004",
           "source": CONFORMANCE_SOURCE, "datacontenttype": "application/json; charset=utf-8",
           "data": {"msg": "Hello, \U0001f30e!"}}, {"data": {"msg": "Hello, \U0001f30e!"}}),
    Valid("conformance-0005", "JSON data that is an array",
          {"specversion": "1.0", "type": "io.cloudevents.minimum", "id": "conformance-0005",
           "source": CONFORMANCE_SOURCE, "datacontenttype": "application/json; charset=utf-8",
           "data": ["Hello", "\U0001f30e!"]}, {"data": ["Hello", "\U0001f30e!"]}),
    Valid("conformance-0006", "XML data as a string",
          {"specversion": "1.0", "type": "io.cloudevents.minimum", "id": "conformance-0006",
           "source": CONFORMANCE_SOURCE, "datacontenttype": "application/xml; charset=utf-8",
           "data": "<msg>Hello, \U0001f30e!</msg>\n"}, {"data": "<msg>Hello, \U0001f30e!</msg>\n"}),
    # yaml/v1.yaml (structured), features/http-protocol-binding.feature (structured)
    Valid("v1-structured", "string extensions, one holding JSON text (without the newline a YAML "
          "block scalar adds: a String holds no control character)",
          {"specversion": "1.0", "type": "com.example.someevent", "time": "2018-04-05T03:56:24Z",
           "id": "4321-4321-4321", "source": "/mycontext/subcontext", "comexampleextension1": "value",
           "comexampleextension2": '{"othervalue": 5}', "data": {"world": "hello"}},
          {"extensions": {"comexampleextension1": "value", "comexampleextension2": '{"othervalue": 5}'},
           "data": {"world": "hello"}}),
    Valid("http-structured", "the structured-mode body of the HTTP binding feature",
          {"specversion": "1.0", "type": "com.example.someevent", "time": "2018-04-05T03:56:24Z",
           "id": "1234-1234-1234", "source": "/mycontext/subcontext", "datacontenttype": "application/json",
           "data": {"message": "Hello World!"}},
          {"data": {"message": "Hello World!"}, "time": datetime(2018, 4, 5, 3, 56, 24, tzinfo=UTC)}),
]

INVALID = [
    # format/json/invalid-events.json
    Invalid("invalidNoSpecVersion", "'specversion' is required",
            {"id": "invalid", "type": "io.cloudevents.test", "source": "https://cloudevents.io"}),
    Invalid("invalidNoId", "'id' must be a non-empty String",
            {"specversion": "1.0", "type": "io.cloudevents.test", "source": "https://cloudevents.io"}),
    Invalid("invalidNoType", "'type' must be a non-empty String",
            {"specversion": "1.0", "id": "invalid", "source": "https://cloudevents.io"}),
    Invalid("invalidNoSource", "'source' must be a non-empty URI-reference",
            {"specversion": "1.0", "id": "invalid", "type": "io.cloudevents.test"}),
    Invalid("invalidTimeGarbage", "'time' must be an RFC 3339", {**MINIMAL, "time": "lunchtime"}),
    Invalid("invalidTimeToMinute", "'time' must be an RFC 3339", {**MINIMAL, "time": "2018-04-05T18:31Z"}),
    Invalid("invalidTimeOffsetX", "'time' must be an RFC 3339", {**MINIMAL, "time": "2018-04-05T18:31:00X"}),
    Invalid("invalidTimeOffsetOutOfRange", "'time' must be an RFC 3339",
            {**MINIMAL, "time": "2018-04-05T18:31:00+25:00"}),
    Invalid("invalidTimeOffsetNonInteger", "'time' must be an RFC 3339",
            {**MINIMAL, "time": "2018-04-05T18:31:00+xx:00"}),
    Invalid("invalidTimeOffsetHourOnly", "'time' must be an RFC 3339",
            {**MINIMAL, "time": "2018-04-05T18:31:00+05"}),
    Invalid("invalidEmptyId", "'id' must be a non-empty String", {**MINIMAL, "id": ""}),
    Invalid("invalidEmptyType", "'type' must be a non-empty String", {**MINIMAL, "type": ""}),
    Invalid("invalidEmptySource", "'source' must be a non-empty URI-reference", {**MINIMAL, "source": ""}),
    Invalid("invalidEmptySpecVersion", "'specversion' is required and must be '1.0'",
            {**MINIMAL, "specversion": ""}),
    Invalid("invalidUnknownSpecVersion", "'specversion' is required and must be '1.0'",
            {**MINIMAL, "specversion": "0.9"}),
    Invalid("invalidNonRfc2046DataContentType", MEDIA_TYPE_RULE, {**MINIMAL, "datacontenttype": "xyz"}),
    Invalid("invalidEmptyDataContentType", MEDIA_TYPE_RULE,
            {**MINIMAL, "datacontenttype": ""}),
    Invalid("invalidEmptyDataSchema", "'dataschema' must be a non-empty absolute URI",
            {**MINIMAL, "dataschema": ""}),
    Invalid("invalidEmptySubject", "'subject' must be a non-empty String", {**MINIMAL, "subject": ""}),
    Invalid("invalidNumericId", "'id' must be a non-empty String", {**MINIMAL, "id": 25}),
    Invalid("invalidObjectId", "'id' must be a non-empty String", {**MINIMAL, "id": {"xyz": "abc"}}),
    Invalid("invalidCapitalizedExtension", "name must be lower-case letters a-z and digits 0-9",
            {**MINIMAL, "MyExtension": "bad"}),
    Invalid("invalidPunctuatedExtension", "name must be lower-case letters a-z and digits 0-9",
            {**MINIMAL, "my.extension": "bad"}),
    Invalid("invalidNonIntegerExtensionValue", "name must be lower-case letters a-z and digits 0-9",
            {**MINIMAL, "my.extension": 1.5}),  # the case as published: its name is refused first
    Invalid("invalidBothDataAndDataBase64", "'data' or 'data_base64', not both",
            {**MINIMAL, "data": "text", "data_base64": "eyAieHl6IjogMTIzIH0="}),
]


@pytest.mark.parametrize("case", VALID, ids=[f"{c.case}: {c.what}" for c in VALID])
def test_valid_event_decodes(case: Valid) -> None:
    read = [Event.from_json(spaced(case.event)), Event.from_json(compact(case.event))]

    assert read[0] == read[1]
    for name, want in case.expect.items():
        assert getattr(read[0], name) == want, name
    assert Event.from_json(read[0].to_json()) == read[0]  # and swell writes it back validly


@pytest.mark.parametrize("case", INVALID, ids=[f"{c.case}: {c.rule}" for c in INVALID])
def test_invalid_event_is_refused_naming_the_rule(case: Invalid) -> None:
    for raw in (spaced(case.event), compact(case.event)):
        with pytest.raises(PayloadError, match=case.rule):
            Event.from_json(raw)
