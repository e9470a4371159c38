"""Webhook signature schemes: the senders' published vectors, then every way a request is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

import pytest

from swell.core.errors import ConfigError
from swell.triggers.verify import Bearer, GitHub, Hmac, Rejected, StandardWebhooks, Stripe, Verifier


def rejected(verifier: Verifier, headers: dict[str, str], body: bytes, now: float) -> Rejected:
    with pytest.raises(Rejected) as info:
        verifier.verify(headers, body, now)
    assert info.value.status == 401
    return info.value


# --- GitHub: the vector in "Validating webhook deliveries"
# (https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries)

GH_SECRET = "It's a Secret to Everybody"
GH_BODY = b"Hello, World!"
GH_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_github_published_vector() -> None:
    GitHub(GH_SECRET).verify({"x-hub-signature-256": GH_SIG}, GH_BODY, 0.0)


def test_github_refusals() -> None:
    gh = GitHub(GH_SECRET)
    assert rejected(gh, {}, GH_BODY, 0.0).reason == "unsigned"
    assert rejected(gh, {"x-hub-signature-256": GH_SIG}, b"Hello, World?", 0.0).reason == "bad_signature"
    assert rejected(gh, {"x-hub-signature-256": "sha256=" + "0" * 64}, GH_BODY, 0.0).reason \
        == "bad_signature"
    for malformed in ("757107ea", "sha1=757107ea", "sha256=zz", "sha256="):
        err = rejected(gh, {"x-hub-signature-256": malformed}, GH_BODY, 0.0)
        assert err.reason == "bad_signature"
        assert "sha256=<hex>" in str(err)


def test_github_rotation_and_identity() -> None:
    gh = GitHub(["new secret", GH_SECRET])
    gh.verify({"x-hub-signature-256": GH_SIG}, GH_BODY, 0.0)
    headers = {"x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "x-github-event": "push"}
    assert gh.identity(headers, {}) == ("72d3162e-cc78-11e3-81ab-4c9367dc0958", "push")
    assert gh.identity({}, b"raw") == (None, None)


# --- Standard Webhooks: the test vector of the spec's reference libraries
# (https://github.com/standard-webhooks/standard-webhooks, libraries/*/tests)

SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TS = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def sw_headers(signature: str = SW_SIG, msg_id: str = SW_ID, ts: int = SW_TS) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_standard_webhooks_vector_computed_independently() -> None:
    key = base64.b64decode(SW_SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{SW_ID}.{SW_TS}.".encode() + SW_BODY, hashlib.sha256).digest()
    assert "v1," + base64.b64encode(mac).decode() == SW_SIG


def test_standard_webhooks_published_vector() -> None:
    StandardWebhooks(SW_SECRET).verify(sw_headers(), SW_BODY, SW_TS + 10)
    # the libraries take the secret without its prefix too
    StandardWebhooks(SW_SECRET.removeprefix("whsec_")).verify(sw_headers(), SW_BODY, SW_TS)


def test_standard_webhooks_several_signatures_and_versions() -> None:
    sw = StandardWebhooks(SW_SECRET)
    other = "v1," + base64.b64encode(b"x" * 32).decode()
    sw.verify(sw_headers(f"v1a,c29tZXRoaW5n {other} {SW_SIG}"), SW_BODY, SW_TS)
    # a v2 with the right bytes is not a v1: other versions are ignored
    err = rejected(sw, sw_headers(SW_SIG.replace("v1,", "v2,")), SW_BODY, SW_TS)
    assert err.reason == "bad_signature"
    assert "no v1" in str(err)


def test_standard_webhooks_refusals() -> None:
    sw = StandardWebhooks(SW_SECRET)
    assert rejected(sw, {}, SW_BODY, SW_TS).reason == "unsigned"
    assert rejected(sw, sw_headers(), b'{"test": 2432232315}', SW_TS).reason == "bad_signature"
    assert rejected(sw, sw_headers(msg_id="msg_other"), SW_BODY, SW_TS).reason == "bad_signature"
    # the timestamp is signed: moving it breaks the signature before it can be called stale
    assert rejected(sw, sw_headers(ts=SW_TS + 1), SW_BODY, SW_TS).reason == "bad_signature"
    missing = sw_headers()
    del missing["webhook-id"]
    assert "webhook-id" in str(rejected(sw, missing, SW_BODY, SW_TS))
    assert "base64" in str(rejected(sw, sw_headers("v1,***"), SW_BODY, SW_TS))


def test_standard_webhooks_tolerance_both_ways() -> None:
    sw = StandardWebhooks(SW_SECRET, tolerance="5m")
    sw.verify(sw_headers(), SW_BODY, SW_TS + 300)
    sw.verify(sw_headers(), SW_BODY, SW_TS - 300)
    old = rejected(sw, sw_headers(), SW_BODY, SW_TS + 301)
    assert (old.reason, "old" in str(old)) == ("stale", True)
    ahead = rejected(sw, sw_headers(), SW_BODY, SW_TS - 301)
    assert (ahead.reason, "future" in str(ahead)) == ("stale", True)


def test_standard_webhooks_rotation_and_identity() -> None:
    other = "whsec_" + base64.b64encode(b"another secret of 24 byt").decode()
    sw = StandardWebhooks([other, SW_SECRET])
    sw.verify(sw_headers(), SW_BODY, SW_TS)
    assert sw.identity(sw_headers(), {"type": "invoice.paid"}) == (SW_ID, "invoice.paid")
    assert sw.identity(sw_headers(), b"raw") == (SW_ID, None)


def test_standard_webhooks_secret_must_be_base64() -> None:
    with pytest.raises(ConfigError, match="base64"):
        StandardWebhooks("whsec_not base64!")


# --- Stripe (https://docs.stripe.com/webhooks#verify-manually): "t=...,v1=..." over "{t}.{body}",
# keyed with the whsec_ string itself

ST_SECRET = "whsec_test_secret"
ST_T = 1700000000
ST_BODY = b'{"id":"evt_1","type":"charge.succeeded"}'
# computed once with hmac.new(b"whsec_test_secret", b"1700000000." + ST_BODY, sha256).hexdigest()
ST_V1 = "c0475716eb2200f1fe97fcf35a3c05d1fd4f8ba9a07a596730c8d18bb87c0672"


def stripe_sig(body: bytes, t: int = ST_T, secret: str = ST_SECRET) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def test_stripe_fixed_vector() -> None:
    assert stripe_sig(ST_BODY) == ST_V1
    Stripe(ST_SECRET).verify({"stripe-signature": f"t={ST_T},v1={ST_V1}"}, ST_BODY, ST_T)


def test_stripe_secret_is_never_decoded() -> None:
    # base64-decoding the part after whsec_ (the Standard Webhooks rule) must not verify
    key = base64.b64decode("dGVzdF9zZWNyZXQ=")
    wrong = hmac.new(key, f"{ST_T}.".encode() + ST_BODY, hashlib.sha256).hexdigest()
    stripe = Stripe("whsec_dGVzdF9zZWNyZXQ=")
    assert rejected(stripe, {"stripe-signature": f"t={ST_T},v1={wrong}"}, ST_BODY, ST_T).reason \
        == "bad_signature"


def test_stripe_several_signatures_rotation_and_v0() -> None:
    stripe = Stripe(["whsec_old", ST_SECRET])
    header = f"t={ST_T},v1={'ab' * 32},v0={'cd' * 32},v1={ST_V1}"
    stripe.verify({"stripe-signature": header}, ST_BODY, ST_T)
    # during a rotation the new secret verifies too; the new one alone refuses the old signature
    new_sig = stripe_sig(ST_BODY, secret="whsec_new")
    Stripe(["whsec_new", ST_SECRET]).verify(
        {"stripe-signature": f"t={ST_T},v1={new_sig}"}, ST_BODY, ST_T)
    assert rejected(Stripe("whsec_new"), {"stripe-signature": f"t={ST_T},v1={ST_V1}"}, ST_BODY, ST_T).reason \
        == "bad_signature"


def test_stripe_refusals() -> None:
    stripe = Stripe(ST_SECRET)
    good = f"t={ST_T},v1={ST_V1}"
    assert rejected(stripe, {}, ST_BODY, ST_T).reason == "unsigned"
    assert rejected(stripe, {"stripe-signature": good}, ST_BODY + b" ", ST_T).reason == "bad_signature"
    assert rejected(stripe, {"stripe-signature": f"t={ST_T + 1},v1={ST_V1}"}, ST_BODY, ST_T).reason \
        == "bad_signature"
    for malformed, says in ((f"v1={ST_V1}", "no t="), (f"t={ST_T}", "no v1="),
                            (f"t={ST_T},v0={ST_V1}", "no v1="), (f"t={ST_T},v1=xyz", "hexadecimal"),
                            ("garbage", "name=value")):
        err = rejected(stripe, {"stripe-signature": malformed}, ST_BODY, ST_T)
        assert err.reason == "bad_signature"
        assert says in str(err)


def test_stripe_tolerance_both_ways() -> None:
    stripe = Stripe(ST_SECRET, tolerance=60)
    header = {"stripe-signature": f"t={ST_T},v1={ST_V1}"}
    stripe.verify(header, ST_BODY, ST_T + 60)
    assert rejected(stripe, header, ST_BODY, ST_T + 61).reason == "stale"
    assert rejected(stripe, header, ST_BODY, ST_T - 61).reason == "stale"
    # a forged request is refused for its signature, whatever its age
    forged = {"stripe-signature": f"t={ST_T},v1={'00' * 32}"}
    assert rejected(stripe, forged, ST_BODY, ST_T + 3600).reason == "bad_signature"


def test_stripe_identity() -> None:
    stripe = Stripe(ST_SECRET)
    assert stripe.identity({}, {"id": "evt_1", "type": "charge.succeeded"}) == ("evt_1", "charge.succeeded")
    assert stripe.identity({}, b"not json") == (None, None)
    assert stripe.identity({}, {"id": 5}) == (None, None)


# --- Hmac, Bearer


def test_hmac_hex_with_prefix_and_base64() -> None:
    body = b'{"a": 1}'
    mac = hmac.new(b"s3cret", body, hashlib.sha1).digest()
    Hmac("X-Sig", "s3cret", algorithm="sha1", prefix="sha1=").verify(
        {"x-sig": "sha1=" + mac.hex()}, body, 0.0)
    b64 = Hmac("x-sig", ["other", "s3cret"], algorithm="sha1", encoding="base64")
    b64.verify({"x-sig": base64.b64encode(mac).decode()}, body, 0.0)
    b64.verify({"x-sig": "AAAA, " + base64.b64encode(mac).decode()}, body, 0.0)
    assert b64.identity({}, {"id": "x"}) == (None, None)
    spaced = Hmac("authorization", "s3cret", algorithm="sha1", prefix="HMAC ")
    spaced.verify({"authorization": "HMAC " + mac.hex()}, body, 0.0)


def test_hmac_refusals() -> None:
    body = b"payload"
    good = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    h = Hmac("x-sig", "s3cret", prefix="sha256=")
    assert rejected(h, {}, body, 0.0).reason == "unsigned"
    assert rejected(h, {"x-sig": "sha256=" + good}, body + b"!", 0.0).reason == "bad_signature"
    err = rejected(h, {"x-sig": good}, body, 0.0)
    assert (err.reason, "sha256=<hex digest>" in str(err)) == ("bad_signature", True)
    with pytest.raises(ConfigError, match="algorithm"):
        Hmac("x-sig", "s3cret", algorithm="nope")


def test_bearer() -> None:
    bearer = Bearer(["old-token", "minio-token"])
    bearer.verify({"authorization": "Bearer minio-token"}, b"{}", 0.0)
    bearer.verify({"authorization": "bearer old-token"}, b"{}", 0.0)
    assert rejected(bearer, {}, b"{}", 0.0).reason == "unsigned"
    assert rejected(bearer, {"authorization": "Bearer minio-tokeN"}, b"{}", 0.0).reason == "bad_token"
    assert rejected(bearer, {"authorization": "Basic bWluaW8="}, b"{}", 0.0).reason == "bad_token"
    assert rejected(bearer, {"authorization": "Bearer "}, b"{}", 0.0).reason == "bad_token"
    assert bearer.identity({}, {}) == (None, None)


# --- configuration and repr


@pytest.mark.parametrize("make", [
    lambda: Stripe("whsec_topsecretvalue"),
    lambda: GitHub("whsec_topsecretvalue"),
    lambda: StandardWebhooks("whsec_" + base64.b64encode(b"whsec_topsecretvalue").decode()),
    lambda: Hmac("x-sig", "whsec_topsecretvalue"),
    lambda: Bearer("whsec_topsecretvalue"),
])
def test_repr_hides_the_secret(make: Callable[[], Verifier]) -> None:
    verifier = make()
    text = repr(verifier)
    assert "topsecret" not in text
    assert "whsec" not in text
    assert text.startswith(type(verifier).__name__ + "(")


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError):
        GitHub("")
    with pytest.raises(ConfigError):
        Stripe([])
    with pytest.raises(ConfigError, match="tolerance"):
        Stripe("whsec_x", tolerance="soon")
    with pytest.raises(ConfigError, match="tolerance"):
        StandardWebhooks(SW_SECRET, tolerance=0)


def test_verifiers_satisfy_the_protocol() -> None:
    verifiers: list[Verifier] = [Stripe("a"), GitHub("a"), StandardWebhooks(SW_SECRET), Hmac("h", "a"),
                                 Bearer("a")]
    assert len(verifiers) == 5
