"""The pgoutput parser on bytes a real PostgreSQL 15 sent (``pg_logical_slot_peek_binary_changes``
with ``proto_version 1``), captured from this script on a fresh server::

    CREATE TYPE mood AS ENUM ('ok', 'sad');
    CREATE TABLE t (id int PRIMARY KEY, n numeric, j jsonb, b bool, f float8, m mood, big text);
    CREATE TABLE f (a int, b text);  ALTER TABLE f REPLICA IDENTITY FULL;
    CREATE PUBLICATION p FOR TABLE t, f;
    INSERT INTO t VALUES (1, 1.10, '[1, {"a": null}]', true, 'NaN', 'ok', NULL);
    -- (a row 2 with a 3,200-character "big", left out here)
    UPDATE t SET b = false WHERE id = 2;        -- big is TOASTed and unchanged: 'u'
    UPDATE t SET id = 3 WHERE id = 1;           -- the key changed: a K tuple
    DELETE FROM t WHERE id = 3;
    INSERT INTO f VALUES (1, 'x');  UPDATE f SET b = 'y';  DELETE FROM f;   -- O tuples
    TRUNCATE t, f;
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from swell.triggers.pgoutput import (
    UNCHANGED,
    Begin,
    Change,
    Commit,
    PgOutputError,
    Relation,
    Truncate,
    convert,
    format_lsn,
    key_text,
    outline,
    parse,
    parse_lsn,
    row_data,
    transactions,
)

REL_T = ("52000040057075626c69630074006400070169640000000017ffffffff006e00000006a4ffffffff006a"
         "0000000edaffffffff00620000000010ffffffff006600000002bdffffffff006d0000004001ffffffff"
         "006269670000000019ffffffff")
REL_F = "520000400c7075626c696300660066000201610000000017ffffffff01620000000019ffffffff"
TYPE = "59000040017075626c6963006d6f6f6400"
CAPTURED = [
    "42000000000151bdf80003051160e22445000002d9", TYPE, REL_T,
    "49000040054e00077400000001317400000004312e313074000000105b312c207b2261223a206e756c6c7d5d"
    "74000000017474000000034e614e74000000026f6b6e",
    "4300000000000151bdf8000000000151be280003051160e22445",
    "42000000000151cd800003051160e22983000002db",
    "55000040054e00077400000001326e6e7400000001666e6e75",
    "4300000000000151cd80000000000151cdb00003051160e22983",
    "42000000000151ce780003051160e22a22000002dc",
    "55000040054b00077400000001316e6e6e6e6e6e4e00077400000001337400000004312e313074000000105b"
    "312c207b2261223a206e756c6c7d5d74000000017474000000034e614e74000000026f6b6e",
    "4300000000000151ce78000000000151cea80003051160e22a22",
    "42000000000151cee80003051160e22aa9000002dd",
    "44000040054b00077400000001336e6e6e6e6e6e",
    "4300000000000151cee8000000000151cf180003051160e22aa9",
    "42000000000151cf580003051160e22b55000002de", REL_F,
    "490000400c4e0002740000000131740000000178",
    "4300000000000151cf58000000000151cf880003051160e22b55",
    "42000000000151cfe00003051160e22be8000002df",
    "550000400c4f00027400000001317400000001784e0002740000000131740000000179",
    "4300000000000151cfe0000000000151d0100003051160e22be8",
    "42000000000151d0580003051160e22c5b000002e0",
    "440000400c4f0002740000000131740000000179",
    "4300000000000151d058000000000151d0880003051160e22c5b",
    "42000000000151e4480003051160e23aa6000002e1", TYPE, REL_T, REL_F,
    "540000000200000040050000400c",
    "4300000000000151e448000000000151e6880003051160e23aa6",
]
T_OID, F_OID = 0x4005, 0x400C


def messages() -> list[bytes]:
    return [bytes.fromhex(h) for h in CAPTURED]


def test_begin_commit_and_relation_messages() -> None:
    relations: dict[int, Relation] = {}
    begin, _, rel, _, commit = (parse(m, relations) for m in messages()[:5])
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert begin.xid == 729 and format_lsn(begin.final_lsn) == "0/151BDF8" == format_lsn(commit.lsn)
    assert format_lsn(commit.end_lsn) == "0/151BE28"
    assert begin.time == commit.time and begin.time.tzinfo is UTC
    assert datetime(2026, 1, 1, tzinfo=UTC) < begin.time < datetime(2027, 1, 1, tzinfo=UTC)
    assert isinstance(rel, Relation) and relations == {T_OID: rel}
    assert (rel.qualified, rel.replica_identity) == ("public.t", "d")
    assert [(c.name, c.type_oid, c.key) for c in rel.columns] == [
        ("id", 23, True), ("n", 1700, False), ("j", 3802, False), ("b", 16, False),
        ("f", 701, False), ("m", 0x4001, False), ("big", 25, False)]


def test_every_change_of_the_captured_session() -> None:
    relations: dict[int, Relation] = {}
    txs = transactions(messages(), relations)
    assert [len(t.changes) for t in txs] == [1, 1, 1, 1, 1, 1, 1, 1]
    assert all(t.begin.final_lsn == t.commit.lsn for t in txs)
    assert [t.commit.end_lsn for t in txs] == sorted(t.commit.end_lsn for t in txs)
    insert, toasted, moved, deleted, f_insert, f_update, f_delete, truncate = \
        (t.changes[0] for t in txs)
    assert insert == Change("insert", T_OID, {"id": 1, "n": "1.10", "j": [1, {"a": None}],
                                              "b": True, "f": "NaN", "m": "ok", "big": None},
                            None, None)
    assert isinstance(toasted, Change) and toasted.new is not None
    assert toasted.new["big"] is UNCHANGED and toasted.new["b"] is False and toasted.old is None
    assert isinstance(moved, Change) and (moved.old, moved.old_kind) == ({"id": 1}, "K")
    assert moved.new is not None and moved.new["id"] == 3
    assert deleted == Change("delete", T_OID, None, {"id": 3}, "K")
    assert f_insert == Change("insert", F_OID, {"a": 1, "b": "x"}, None, None)
    assert f_update == Change("update", F_OID, {"a": 1, "b": "y"}, {"a": 1, "b": "x"}, "O")
    assert f_delete == Change("delete", F_OID, None, {"a": 1, "b": "y"}, "O")
    assert truncate == Truncate((T_OID, F_OID), cascade=False, restart_identity=False)
    assert relations[F_OID].replica_identity == "f"
    assert all(c.key for c in relations[F_OID].columns)  # FULL: every column is the identity


def test_an_outline_says_what_a_peek_holds_as_parsing_it_would() -> None:
    relations: dict[int, Relation] = {}
    txs = transactions(messages(), relations)
    seen = outline(messages())
    assert seen.changes == sum(len(t.changes) for t in txs) == 8
    assert seen.end_lsn == txs[-1].commit.end_lsn and seen.first_time == txs[0].begin.time
    assert seen.relations == relations
    assert outline([]) == (0, None, None, {})
    assert outline(messages()[:4]).end_lsn is None  # a Begin and no Commit yet


def test_event_data_from_changes() -> None:
    relations: dict[int, Relation] = {}
    txs = transactions(messages(), relations)
    t, f = relations[T_OID], relations[F_OID]
    toasted, moved = txs[1].changes[0], txs[2].changes[0]
    assert row_data(toasted, t, ("id",)) == {
        "op": "update", "table": "public.t", "key": {"id": 2}, "old": None, "unchanged": ["big"],
        "new": {"id": 2, "n": None, "j": None, "b": False, "f": None, "m": None}}
    assert row_data(moved, t, ("id",))["key"] == {"id": 3}
    assert row_data(txs[3].changes[0], t, ("id",))["key"] == {"id": 3}  # a delete: the old key
    # no primary key: the replica identity's columns (all of them for FULL)
    assert row_data(txs[5].changes[0], f, ())["key"] == {"a": 1, "b": "y"}
    assert row_data(txs[7].changes[0], t, ("id",)) == {
        "op": "truncate", "table": "public.t", "key": None, "new": None, "old": None}


@pytest.mark.parametrize(("key", "text"), [
    ({"id": 5}, "5"), ({"id": "a b"}, "a b"), ({"a": 1, "b": "x"}, '[1,"x"]'), ({}, None),
    (None, None)])
def test_key_text(key: dict[str, Any] | None, text: str | None) -> None:
    assert key_text(key) == text


@pytest.mark.parametrize(("oid", "text", "value"), [
    (21, "-7", -7), (23, "42", 42), (20, "9007199254740993", 9007199254740993), (26, "16384", 16384),
    (700, "1.5", 1.5), (701, "-0.25", -0.25), (701, "Infinity", "Infinity"), (701, "NaN", "NaN"),
    (16, "t", True), (16, "f", False), (114, '{"a": [1]}', {"a": [1]}), (3802, "null", None),
    (1700, "12345678901234567890.000000001", "12345678901234567890.000000001"),
    (1082, "2026-12-07", "2026-12-07"), (2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                                         "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")])
def test_values_by_type(oid: int, text: str, value: Any) -> None:
    assert convert(oid, text) == value and type(convert(oid, text)) is type(value)


def test_lsn_text_round_trips() -> None:
    for text in ("0/0", "0/151BDF8", "16/B374D848", "FFFFFFFF/FFFFFFFF"):
        assert format_lsn(parse_lsn(text)) == text


def test_origin_type_and_message_are_ignored() -> None:
    assert parse(bytes.fromhex(TYPE), {}) is None
    assert parse(b"O" + bytes(8) + b"origin\0", {}) is None


@pytest.mark.parametrize(("raw", "said"), [
    (b"", "empty"),
    (b"Z\0", "unknown pgoutput message 'Z'"),
    (bytes.fromhex("42000000000151bdf8"), "ends early"),
    (bytes.fromhex("490000400c4e0002740000000131740000000178"), "before its Relation"),
    (bytes.fromhex("52000040057075626c6963"), "without its end"),
])
def test_bad_bytes_are_parse_errors(raw: bytes, said: str) -> None:
    with pytest.raises(PgOutputError, match=said):
        parse(raw, {})


def test_a_tuple_of_the_wrong_width_or_kind_is_a_parse_error() -> None:
    relations: dict[int, Relation] = {}
    parse(bytes.fromhex(REL_F), relations)
    with pytest.raises(PgOutputError, match="a tuple of 1 columns"):
        parse(bytes.fromhex("490000400c4e0001740000000131"), relations)
    with pytest.raises(PgOutputError, match="unknown column kind 'x'"):
        parse(bytes.fromhex("490000400c4e000278"), relations)
    with pytest.raises(PgOutputError, match="expected a new tuple"):
        parse(bytes.fromhex("490000400c4b"), relations)
