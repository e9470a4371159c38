"""JSON on the wire, through msgspec: one encoder and decoder for the whole package."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from swell.core.errors import PayloadError


def _enc_hook(obj: Any) -> Any:
    # pydantic models (and anything else with model_dump) become plain JSON data
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.json.Decoder()


def encode_json(obj: Any) -> bytes:
    """Encode ``obj`` (JSON data, dataclasses, msgspec Structs, pydantic models) to JSON bytes."""
    try:
        return _encoder.encode(obj)
    except (TypeError, OverflowError) as exc:
        raise PayloadError(f"cannot encode as JSON: {exc}") from exc


def decode_json(data: bytes | str) -> Any:
    """Decode JSON bytes; malformed input (nested too deeply too) raises ``PayloadError``."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        raise PayloadError(f"JSON nested too deeply: {exc}") from exc
