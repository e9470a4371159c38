"""What ``swell send`` sends: JSON from its argument, from ``@file`` or, as JSON lines, from stdin,
each checked before any is stored; and its options' text, refused if it cannot be stored."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import msgspec

from swell.core.codec import decode_json
from swell.core.errors import ConfigError, PayloadError


class Line(msgspec.Struct, frozen=True):
    """One input to send: its line number, its bytes as read, and the JSON they hold."""

    number: int  # on stdin, 1-based, counting blank lines; 0: the argument or @file
    raw: bytes
    payload: Any


def read_payloads(data: str) -> list[Line]:
    """JSON from the argument, from ``@file``, or JSON lines from stdin (``-``); all or nothing:
    a bad line (the first is named, the others counted) sends nothing."""
    if data == "-":
        return _read_lines(sys.stdin.buffer)
    if data.startswith("@"):
        try:
            with open(data[1:], "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {data[1:]}: {exc.strerror}") from exc
        where = f"{data}: "
    else:
        raw = os.fsencode(data)  # the argument's own bytes, even if they are not UTF-8
        where = ""
    try:
        return [Line(0, raw, _decode(raw))]
    except PayloadError as exc:
        raise PayloadError(f"{where}{exc}; nothing was sent") from None


def _read_lines(stream: Any) -> list[Line]:
    out, bad, first = [], 0, ""
    for n, line in enumerate(stream, 1):
        raw = line.strip()
        if not raw:
            continue
        try:
            out.append(Line(n, raw, _decode(raw)))
        except PayloadError as exc:
            bad += 1
            first = first or f"stdin line {n}: {exc}"
    if bad:
        raise PayloadError(f"{first}{f' ({bad:,} bad lines in all)' if bad > 1 else ''}; "
                           "nothing was sent")
    return out


BOM = b"\xef\xbb\xbf"
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def _decode(raw: bytes) -> Any:
    """JSON from one input; a UTF-8 byte order mark before it (which some editors write, and
    which RFC 8259 lets a parser ignore) is ignored. A refusal says what is wrong in words."""
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        return decode_json(raw)
    except RecursionError:
        raise PayloadError(_too_deep(raw)) from None
    except PayloadError as exc:
        if isinstance(exc.__cause__, RecursionError):
            raise PayloadError(_too_deep(raw)) from None
        raise PayloadError(_why(raw) or str(exc)) from None


def _too_deep(raw: bytes) -> str:
    depth = deepest = 0
    for bracket in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        depth += 1 if bracket.group() in b"[{" else -1
        deepest = max(deepest, depth)
    return (f"JSON nested {deepest:,} levels deep (arrays and objects within each other): "
            "too deep to decode")


def _why(raw: bytes) -> str | None:
    """Why ``raw`` is no JSON, where the decoder's own words mislead: bytes that are not UTF-8,
    or an escape of half a UTF-16 surrogate pair (``"\\ud800"``), which is no character."""
    try:
        raw.decode()
    except UnicodeDecodeError as exc:
        return (f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start:,} "
                "(JSON is UTF-8; convert the input, e.g. with iconv -t UTF-8)")
    for string in _STRING.finditer(raw):
        high: re.Match[bytes] | None = None  # a high surrogate, waiting for its low half
        for esc in _ESCAPE.finditer(string.group()):
            code = int(esc.group(1), 16) if esc.group(1) else -1
            if high is not None:
                if 0xDC00 <= code <= 0xDFFF and esc.start() == high.end():
                    high = None
                    continue
                return _lone(high, string.start())
            if 0xD800 <= code <= 0xDBFF:
                high = esc
            elif 0xDC00 <= code <= 0xDFFF:
                return _lone(esc, string.start())
        if high is not None:
            return _lone(high, string.start())
    return None


def _lone(escape: re.Match[bytes], base: int) -> str:
    return (f"{escape.group().decode()} at offset {base + escape.start():,} is half of a UTF-16 "
            "surrogate pair, which is no character on its own: JSON text must be valid Unicode")


def utf8_option(option: str, value: str | None) -> str | None:
    """An option's text, if it can be stored (UTF-8); else one clear error."""
    if value is not None:
        raw = os.fsencode(value)  # the argument's own bytes
        try:
            raw.decode()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{option} {raw!r} is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                              f"at offset {exc.start:,})") from None
    return value


def attributes_of(pairs: tuple[str, ...]) -> dict[str, str] | None:
    """``--attr NAME=VALUE`` options as a dict (``None``: none given)."""
    out = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq:
            raise ConfigError(f"--attr {pair!r}: use NAME=VALUE")
        out[name] = value
    return out or None

