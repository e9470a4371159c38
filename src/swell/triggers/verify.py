"""Who sent a webhook: the signature schemes senders use, checked over the raw request body.

A ``Verifier`` is pure (no HTTP framework): the webhook source hands it the headers (names in
lower case), the body exactly as received, and the time; it returns, or raises ``Rejected``
with the HTTP status and a short reason the source counts in its stats. Signatures are always
checked over the raw bytes, never over re-encoded JSON (any re-encoding changes them), and
compared in constant time.

Each scheme takes one secret or several: while a secret is being rotated both are valid, and a
request passes if any secret matches any signature it carries. ``repr`` never shows a secret.

- ``Stripe``: ``Stripe-Signature: t=<unix>,v1=<hex>``, HMAC-SHA256 of ``{t}.{body}``;
- ``GitHub``: ``X-Hub-Signature-256: sha256=<hex>``, HMAC-SHA256 of the body;
- ``StandardWebhooks``: ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature:
  v1,<base64>``, HMAC-SHA256 of ``{id}.{timestamp}.{body}``;
- ``Hmac``: any one header, any hashlib algorithm, hex or base64, of the body;
- ``Bearer``: ``Authorization: Bearer <token>``, a shared token (no signature).

Schemes with a timestamp refuse a request signed too long ago *or* too far ahead (``"stale"``):
a captured request cannot be replayed after ``tolerance``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

from swell.core.config import Duration, seconds
from swell.core.errors import ConfigError, SwellError

__all__ = ["Bearer", "GitHub", "Hmac", "Rejected", "StandardWebhooks", "Stripe", "Verifier"]

Identity = tuple[str | None, str | None]


class Rejected(SwellError):
    """A request refused: ``status`` is the HTTP status to reply with (401 for a signature or a
    token), ``reason`` a short word the source counts (``"unsigned"``, ``"bad_signature"``,
    ``"stale"``, ``"bad_token"``), and the message is safe to send back: it never holds a
    secret or the expected signature."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class Verifier(Protocol):
    """A signature scheme: checks a request, then names the delivery once its body is parsed."""

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        """Return if the request is authentic and fresh at ``now`` (Unix seconds), else raise
        ``Rejected``. ``headers`` have lower-case names; ``body`` is the raw body."""

    def identity(self, headers: Mapping[str, str], data: Any) -> Identity:
        """``(delivery id, event type)`` as the sender names them, either ``None`` if it does
        not: the id is what a retried delivery is recognised by. ``data`` is the parsed JSON
        body, or the bytes if it was not JSON."""


def _secrets(secret: str | Sequence[str], name: str) -> tuple[str, ...]:
    """One secret or several (a rotation), each a non-empty string."""
    out = (secret,) if isinstance(secret, str) else tuple(secret)
    if not out or not all(isinstance(s, str) and s for s in out):
        raise ConfigError(f"{name} must be a non-empty string or a list of them")
    return out


def _header(headers: Mapping[str, str], name: str, scheme: str) -> str:
    value = headers.get(name, "").strip()
    if not value:
        raise Rejected(401, "unsigned", f"missing {name} header ({scheme} signature)")
    return value


def _malformed(message: str) -> Rejected:
    return Rejected(401, "bad_signature", message)


def _mismatch(scheme: str) -> Rejected:
    return Rejected(401, "bad_signature", f"{scheme} signature does not match the body")


def _any_match(expected: Iterable[bytes], given: Sequence[bytes]) -> bool:
    """Whether any expected digest equals any given one, each pair compared in constant time
    (every pair is compared: how many secrets or signatures matched is not timed either)."""
    found = False
    for e in expected:
        for g in given:
            found |= hmac.compare_digest(e, g)
    return found


def _timestamp(raw: str, header: str) -> float:
    try:
        return float(int(raw))
    except ValueError:
        raise _malformed(f"{header} timestamp {raw[:20]!r} is not whole Unix seconds") from None


def _check_fresh(ts: float, now: float, tolerance_s: float) -> None:
    """Refuse a signature older than ``tolerance_s``, or as far in the future (a clock ahead of
    ours by more than the tolerance is as suspect as a replay)."""
    age = now - ts
    if age > tolerance_s:
        raise Rejected(401, "stale", f"signature timestamp is {age:.0f} s old, "
                                     f"over the {tolerance_s:g} s tolerance")
    if -age > tolerance_s:
        raise Rejected(401, "stale", f"signature timestamp is {-age:.0f} s in the future, "
                                     f"over the {tolerance_s:g} s tolerance")


def _hex(value: str) -> bytes | None:
    if not value:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def _b64(value: str) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _mac(key: bytes, content: bytes, digest: str = "sha256") -> bytes:
    return hmac.new(key, content, digest).digest()


class Stripe:
    """Stripe's ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]``: HMAC-SHA256 of
    ``"{t}.{body}"``. The key is the endpoint's ``whsec_...`` secret as UTF-8 bytes, prefix and
    all: Stripe never decodes it (unlike Standard Webhooks, whose secrets look alike).
    Signatures other than ``v1`` (Stripe's test-mode ``v0``) are ignored."""

    def __init__(self, secret: str | Sequence[str], tolerance: Duration = "5m") -> None:
        self._keys = tuple(s.encode() for s in _secrets(secret, "Stripe secret"))
        self.tolerance_s = seconds(tolerance, name="tolerance", positive=True)

    def __repr__(self) -> str:
        return f"Stripe(secrets={len(self._keys)}, tolerance_s={self.tolerance_s:g})"

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        value = _header(headers, "stripe-signature", "Stripe")
        t, signatures = self._parse(value)
        signed = t.encode() + b"." + body
        if not _any_match((_mac(k, signed) for k in self._keys), signatures):
            raise _mismatch("Stripe")
        # checked after the signature, so "stale" means an authentic but old (replayed) request
        _check_fresh(_timestamp(t, "Stripe-Signature"), now, self.tolerance_s)

    @staticmethod
    def _parse(value: str) -> tuple[str, list[bytes]]:
        t: str | None = None
        signatures: list[bytes] = []
        for item in value.split(","):
            name, eq, v = item.strip().partition("=")
            if not eq:
                raise _malformed(f"Stripe-Signature item {item.strip()[:20]!r} is not name=value")
            if name == "t":
                t = v
            elif name == "v1":
                digest = _hex(v)
                if digest is None:
                    raise _malformed("Stripe-Signature v1 is not hexadecimal")
                signatures.append(digest)
        if t is None:
            raise _malformed("Stripe-Signature has no t=<timestamp>")
        if not signatures:
            raise _malformed("Stripe-Signature has no v1=<signature>")
        return t, signatures

    def identity(self, headers: Mapping[str, str], data: Any) -> Identity:
        if not isinstance(data, dict):
            return None, None
        return _str(data.get("id")), _str(data.get("type"))


class GitHub:
    """GitHub's ``X-Hub-Signature-256: sha256=<hex>``: HMAC-SHA256 of the body. The scheme has
    no timestamp, so nothing stops a replay but the delivery id (``X-GitHub-Delivery``), which
    the source deduplicates on."""

    def __init__(self, secret: str | Sequence[str]) -> None:
        self._keys = tuple(s.encode() for s in _secrets(secret, "GitHub secret"))

    def __repr__(self) -> str:
        return f"GitHub(secrets={len(self._keys)})"

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        value = _header(headers, "x-hub-signature-256", "GitHub")
        algorithm, eq, hexdigest = value.partition("=")
        digest = _hex(hexdigest) if eq and algorithm == "sha256" else None
        if digest is None:
            raise _malformed("X-Hub-Signature-256 is not sha256=<hex>")
        if not _any_match((_mac(k, body) for k in self._keys), [digest]):
            raise _mismatch("GitHub")

    def identity(self, headers: Mapping[str, str], data: Any) -> Identity:
        return headers.get("x-github-delivery"), headers.get("x-github-event")


class StandardWebhooks:
    """Standard Webhooks (https://www.standardwebhooks.com, used by Svix and others): headers
    ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64>`` entries
    separated by spaces; other versions, such as the asymmetric ``v1a``, are ignored), over
    ``"{id}.{timestamp}.{body}"`` with HMAC-SHA256. The secret is ``whsec_`` and base64: the
    spec keys the HMAC with the *decoded* bytes (the prefix is optional, as in its libraries)."""

    def __init__(self, secret: str | Sequence[str], tolerance: Duration = "5m") -> None:
        self._keys = tuple(_whsec(s) for s in _secrets(secret, "Standard Webhooks secret"))
        self.tolerance_s = seconds(tolerance, name="tolerance", positive=True)

    def __repr__(self) -> str:
        return f"StandardWebhooks(secrets={len(self._keys)}, tolerance_s={self.tolerance_s:g})"

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        value = _header(headers, "webhook-signature", "Standard Webhooks")
        msg_id, ts = headers.get("webhook-id", "").strip(), headers.get("webhook-timestamp", "").strip()
        if not msg_id or not ts:
            raise _malformed("webhook-signature needs the webhook-id and webhook-timestamp headers")
        entries = [e.partition(",") for e in value.split()]
        v1 = [sig for version, _, sig in entries if version == "v1"]
        if not v1:
            raise _malformed("webhook-signature has no v1,<base64> entry")
        signatures = [d for d in map(_b64, v1) if d is not None]
        if not signatures:
            raise _malformed("webhook-signature v1 entries are not base64")
        signed = f"{msg_id}.{ts}.".encode() + body
        if not _any_match((_mac(k, signed) for k in self._keys), signatures):
            raise _mismatch("Standard Webhooks")
        _check_fresh(_timestamp(ts, "webhook-timestamp"), now, self.tolerance_s)

    def identity(self, headers: Mapping[str, str], data: Any) -> Identity:
        kind = _str(data.get("type")) if isinstance(data, dict) else None
        return headers.get("webhook-id"), kind


def _whsec(secret: str) -> bytes:
    key = _b64(secret.removeprefix("whsec_"))
    if not key:
        raise ConfigError("a Standard Webhooks secret is 'whsec_' then base64; this one is not")
    return key


class Hmac:
    """Any sender that puts an HMAC of the body in one header: ``Hmac("x-signature", secret,
    prefix="sha256=")``. The key is the secret's UTF-8 bytes; ``algorithm`` is any ``hashlib``
    name; the header may carry several signatures, separated by commas or spaces. No timestamp:
    use a scheme that has one when the sender offers it. ``id_header`` names the header with the
    sender's delivery id, if it sends one (a retried delivery is then stored once), and
    ``type_header`` the one with the event's type."""

    def __init__(self, header: str, secret: str | Sequence[str], algorithm: str = "sha256",
                 prefix: str = "", encoding: Literal["hex", "base64"] = "hex", *,
                 id_header: str | None = None, type_header: str | None = None) -> None:
        if not header:
            raise ConfigError("Hmac needs the header that carries the signature")
        try:
            hmac.new(b"", b"", algorithm).digest()
        except (ValueError, TypeError):
            raise ConfigError(f"unknown HMAC algorithm {algorithm!r} (like 'sha256', 'sha1')") from None
        if encoding not in ("hex", "base64"):
            raise ConfigError(f"Hmac encoding must be 'hex' or 'base64', not {encoding!r}")
        self.header = header.lower()
        self.algorithm = algorithm
        self.prefix = prefix
        self.encoding = encoding
        self.id_header = None if id_header is None else id_header.lower()
        self.type_header = None if type_header is None else type_header.lower()
        self._keys = tuple(s.encode() for s in _secrets(secret, "Hmac secret"))
        self._decode: Callable[[str], bytes | None] = _hex if encoding == "hex" else _b64

    def __repr__(self) -> str:
        return (f"Hmac(header={self.header!r}, algorithm={self.algorithm!r}, prefix={self.prefix!r}, "
                f"encoding={self.encoding!r}, secrets={len(self._keys)})")

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        value = _header(headers, self.header, "HMAC")
        signatures: list[bytes] = []
        # several signatures are separated by commas or spaces, unless the prefix has one itself
        items = [value] if {",", " "} & set(self.prefix) else value.replace(",", " ").split()
        for item in items:
            digest = self._decode(item[len(self.prefix):]) if item.startswith(self.prefix) else None
            if digest is None:
                raise _malformed(f"{self.header} is not {self.prefix}<{self.encoding} digest>")
            signatures.append(digest)
        if not _any_match((_mac(k, body, self.algorithm) for k in self._keys), signatures):
            raise _mismatch("HMAC")

    def identity(self, headers: Mapping[str, str], data: Any) -> Identity:
        return (None if self.id_header is None else headers.get(self.id_header),
                None if self.type_header is None else headers.get(self.type_header))


class Bearer:
    """A shared token in ``Authorization: Bearer <token>``, as MinIO's webhook target sends it
    (its ``auth_token``). Not a signature: the body is not covered, so use it only over TLS."""

    def __init__(self, token: str | Sequence[str]) -> None:
        # compared as SHA-256 digests: equal lengths, so the time taken says nothing of the length
        self._digests = tuple(hashlib.sha256(t.encode()).digest()
                              for t in _secrets(token, "Bearer token"))

    def __repr__(self) -> str:
        return f"Bearer(tokens={len(self._digests)})"

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        value = headers.get("authorization", "").strip()
        if not value:
            raise Rejected(401, "unsigned", "missing authorization header (Bearer token)")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Rejected(401, "bad_token", "authorization is not 'Bearer <token>'")
        given = hashlib.sha256(token.strip().encode()).digest()
        if not _any_match(self._digests, [given]):
            raise Rejected(401, "bad_token", "bearer token does not match")

    def identity(self, headers: Mapping[str, str], data: Any) -> Identity:
        return None, None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
