"""The admin API's OpenAPI document, fuzzed by schemathesis against a running server (a Runtime
and its HTTP server on a free loopback port, on a loop of their own in a thread): whatever the
parameters and bodies, valid or not, with the token or without, never a 5xx; and valid input
answers a documented status with a body of its documented schema.

Bounded: a few hundred requests in all (a few seconds), no example database."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from support.adminapp import TOKEN, legacy_saga, served
from support.eventually import until
from swell.web.admin import openapi

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """The server, on its own loop in a thread, with a dead letter and a saga to act on."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with served() as (rt, server):
            await rt.send("orders", {"bad": True})
            await until(lambda: _dead(rt), "a dead letter")
            await legacy_saga(rt.broker, "s-1")
            box.update(url=server.url, loop=asyncio.get_running_loop(), stop=asyncio.Event())
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="admin-server")
    thread.start()
    assert ready.wait(30), "the server did not start"
    try:
        yield box["url"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)


async def _dead(rt: Any) -> bool:
    return bool((await rt.broker.stats("orders.dlq")).total)


@pytest.fixture(scope="module")
def schema() -> Any:
    return schemathesis.openapi.from_dict(openapi())


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE,
                                  schemathesis.GenerationMode.NEGATIVE])
def test_no_input_makes_a_5xx(server_url: str, schema: Any,
                              mode: schemathesis.GenerationMode) -> None:
    checks: list[schemathesis.CheckFunction] = [not_a_server_error]
    if mode == schemathesis.GenerationMode.POSITIVE:
        checks += [status_code_conformance, content_type_conformance,
                   response_schema_conformance]

    @FUZZ
    @given(case=schema.as_strategy(mode), token=st.booleans())
    def fuzz(case: schemathesis.Case[Any], token: bool) -> None:
        case.call_and_validate(base_url=server_url, headers=AUTH if token else {},
                               checks=checks, timeout=10)

    fuzz()
