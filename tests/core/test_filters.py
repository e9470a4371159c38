"""Topic filters: EventBridge content patterns, each operator as documented (routing keys: test_subjects)."""

from __future__ import annotations

import pickle
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swell.core.errors import ConfigError
from swell.core.filters import Pattern, PatternError

# The example event of the event-ruler README, as a CloudEvent with its detail as data.
EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "ddddd4-aaaa-7777-4444-345dd43cc333",
    "type": "EC2 Instance State-change Notification",
    "source": "aws.ec2",
    "time": "2017-10-02T16:24:49Z",
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-000000aaaaaa00000"],
    "data": {
        "c-count": 5,
        "d-count": 3,
        "x-limit": 301.8,
        "source-ip": "10.0.0.33",
        "instance-id": "i-000000aaaaaa00000",
        "state": "running",
    },
}

# (pattern, event, expected). Each event is small, so the case says what it is about.
CASES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    # --- exact values
    ({"source": ["aws.ec2"]}, EVENT, True),
    ({"source": ["aws.ec3"]}, EVENT, False),
    ({"source": ["aws.ec2", "aws.s3"]}, {"source": "aws.s3"}, True),
    ({"source": ["AWS.EC2"]}, EVENT, False),
    ({"data": {"state": ["initializing", "running"]}}, EVENT, True),
    ({"source": ["aws.ec2"], "data": {"state": ["stopped"]}}, EVENT, False),  # keys are AND-ed
    ({"n": [5]}, {"n": 5}, True),
    ({"n": [5]}, {"n": 5.0}, True),
    ({"n": [5.0]}, {"n": 5}, True),
    ({"n": [5]}, {"n": "5"}, False),
    ({"n": ["5"]}, {"n": 5}, False),
    ({"n": [1]}, {"n": True}, False),
    ({"n": [True]}, {"n": 1}, False),
    ({"n": [0]}, {"n": False}, False),
    ({"n": [False]}, {"n": 0}, False),
    ({"n": [True]}, {"n": True}, True),
    ({"n": [True]}, {"n": False}, False),
    ({"n": [False]}, {"n": False}, True),
    ({"n": [True]}, {"n": "true"}, False),
    ({"n": [None]}, {"n": None}, True),
    ({"n": [None]}, {}, False),
    ({"n": [None]}, {"n": "null"}, False),
    ({"n": [None]}, {"n": 0}, False),
    ({"n": [1e3]}, {"n": 1000}, True),
    ({"n": [-0.0]}, {"n": 0}, True),
    ({"n": [""]}, {"n": ""}, True),
    ({"n": ["x"]}, {"n": {"x": 1}}, False),
    ({"n": [1]}, {"n": {"n": 1}}, False),
    # --- arrays in events: any element
    ({"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-000000aaaaaa00000"]}, EVENT, True),
    ({"tags": ["b", "z"]}, {"tags": ["a", "b", "c"]}, True),
    ({"tags": ["z"]}, {"tags": ["a", "b", "c"]}, False),
    ({"tags": [2]}, {"tags": ["2", 2.0]}, True),
    ({"tags": ["x"]}, {"tags": [["a"], ["x"]]}, True),  # nested arrays are crushed
    ({"tags": ["x"]}, {"tags": []}, False),
    ({"tags": [None]}, {"tags": [None, "a"]}, True),
    # --- arrays of objects are flattened along the path
    ({"employees": {"firstName": ["Anna"]}},
     {"employees": [{"firstName": "John"}, {"firstName": "Anna"}]}, True),
    ({"employees": {"firstName": ["Anna"]}},
     {"employees": [[{"firstName": "John"}, {"firstName": "Anna"}], [{"firstName": "Peter"}]]}, True),
    ({"employees": {"firstName": ["Zoe"]}}, {"employees": [{"firstName": "John"}]}, False),
    ({"a": {"b": {"c": [1]}}}, {"a": [{"b": [{"c": 2}, {"c": 1}]}]}, True),
    # ... with the fields of one sub-pattern in the same element (event-ruler's rulesForJSONEvent)
    ({"employees": {"firstName": ["Anna"], "lastName": ["Smith"]}},
     {"employees": [{"firstName": "John", "lastName": "Doe"}, {"firstName": "Anna", "lastName": "Smith"}]},
     True),
    ({"employees": {"firstName": ["Anna"], "lastName": ["Jones"]}},
     {"employees": [{"firstName": "Anna", "lastName": "Smith"}, {"firstName": "Peter", "lastName": "Jones"}]},
     False),
    # --- missing fields match no operator but exists: false
    ({"nope": ["x"]}, EVENT, False),
    ({"nope": [None]}, EVENT, False),
    ({"nope": [{"prefix": ""}]}, EVENT, False),
    ({"nope": [{"suffix": ""}]}, EVENT, False),
    ({"nope": [{"equals-ignore-case": "x"}]}, EVENT, False),
    ({"nope": [{"anything-but": "x"}]}, EVENT, False),
    ({"nope": [{"anything-but": [1, 2]}]}, EVENT, False),
    ({"nope": [{"anything-but": {"prefix": "x"}}]}, EVENT, False),
    ({"nope": [{"numeric": [">", 0]}]}, EVENT, False),
    ({"nope": [{"numeric": ["<", 0]}]}, EVENT, False),
    ({"nope": [{"wildcard": "*"}]}, EVENT, False),
    ({"nope": [{"cidr": "0.0.0.0/0"}]}, EVENT, False),
    ({"nope": [{"exists": True}]}, EVENT, False),
    ({"nope": [{"exists": False}]}, EVENT, True),
    ({"data": {"nope": {"deeper": ["x"]}}}, EVENT, False),
    ({"nope": {"deeper": [{"exists": False}]}}, EVENT, True),
    ({"nope": ["x", {"exists": False}]}, EVENT, True),  # conditions are OR-ed
    # --- exists
    ({"data": {"c-count": [{"exists": True}]}}, EVENT, True),
    ({"data": {"c-count": [{"exists": False}]}}, EVENT, False),
    ({"x": [{"exists": True}]}, {"x": None}, True),  # null is a value
    ({"x": [{"exists": False}]}, {"x": None}, False),
    ({"x": [{"exists": True}]}, {"x": False}, True),
    ({"x": [{"exists": True}]}, {"x": ""}, True),
    ({"x": [{"exists": True}]}, {"x": 0}, True),
    ({"x": [{"exists": True}]}, {"x": {"c1": 100}}, False),  # only leaves exist
    ({"x": [{"exists": False}]}, {"x": {"c1": 100}}, True),
    ({"x": [{"exists": True}]}, {"x": []}, False),
    ({"x": [{"exists": False}]}, {"x": []}, True),
    ({"x": [{"exists": True}]}, {"x": ["a"]}, True),
    ({"x": [{"exists": False}]}, {"x": ["a"]}, False),
    ({"x": [{"exists": True}]}, {"x": [{"a": 1}]}, False),
    ({"x": {"y": [{"exists": True}]}}, {"x": [{"z": 1}, {"y": 2}]}, True),
    ({"x": {"y": [{"exists": False}]}}, {"x": [{"z": 1}, {"y": 2}]}, False),  # absent from every element
    ({"x": {"y": [{"exists": False}]}}, {"x": [{"z": 1}, {"z": 2}]}, True),
    ({"x": {"y": [{"exists": False}]}}, {"x": []}, True),
    ({"x": {"y": [{"exists": False}]}}, {"x": 5}, True),
    ({"x": {"y": [{"exists": False}]}}, {"x": {"y": 5}}, False),
    ({"x": [{"exists": True}, {"exists": False}]}, {}, True),
    # --- prefix and suffix, with and without ignore-case
    ({"time": [{"prefix": "2017-10-02"}]}, EVENT, True),
    ({"time": [{"prefix": "2017-10-03"}]}, EVENT, False),
    ({"time": [{"prefix": ""}]}, EVENT, True),
    ({"n": [{"prefix": "5"}]}, {"n": 5}, False),  # strings only
    ({"n": [{"prefix": "t"}]}, {"n": True}, False),
    ({"source": [{"prefix": "AWS."}]}, EVENT, False),
    ({"source": [{"prefix": {"equals-ignore-case": "AWS."}}]}, EVENT, True),
    ({"source": [{"prefix": {"equals-ignore-case": "AWS.S"}}]}, EVENT, False),
    ({"source": [{"suffix": "ec2"}]}, EVENT, True),
    ({"source": [{"suffix": "EC2"}]}, EVENT, False),
    ({"source": [{"suffix": {"equals-ignore-case": "EC2"}}]}, EVENT, True),
    ({"source": [{"suffix": {"equals-ignore-case": "S3"}}]}, EVENT, False),
    ({"s": [{"prefix": {"equals-ignore-case": "aws."}}]}, {"s": "AWS.EC2"}, True),
    ({"s": [{"suffix": {"equals-ignore-case": "ec2"}}]}, {"s": "AWS.EC2"}, True),
    ({"s": [{"suffix": {"equals-ignore-case": "ec2"}}]}, {"s": 2}, False),
    ({"f": [{"suffix": ".png"}]}, {"f": ["a.jpg", "b.png"]}, True),
    ({"f": [{"suffix": ".png"}, {"prefix": "a"}]}, {"f": "a.jpg"}, True),
    # --- equals-ignore-case
    ({"source": [{"equals-ignore-case": "AWS.EC2"}]}, EVENT, True),
    ({"source": [{"equals-ignore-case": "aws.ec"}]}, EVENT, False),
    ({"s": [{"equals-ignore-case": "aws.ec2"}]}, {"s": "AWS.Ec2"}, True),
    ({"s": [{"equals-ignore-case": "STRASSE"}]}, {"s": "straße"}, True),  # full case folding
    ({"n": [{"equals-ignore-case": "1"}]}, {"n": 1}, False),
    # --- anything-but
    ({"data": {"state": [{"anything-but": "initializing"}]}}, EVENT, True),
    ({"data": {"state": [{"anything-but": "running"}]}}, EVENT, False),
    ({"data": {"state": [{"anything-but": ["stopped", "overloaded"]}]}}, EVENT, True),
    ({"data": {"state": [{"anything-but": ["stopped", "running"]}]}}, EVENT, False),
    ({"data": {"x-limit": [{"anything-but": 123}]}}, EVENT, True),
    ({"data": {"x-limit": [{"anything-but": 301.8}]}}, EVENT, False),
    ({"data": {"x-limit": [{"anything-but": [100, 200, 300]}]}}, EVENT, True),
    ({"data": {"c-count": [{"anything-but": [5.0, 6]}]}}, EVENT, False),
    ({"n": [{"anything-but": "5"}]}, {"n": 5}, True),  # strings do not exclude numbers
    ({"n": [{"anything-but": 5}]}, {"n": "5"}, True),  # nor numbers strings
    ({"n": [{"anything-but": 1}]}, {"n": True}, True),
    ({"n": [{"anything-but": "x"}]}, {"n": None}, True),
    ({"n": [{"anything-but": "x"}]}, {"n": {"a": "b"}}, False),  # an object is not a value
    ({"n": [{"anything-but": "x"}]}, {"n": []}, False),
    ({"n": [{"anything-but": "x"}]}, {"n": ["x", "y"]}, True),  # any element not excluded
    ({"n": [{"anything-but": "x"}]}, {"n": ["x", "x"]}, False),
    ({"n": [{"anything-but": ["x", "y"]}]}, {"n": ["x", "y"]}, False),
    ({"data": {"state": [{"anything-but": {"prefix": "init"}}]}}, EVENT, True),
    ({"data": {"state": [{"anything-but": {"prefix": "run"}}]}}, EVENT, False),
    ({"data": {"state": [{"anything-but": {"suffix": "ing"}}]}}, EVENT, False),
    ({"data": {"state": [{"anything-but": {"suffix": "ed"}}]}}, EVENT, True),
    ({"data": {"state": [{"anything-but": {"equals-ignore-case": "RUNNING"}}]}}, EVENT, False),
    ({"data": {"state": [{"anything-but": {"equals-ignore-case": ["STOPPED", "Running"]}}]}}, EVENT, False),
    ({"data": {"state": [{"anything-but": {"equals-ignore-case": ["STOPPED", "x"]}}]}}, EVENT, True),
    ({"data": {"state": [{"anything-but": {"wildcard": "*unn*"}}]}}, EVENT, False),
    ({"data": {"state": [{"anything-but": {"wildcard": ["st*", "*x"]}}]}}, EVENT, True),
    ({"n": [{"anything-but": {"prefix": "5"}}]}, {"n": 5}, True),
    # anything-but with a list for prefix / suffix / equals-ignore-case / wildcard (event-ruler README:
    # "Anything-but prefix list", "... suffix list", ...): matches a value that matches none of them
    ({"data": {"state": [{"anything-but": {"prefix": ["init", "post"]}}]}}, EVENT, True),
    ({"data": {"state": [{"anything-but": {"prefix": ["init", "run"]}}]}}, EVENT, False),
    ({"data": {"state": [{"anything-but": {"prefix": ["run"]}}]}}, EVENT, False),
    ({"n": [{"anything-but": {"prefix": ["init", "post"]}}]}, {"n": "posted"}, False),
    ({"n": [{"anything-but": {"prefix": ["init", "post"]}}]}, {"n": "pre"}, True),
    ({"n": [{"anything-but": {"prefix": ["init", "post"]}}]}, {"n": ["initial", "pre"]}, True),
    ({"n": [{"anything-but": {"prefix": ["init", "post"]}}]}, {"n": ["initial", "post"]}, False),
    ({"n": [{"anything-but": {"prefix": ["init", "post"]}}]}, {"n": 5}, True),  # numbers are not strings
    ({"n": [{"anything-but": {"prefix": ["init", "post"]}}]}, {}, False),  # missing matches nothing
    ({"data": {"instance-id": [{"anything-but": {"suffix": ["1234", "6789"]}}]}}, EVENT, True),
    ({"data": {"instance-id": [{"anything-but": {"suffix": ["1234", "000"]}}]}}, EVENT, False),
    ({"n": [{"anything-but": {"suffix": [".png", ".jpg"]}}]}, {"n": "a.jpg"}, False),
    ({"n": [{"anything-but": {"suffix": [".png", ".jpg"]}}]}, {"n": "a.gif"}, True),
    ({"n": [{"anything-but": {"equals-ignore-case": ["Stopped", "OverLoaded"]}}]}, {"n": "OVERLOADED"},
     False),
    ({"n": [{"anything-but": {"equals-ignore-case": ["Stopped", "OverLoaded"]}}]}, {"n": "running"}, True),
    ({"n": [{"anything-but": {"wildcard": ["*/bin/*.jar", "*/bin/*.class"]}}]}, {"n": "/a/bin/x.class"},
     False),
    ({"n": [{"anything-but": {"wildcard": ["*/bin/*.jar", "*/bin/*.class"]}}]}, {"n": "/a/lib/x.jar"}, True),
    # --- numeric
    ({"data": {"c-count": [{"numeric": [">", 0, "<=", 5]}]}}, EVENT, True),
    ({"data": {"c-count": [{"numeric": [">", 0, "<", 5]}]}}, EVENT, False),
    ({"data": {"c-count": [{"numeric": [">=", 5, "<", 6]}]}}, EVENT, True),
    ({"data": {"c-count": [{"numeric": [">", 5, "<", 6]}]}}, EVENT, False),
    ({"data": {"d-count": [{"numeric": ["<", 10]}]}}, EVENT, True),
    ({"data": {"d-count": [{"numeric": ["<", 3]}]}}, EVENT, False),
    ({"data": {"d-count": [{"numeric": ["<=", 3]}]}}, EVENT, True),
    ({"data": {"d-count": [{"numeric": [">", 3]}]}}, EVENT, False),
    ({"data": {"d-count": [{"numeric": [">=", 3]}]}}, EVENT, True),
    ({"data": {"x-limit": [{"numeric": ["=", 3.018e2]}]}}, EVENT, True),
    ({"data": {"x-limit": [{"numeric": ["=", 301]}]}}, EVENT, False),
    ({"n": [{"numeric": ["=", 5]}]}, {"n": 5.0}, True),
    ({"n": [{"numeric": [">", 0]}]}, {"n": "5"}, False),  # numbers only
    ({"n": [{"numeric": [">", 0]}]}, {"n": True}, False),
    ({"n": [{"numeric": [">=", 0]}]}, {"n": False}, False),
    ({"n": [{"numeric": [">", 0]}]}, {"n": None}, False),
    ({"n": [{"numeric": [">", 0]}]}, {"n": [-1, 2]}, True),
    ({"n": [{"numeric": [">", 0]}]}, {"n": [-1, -2]}, False),
    ({"n": [{"numeric": [">", -1e9, "<", 1e9]}]}, {"n": 10**8}, True),
    ({"n": [{"numeric": ["<", 0]}, {"numeric": [">", 10]}]}, {"n": 11}, True),
    ({"n": [{"numeric": ["<", 0]}, {"numeric": [">", 10]}]}, {"n": 5}, False),
    # --- wildcard
    ({"source": [{"wildcard": "aws.*"}]}, EVENT, True),
    ({"source": [{"wildcard": "*.ec2"}]}, EVENT, True),
    ({"source": [{"wildcard": "a*e*2"}]}, EVENT, True),
    ({"source": [{"wildcard": "a*s*x"}]}, EVENT, False),
    ({"source": [{"wildcard": "*"}]}, EVENT, True),
    ({"source": [{"wildcard": "aws.ec2"}]}, EVENT, True),  # no star: equality
    ({"source": [{"wildcard": "aws.ec"}]}, EVENT, False),
    ({"source": [{"wildcard": "aws?ec2"}]}, EVENT, False),  # '?' and '.' are literal
    ({"source": [{"wildcard": "aws.e[c]2"}]}, {"source": "aws.e[c]2"}, True),
    ({"s": [{"wildcard": "a\\*b"}]}, {"s": "a*b"}, True),  # JSON "a\\*b": an escaped star
    ({"s": [{"wildcard": "a\\*b"}]}, {"s": "axb"}, False),
    ({"s": [{"wildcard": "a\\\\*"}]}, {"s": "a\\xyz"}, True),  # an escaped backslash, then a star
    ({"s": [{"wildcard": "a\\\\*"}]}, {"s": "axyz"}, False),
    ({"s": [{"wildcard": "*\\**"}]}, {"s": "x*y"}, True),
    ({"s": [{"wildcard": "*\\**"}]}, {"s": "xy"}, False),
    ({"s": [{"wildcard": "a*b"}]}, {"s": "a\nb"}, True),
    ({"s": [{"wildcard": "a*"}]}, {"s": 5}, False),
    # --- cidr
    ({"data": {"source-ip": [{"cidr": "10.0.0.0/24"}]}}, EVENT, True),
    ({"data": {"source-ip": [{"cidr": "10.0.1.0/24"}]}}, EVENT, False),
    ({"data": {"source-ip": [{"cidr": "10.0.0.33/32"}]}}, EVENT, True),
    ({"data": {"source-ip": [{"cidr": "10.0.0.0/8"}]}}, EVENT, True),
    ({"ip": [{"cidr": "2001:db8::/32"}]}, {"ip": "2001:db8::1"}, True),
    ({"ip": [{"cidr": "2001:db8::/32"}]}, {"ip": "2001:db9::1"}, False),
    ({"ip": [{"cidr": "2001:db8::/32"}]}, {"ip": "10.0.0.1"}, False),
    ({"ip": [{"cidr": "10.0.0.0/8"}]}, {"ip": "::ffff:10.0.0.1"}, False),
    ({"ip": [{"cidr": "10.0.0.0/8"}]}, {"ip": "not an ip"}, False),
    ({"ip": [{"cidr": "10.0.0.0/8"}]}, {"ip": 167772161}, False),  # an int is not an address string
    ({"ip": [{"cidr": "10.0.0.0/8"}]}, {"ip": ["192.168.0.1", "10.9.9.9"]}, True),
    # --- $or
    ({"source": ["aws.ec2"], "$or": [{"type": ["x"]}, {"data": {"state": ["running"]}}]}, EVENT, True),
    ({"source": ["aws.s3"], "$or": [{"type": ["x"]}, {"data": {"state": ["running"]}}]}, EVENT, False),
    ({"source": ["aws.ec2"], "$or": [{"type": ["x"]}, {"data": {"state": ["y"]}}]}, EVENT, False),
    ({"$or": [{"data": {"c-count": [{"numeric": [">", 10]}]}},
              {"data": {"d-count": [{"numeric": ["<", 5]}]}}]}, EVENT, True),
    ({"data": {"$or": [{"c-count": [1]}, {"d-count": [3]}], "state": ["running"]}}, EVENT, True),
    ({"data": {"$or": [{"c-count": [1]}, {"d-count": [4]}], "state": ["running"]}}, EVENT, False),
    ({"$or": [{"a": [1]}, {"b": [2]}], "data": {"$or": [{"state": ["x"]}, {"c-count": [5]}]}},
     {"b": 2, "data": EVENT["data"]}, True),
    ({"$or": [{"a": [1]}, {"b": [2]}], "data": {"$or": [{"state": ["x"]}, {"c-count": [6]}]}},
     {"b": 2, "data": EVENT["data"]}, False),
    ({"source": ["aws.ec2"],  # nested: source && (a || (b && (c || d)) || e)
      "$or": [{"a": [1]}, {"b": [2], "$or": [{"c": [3]}, {"d": [4]}]}, {"e": [5]}]},
     {"source": "aws.ec2", "b": 2, "d": 4}, True),
    ({"source": ["aws.ec2"], "$or": [{"a": [1]}, {"b": [2], "$or": [{"c": [3]}, {"d": [4]}]}, {"e": [5]}]},
     {"source": "aws.ec2", "b": 2, "d": 5}, False),
    ({"$or": [{"a": [{"exists": False}]}, {"a": [0]}]}, {}, True),
    # --- nested objects
    ({"data": {"instance-id": [{"prefix": "i-"}], "state": ["running"]}}, EVENT, True),
    ({"data": {"state": {"name": ["running"]}}}, EVENT, False),  # a string is not an object
    ({"a": {"b": {"c": {"d": ["deep"]}}}}, {"a": {"b": {"c": {"d": "deep"}}}}, True),
    ({"a": {"b": {"c": {"d": ["deep"]}}}}, {"a": {"b": {"c": {"e": "deep"}}}}, False),
]


def _id(case: tuple[dict[str, Any], dict[str, Any], bool]) -> str:
    pattern, event, expected = case
    shown = event if event is not EVENT else "EVENT"
    text = msgspec.json.encode(pattern, order="sorted").decode()  # not Pattern.parse: ids never raise
    return f"{text} ~ {shown} -> {expected}"


@pytest.mark.parametrize(("pattern", "event", "expected"), CASES, ids=[_id(case) for case in CASES])
def test_match(pattern: dict[str, Any], event: dict[str, Any], expected: bool) -> None:
    compiled = Pattern.parse(pattern)
    assert compiled.match(event) is expected
    assert Pattern.parse(compiled.json).match(event) is expected


# (pattern, the path its error must name)
INVALID: list[tuple[Any, str]] = [
    ([], "top level"),
    ('"a JSON string"', "top level"),
    ("[1, 2]", "top level"),
    ({}, "top level"),
    ({"a": "x"}, "at a:"),
    ({"a": 5}, "at a:"),
    ({"a": None}, "at a:"),
    ({"a": []}, "at a:"),
    ({"a": {}}, "at a:"),
    ({"data": {"amount": "5"}}, "at data.amount:"),
    ({"data": {"amount": [[5]]}}, "at data.amount[0]:"),
    ({"data": {"amount": [{}]}}, "at data.amount[0]:"),
    ({"data": {"amount": [{"prefix": "a", "suffix": "b"}]}}, "at data.amount[0]:"),
    ({"data": {"amount": [1, {"bogus": 1}]}}, "at data.amount[1]:"),
    ({"a": [{"prefix": 5}]}, "at a[0]:"),
    ({"a": [{"prefix": None}]}, "at a[0]:"),
    ({"a": [{"prefix": {"equals-ignore-case": 5}}]}, "at a[0]:"),
    ({"a": [{"prefix": {"ignore-case": "x"}}]}, "at a[0]:"),
    ({"a": [{"suffix": ["x"]}]}, "at a[0]:"),
    ({"a": [{"equals-ignore-case": ["x"]}]}, "at a[0]:"),
    ({"a": [{"exists": "true"}]}, "at a[0]:"),
    ({"a": [{"exists": 1}]}, "at a[0]:"),
    ({"a": [{"numeric": 5}]}, "at a[0]:"),
    ({"a": [{"numeric": []}]}, "at a[0]:"),
    ({"a": [{"numeric": [">", "5"]}]}, "at a[0]:"),
    ({"a": [{"numeric": [">", True]}]}, "at a[0]:"),
    ({"a": [{"numeric": ["!=", 5]}]}, "at a[0]:"),
    ({"a": [{"numeric": [">", 1, "<"]}]}, "at a[0]:"),
    ({"a": [{"numeric": [">", 5, "<", 5]}]}, "at a[0]:"),
    ({"a": [{"numeric": [">", 6, "<=", 5]}]}, "at a[0]:"),
    ({"a": [{"numeric": ["<", 6, ">", 5]}]}, "at a[0]:"),
    ({"a": [{"numeric": [">", 1, ">", 5]}]}, "at a[0]:"),
    ({"a": [{"numeric": ["=", float("inf")]}]}, "at a[0]:"),
    ({"a": [float("nan")]}, "at a[0]:"),
    ({"a": [{"anything-but": []}]}, "at a[0]:"),
    ({"a": [{"anything-but": ["x", 1]}]}, "at a[0]:"),
    ({"a": [{"anything-but": None}]}, "at a[0]:"),
    ({"a": [{"anything-but": True}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"prefix": ""}}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"prefix": []}}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"prefix": ["x", ""]}}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"prefix": ["x", 1]}}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"prefix": [["x"]]}}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"prefix": {"equals-ignore-case": "x"}}}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"suffix": []}}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"suffix": [""]}}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"suffix": None}}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"wildcard": ["x", "a**"]}}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"numeric": [">", 1]}}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"prefix": "a", "suffix": "b"}}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"equals-ignore-case": []}}]}, "at a[0]:"),
    ({"a": [{"anything-but": {"wildcard": "a**"}}]}, "at a[0]:"),
    ({"a": [{"wildcard": "a**b"}]}, "at a[0]:"),
    ({"a": [{"wildcard": "a\\b"}]}, "at a[0]:"),
    ({"a": [{"wildcard": "a\\"}]}, "at a[0]:"),
    ({"a": [{"wildcard": 5}]}, "at a[0]:"),
    ({"a": [{"cidr": "10.0.0.0/33"}]}, "at a[0]:"),
    ({"a": [{"cidr": "not a network"}]}, "at a[0]:"),
    ({"a": [{"cidr": 10}]}, "at a[0]:"),
    ({"$or": [{"a": [1]}]}, "at $or:"),
    ({"$or": {"a": [1]}}, "at $or:"),
    ({"$or": []}, "at $or:"),
    ({"data": {"$or": [{"a": [1]}, {"b": "x"}]}}, "at data.$or[1].b:"),
    ({"data": {"$or": [{"a": [1]}, []]}}, "at data.$or[1]:"),
    ({1: ["x"]}, "top level"),
    ({"a": [{1, 2}]}, "at a[0]:"),
]


@pytest.mark.parametrize(("pattern", "where"), INVALID, ids=[repr(p) for p, _ in INVALID])
def test_invalid_pattern_names_the_path(pattern: Any, where: str) -> None:
    with pytest.raises(PatternError, match=r"^at ") as caught:
        Pattern.parse(pattern)
    assert where in str(caught.value)
    assert isinstance(caught.value, ConfigError)


def test_invalid_json_text() -> None:
    with pytest.raises(PatternError, match="not valid JSON"):
        Pattern.parse('{"a": [1,')
    with pytest.raises(PatternError, match="at a:"):
        Pattern.parse(b'{"a": "x"}')


def test_canonical_json_equality_and_pickle() -> None:
    one = Pattern.parse('{ "source": ["a"],\n "data": {"n": [{"numeric": [">", 1]}]} }')
    two = Pattern.parse({"data": {"n": [{"numeric": (">", 1)}]}, "source": ("a",)})
    assert one.json == '{"data":{"n":[{"numeric":[">",1]}]},"source":["a"]}'
    assert one == two and hash(one) == hash(two) and len({one, two}) == 1
    assert one != Pattern.parse({"source": ["b"]})
    assert one != one.json
    assert repr(one) == f"Pattern({one.json!r})"
    copy = pickle.loads(pickle.dumps(one))
    assert copy == one and copy.match({"source": "a", "data": {"n": 2}})


# --- properties: a pattern survives its canonical JSON, and dict and JSON forms agree

_KEYS = st.sampled_from(["a", "b", "c"])
_SCALARS = st.one_of(
    st.sampled_from(["x", "xy", "Xy", "yx", "10.0.0.1", ""]),
    st.integers(-3, 3),
    st.sampled_from([0.5, 1.0, -2.0]),
    st.booleans(),
    st.none(),
)
_CONDITIONS = st.one_of(
    _SCALARS,
    st.builds(lambda s: {"prefix": s}, st.sampled_from(["x", "X", ""])),
    st.builds(lambda s: {"suffix": {"equals-ignore-case": s}}, st.sampled_from(["y", "Y"])),
    st.builds(lambda s: {"equals-ignore-case": s}, st.sampled_from(["xy", "XY"])),
    st.builds(lambda v: {"anything-but": v}, st.one_of(st.sampled_from(["x", "xy"]), st.integers(-3, 3),
                                                      st.lists(st.sampled_from(["x", "y"]), min_size=1))),
    st.builds(lambda s: {"anything-but": {"prefix": s}}, st.sampled_from(["x", "y"])),
    st.builds(lambda op, n: {"numeric": [op, n]}, st.sampled_from(["<", "<=", ">", ">=", "="]),
              st.integers(-3, 3)),
    st.builds(lambda lo, width: {"numeric": [">=", lo, "<", lo + width]}, st.integers(-3, 3),
              st.integers(1, 3)),
    st.builds(lambda b: {"exists": b}, st.booleans()),
    st.builds(lambda s: {"wildcard": s}, st.sampled_from(["x*", "*y", "x*y", "\\*"])),
    st.builds(lambda s: {"cidr": s}, st.sampled_from(["10.0.0.0/8", "::/0"])),
)
_PATTERNS: st.SearchStrategy[dict[str, Any]] = st.recursive(
    st.dictionaries(_KEYS, st.lists(_CONDITIONS, min_size=1, max_size=3), min_size=1, max_size=3),
    lambda inner: st.one_of(
        st.dictionaries(_KEYS, inner, min_size=1, max_size=2),
        st.builds(lambda alts, rest: {**rest, "$or": alts}, st.lists(inner, min_size=2, max_size=3),
                  st.dictionaries(_KEYS, inner, max_size=1)),
    ),
    max_leaves=6,
)
_EVENTS: st.SearchStrategy[Any] = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=3)),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(_PATTERNS, st.lists(st.dictionaries(_KEYS, _EVENTS, max_size=3), max_size=5))
def test_pattern_round_trips_and_forms_agree(pattern: dict[str, Any], events: list[dict[str, Any]]) -> None:
    from_dict = Pattern.parse(pattern)
    from_json = Pattern.parse(from_dict.json)
    assert from_json == from_dict
    assert from_json.json == from_dict.json
    assert Pattern.parse(from_json.json.encode()) == from_dict
    for event in events:
        assert from_dict.match(event) is from_json.match(event)
