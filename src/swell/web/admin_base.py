"""What the admin API's handlers share: the running runtime they read and act on, one call's
checked input, the error a user's mistake becomes, and the route table's row (``Op``), from which
both the routes and the OpenAPI document are made (``swell.web.admin``, ``swell.web.openapi``)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from swell.runtime.runtime import Runtime
    from swell.web.history import History

__all__ = ["Admin", "ApiError", "Call", "Handler", "Op", "Param", "redact"]


@dataclass(frozen=True)
class Admin:
    """The admin API of one running runtime: what it reads and acts through, its series, and
    the bearer token its changes need (never served)."""

    runtime: Runtime
    history: History
    token: str = field(repr=False)
    local_only: bool = False
    """Served on a loopback address: requests must name a loopback host (``Host``), so a web page
    whose name an attacker points at 127.0.0.1 (DNS rebinding) cannot read through the browser."""

    def host_allowed(self, host: str) -> bool:
        """Whether a request's ``Host`` header may reach the API and the page."""
        if not self.local_only:
            return True
        name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.split(":")[0]
        return name in ("localhost", "::1") or name.startswith("127.")


class ApiError(Exception):
    """A user's mistake (or a state that refuses the change): one JSON error, never a 500."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class Call:
    """One request's input, checked against its ``Op``: path and query parameters converted,
    the body a JSON object (``{}`` when there is none)."""

    path: dict[str, str]
    query: dict[str, Any]
    body: dict[str, Any]


Handler = Callable[[Admin, Call], Awaitable[Any]]


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query"]
    schema: dict[str, Any]
    doc: str = ""
    slashes: bool = False
    """A path parameter that may hold ``/`` (a saga's ``NAME/ID``, URL-encoded or not)."""

    @property
    def required(self) -> bool:
        return self.where == "path"


@dataclass(frozen=True)
class Op:
    """One endpoint: the route and its OpenAPI operation, from the same row."""

    method: Literal["GET", "POST"]
    path: str
    """As OpenAPI writes it: ``/api/v1/functions/{name}``."""
    handler: Handler
    op_id: str
    summary: str
    tag: str
    response: dict[str, Any]
    """The JSON schema of a 200's body."""
    params: tuple[Param, ...] = ()
    body: dict[str, Any] | None = None
    """The JSON schema of the request's body (``None``: it takes none)."""
    errors: tuple[int, ...] = ()
    """The 4xx statuses it may answer besides 400 and (a POST) 401."""

    @property
    def changes(self) -> bool:
        """A POST changes state: it needs the token."""
        return self.method == "POST"

    @property
    def route(self) -> str:
        """The path as Starlette routes it (a parameter with slashes as ``{name:path}``)."""
        out = self.path
        for p in self.params:
            if p.where == "path" and p.slashes:
                out = out.replace(f"{{{p.name}}}", f"{{{p.name}:path}}")
        return out


_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")


def redact(value: Any) -> Any:
    """``value`` with the password of every URL in its strings replaced (``nats://u:***@h``):
    a source's detail or error may name the server it reads."""
    if isinstance(value, str):
        return _CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value
