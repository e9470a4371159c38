"""A pure parser of PostgreSQL's ``pgoutput`` logical decoding messages (protocol version 1), as
``pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', 'publication_names', ...)``
returns them, one message per row, and the conversion of its text values to Python.

Messages (https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html):
``B`` Begin, ``C`` Commit, ``R`` Relation (sent before a table's first change in each decoding
call, and again after its definition changes), ``I`` Insert, ``U`` Update (an optional ``K`` key or
``O`` old tuple, then ``N``), ``D`` Delete (``K`` or ``O``), ``T`` Truncate; ``O`` Origin, ``Y``
Type and ``M`` Message are recognised and ignored. A tuple's column is ``n`` (null), ``u`` (an
unchanged TOASTed value, not sent) or ``t`` (its text form).

Values are converted by type OID: int2/int4/int8/oid to ``int``, finite float4/float8 to
``float``, bool to ``bool``, json/jsonb parsed; numeric stays a string (its precision kept), and
every other type is its PostgreSQL text form. An unchanged TOASTed value is ``UNCHANGED``."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

__all__ = ["UNCHANGED", "Begin", "Change", "Column", "Commit", "Outline", "PgOutputError",
           "Relation", "Transaction", "Truncate", "convert", "converter", "format_lsn", "key_text",
           "outline", "parse", "parse_lsn", "row_data", "transactions"]

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)

_INTS = frozenset({20, 21, 23, 26})   # int8, int2, int4, oid
_FLOATS = frozenset({700, 701})        # float4, float8
_BOOL = 16
_JSONS = frozenset({114, 3802})        # json, jsonb

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">QQq")


class PgOutputError(ValueError):
    """Bytes that are not a pgoutput message this parser knows."""


class _Unchanged:
    """An unchanged TOASTed value: PostgreSQL did not send it."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()


class Begin(NamedTuple):  # (named tuples: a peek makes tens of thousands of these)
    final_lsn: int
    """The LSN of the transaction's commit record."""
    time: datetime
    xid: int


class Commit(NamedTuple):
    lsn: int
    """The LSN of the commit record."""
    end_lsn: int
    """The LSN just after it: where a slot advanced past this transaction stands."""
    time: datetime


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    key: bool
    """Part of the replica identity (every column, for ``REPLICA IDENTITY FULL``)."""


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    replica_identity: str
    """``"d"`` default (the primary key), ``"n"`` nothing, ``"f"`` full, ``"i"`` an index."""
    columns: tuple[Column, ...]
    decoders: tuple[tuple[str, Callable[[str], Any] | None, bool], ...] = field(
        default=(), compare=False, repr=False)
    """Per column: its name, its converter, whether it is in the identity (for ``_tuple``)."""

    @property
    def qualified(self) -> str:
        return f"{self.schema or 'pg_catalog'}.{self.name}"


Row = dict[str, Any]


class Change(NamedTuple):
    op: str
    """``"insert"``, ``"update"`` or ``"delete"``."""
    relation: int
    new: Row | None
    old: Row | None
    old_kind: str | None
    """``"K"`` (``old`` holds the key columns only), ``"O"`` (the whole old row) or ``None``."""


class Truncate(NamedTuple):
    relations: tuple[int, ...]
    cascade: bool
    restart_identity: bool


Message = Begin | Commit | Relation | Change | Truncate | None


def format_lsn(lsn: int) -> str:
    """``X/Y``, as PostgreSQL writes an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def pg_time(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


def _float(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


def _bool(text: str) -> bool:
    return text == "t"


def converter(type_oid: int) -> Callable[[str], Any] | None:
    """What turns a column's text form into Python, by its type (``None``: it stays text)."""
    if type_oid in _INTS:
        return int
    if type_oid in _FLOATS:
        return _float
    if type_oid == _BOOL:
        return _bool
    return json.loads if type_oid in _JSONS else None


def convert(type_oid: int, text: str) -> Any:
    """A column's text form as Python, by its type (see the module's docstring)."""
    conv = converter(type_oid)
    return text if conv is None else conv(text)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 1

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise PgOutputError(f"message {self.buf[:1]!r} ends early (at byte {self.pos})")
        out, self.pos = self.buf[self.pos:end], end
        return out

    def byte(self) -> str:
        return chr(self.take(1)[0])

    def i16(self) -> int:
        value: int = _I16.unpack(self.take(2))[0]
        return value

    def i32(self) -> int:
        value: int = _I32.unpack(self.take(4))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack(self.take(8))[0]
        return value

    def i64(self) -> int:
        value: int = _I64.unpack(self.take(8))[0]
        return value

    def string(self) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise PgOutputError(f"message {self.buf[:1]!r}: a string without its end")
        out, self.pos = self.buf[self.pos:end].decode(), end + 1
        return out


def parse(buf: bytes, relations: dict[int, Relation]) -> Message:
    """One message; a Relation is also recorded in ``relations`` (by OID), which Insert, Update
    and Delete need to name their columns. ``None`` for a message of no interest here."""
    if not buf:
        raise PgOutputError("an empty message")
    tag = buf[0]
    if tag in _CHANGES:
        return _change(buf, relations)
    if tag == 66:  # B
        return _begin(buf)
    if tag == 67:  # C
        return _commit(buf)
    r = _Reader(buf)
    if tag == 82:  # R
        rel = _relation(r)
        relations[rel.oid] = rel
        return rel
    if tag == 84:  # T
        count, options = r.i32(), r.take(1)[0]
        return Truncate(tuple(r.u32() for _ in range(count)), cascade=bool(options & 1),
                        restart_identity=bool(options & 2))
    if tag in b"OYM":
        return None
    raise PgOutputError(f"unknown pgoutput message {chr(tag)!r}")


_CHANGES = frozenset(b"IUD")


def _begin(buf: bytes) -> Begin:
    if len(buf) < 21:
        raise PgOutputError(f"message 'B' ends early ({len(buf)} bytes)")
    lsn, micros, xid = _BEGIN.unpack_from(buf, 1)
    return Begin(lsn, PG_EPOCH + timedelta(microseconds=micros), xid)


def _commit(buf: bytes) -> Commit:
    if len(buf) < 26:
        raise PgOutputError(f"message 'C' ends early ({len(buf)} bytes)")
    lsn, end, micros = _COMMIT.unpack_from(buf, 2)  # (flags first, unused)
    return Commit(lsn, end, PG_EPOCH + timedelta(microseconds=micros))


def _relation(r: _Reader) -> Relation:
    oid, schema, name, ident = r.u32(), r.string(), r.string(), r.byte()
    columns = []
    for _ in range(r.i16()):
        flags, col, type_oid = r.take(1)[0], r.string(), r.u32()
        r.i32()  # type modifier
        columns.append(Column(col, type_oid, bool(flags & 1)))
    return Relation(oid, schema, name, ident, tuple(columns),
                    tuple((c.name, converter(c.type_oid), c.key) for c in columns))


def _change(buf: bytes, relations: dict[int, Relation]) -> Change:
    """An Insert, Update or Delete (``buf[0]`` says which)."""
    if len(buf) < 6:
        raise PgOutputError(f"message {buf[:1]!r} ends early ({len(buf)} bytes)")
    oid: int = _U32.unpack_from(buf, 1)[0]
    rel = relations.get(oid)
    if rel is None:
        raise PgOutputError(f"a change of relation {oid} before its Relation message")
    tag, kind = buf[0], chr(buf[5])
    if tag == 73:  # I
        if kind != "N":
            raise PgOutputError(f"Insert: expected a new tuple, got {kind!r}")
        return Change("insert", oid, _tuple(buf, 6, rel)[0], None, None)
    if tag == 68:  # D
        if kind not in "KO":
            raise PgOutputError(f"Delete: expected a key or old tuple, got {kind!r}")
        return Change("delete", oid, None, _tuple(buf, 6, rel, keys_only=kind == "K")[0], kind)
    old, old_kind, pos = None, None, 6
    if kind in "KO":
        old, pos = _tuple(buf, pos, rel, keys_only=kind == "K")
        old_kind, kind = kind, chr(buf[pos]) if pos < len(buf) else "end"
        pos += 1
    if kind != "N":
        raise PgOutputError(f"Update: expected a new tuple, got {kind!r}")
    return Change("update", oid, _tuple(buf, pos, rel)[0], old, old_kind)


def _tuple(buf: bytes, pos: int, rel: Relation, *, keys_only: bool = False) -> tuple[Row, int]:
    """A tuple's columns by name, and the offset past it; with ``keys_only`` (a ``K`` tuple,
    whose other columns are null placeholders) only the identity's columns. (The hot loop:
    offsets, no method calls.)"""
    try:
        count = _I16.unpack_from(buf, pos)[0]
        if count != len(rel.columns):
            raise PgOutputError(f"{rel.qualified}: a tuple of {count} columns for a relation "
                                f"of {len(rel.columns)}")
        pos += 2
        row: Row = {}
        for name, conv, key in rel.decoders:
            kind = buf[pos]
            pos += 1
            if kind == 116:  # t: text
                end = pos + 4 + _I32.unpack_from(buf, pos)[0]
                if end > len(buf):
                    raise IndexError
                text = buf[pos + 4:end].decode()
                pos = end
                value: Any = text if conv is None else conv(text)
            elif kind == 110:  # n: null
                value = None
            elif kind == 117:  # u: an unchanged TOASTed value
                value = UNCHANGED
            else:
                raise PgOutputError(f"{rel.qualified}.{name}: unknown column kind {chr(kind)!r}")
            if key or not keys_only:
                row[name] = value
    except (IndexError, struct.error):
        raise PgOutputError(f"message {buf[:1]!r} ends early (at byte {pos})") from None
    return row, pos


@dataclass
class Transaction:
    """One committed transaction of a peek: its changes in order."""

    begin: Begin
    commit: Commit
    changes: list[Change | Truncate]


def transactions(messages: list[bytes], relations: dict[int, Relation]) -> list[Transaction]:
    """The whole transactions in ``messages`` (what one peek returned), in commit order."""
    out: list[Transaction] = []
    begin: Begin | None = None
    changes: list[Change | Truncate] = []
    for raw in messages:  # (Begin, Commit and the changes parsed here: the hot loop)
        tag = raw[0] if raw else 0
        if tag in _CHANGES:
            change = _change(raw, relations)
            if begin is not None:
                changes.append(change)
        elif tag == 66:
            begin, changes = _begin(raw), []
        elif tag == 67:
            commit = _commit(raw)
            if begin is not None:
                out.append(Transaction(begin, commit, changes))
                begin = None
        else:
            msg = parse(raw, relations)
            if isinstance(msg, Truncate) and begin is not None:
                changes.append(msg)
    return out


class Outline(NamedTuple):
    """What one peek's messages hold, read without parsing their rows."""

    changes: int
    """Insert, Update, Delete and Truncate messages."""
    end_lsn: int | None
    """The last Commit's end LSN (``None``: no Commit)."""
    first_time: datetime | None
    """The first transaction's commit time."""
    relations: dict[int, Relation]
    """The tables their Relation messages describe, by OID."""


def outline(messages: list[bytes]) -> Outline:
    """An ``Outline`` of ``messages``: a pass over their first bytes, with the first Begin, the
    last Commit and the Relation messages parsed (a tenth of the cost of ``transactions``)."""
    changes, first, last = 0, None, b""
    relations: dict[int, Relation] = {}
    for raw in messages:
        tag = raw[0] if raw else 0
        if tag in _COUNTED:
            changes += 1
        elif tag == 67:  # C
            last = raw
        elif tag == 82:  # R
            parse(raw, relations)
        elif tag == 66 and first is None:  # B
            first = _begin(raw).time
    return Outline(changes, _commit(last).end_lsn if last else None, first, relations)


_COUNTED = frozenset(b"IUDT")


def row_data(change: Change | Truncate, rel: Relation, pk: tuple[str, ...]) -> dict[str, Any]:
    """An event's data for ``change`` of ``rel``: ``{"op", "table", "key", "new", "old"}``
    (and ``"unchanged"``: the TOASTed columns left out of ``new``). ``key`` holds the columns
    ``pk`` names, or without one the replica identity's."""
    table = rel.qualified
    if isinstance(change, Truncate):
        return {"op": "truncate", "table": table, "key": None, "new": None, "old": None}
    keys = pk or tuple(c.name for c in rel.columns if c.key)
    new, old, unchanged = change.new, change.old, []
    if new and UNCHANGED in new.values():
        unchanged = [c for c, v in new.items() if v is UNCHANGED]
        new = {c: v for c, v in new.items() if v is not UNCHANGED}
    if old and UNCHANGED in old.values():
        old = {c: v for c, v in old.items() if v is not UNCHANGED}
    source = new if new is not None else old or {}
    data: dict[str, Any] = {"op": change.op, "table": table,
                            "key": {k: source.get(k) for k in keys}, "new": new, "old": old}
    if unchanged:
        data["unchanged"] = unchanged
    return data


def key_text(key: dict[str, Any] | None) -> str | None:
    """An event key from a row's key columns: one column's value as text, or a JSON array."""
    if not key:
        return None
    values = list(key.values())
    return str(values[0]) if len(values) == 1 else json.dumps(values, separators=(",", ":"))
