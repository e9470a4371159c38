"""``swell status`` says, under the sources table, what a source's node reports of its connection
and backlog: a broker out of reach, a node standing by, a change stream behind, events held."""

from __future__ import annotations

from typing import Any

from swell.cli.status import _state
from swell.triggers.base import SourceStatus


def status(detail: dict[str, Any], pending: int = 0) -> SourceStatus:
    return SourceStatus(app="a", source="s", kind="mqtt", node="n", target="t", received=0,
                        emitted=0, duplicates=0, errors=0, rejected={}, lag_s=None,
                        pending=pending, last_error=None, detail=detail, at=0.0)


def test_a_sources_state_is_said_only_when_there_is_something_to_say() -> None:
    assert _state(status({"connected": True, "url": "mqtt://x"})) is None
    assert _state(status({"connected": False}, pending=12)) == \
        "disconnected, 12 waiting to be stored"
    assert _state(status({"standby": True, "lag_bytes": 0})) == \
        "standing by (another node reads)"
    assert _state(status({"state": "reading", "lag_bytes": 123_456})) == \
        "123,456 B of log behind"
    assert _state(status({"connected": True, "adopted": [{"client_id": "swell-a-s-1"}]})) == \
        "also draining swell-a-s-1 (adopted: their node is gone)"
