"""Errors as one line for people: what an attempt's failure, or a payload's, is recorded as."""

from __future__ import annotations

import traceback

import pydantic

__all__ = ["describe", "describe_validation"]


def describe(exc: BaseException) -> str:
    """An exception on one line (or a few, for chained messages): type and message."""
    return "".join(traceback.format_exception_only(exc)).strip()


def describe_validation(exc: pydantic.ValidationError) -> str:
    """A validation error on one line per field, without pydantic's documentation links."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
                     for e in exc.errors(include_url=False))
