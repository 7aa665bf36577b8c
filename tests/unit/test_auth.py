"""Tokens -> principals, and every refusal with its close code and HTTP status."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bridge.auth import (
    AuthConfigError,
    Authenticator,
    Principal,
    Refusal,
    Refused,
    find_token,
    select_subprotocol,
)
from bridge.core.settings import AuthSettings

SECRET = "unit-test-secret-of-at-least-32-bytes!"


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def valid(**claims: Any) -> dict[str, Any]:
    return {"exp": int(time.time()) + 300, **claims}


def refusal_of(auth: Authenticator, token: str | None) -> Refusal:
    with pytest.raises(Refused) as caught:
        auth.verify(token)
    return caught.value.refusal


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(AuthSettings(jwt_secret=SECRET), environ={})


def test_refusals_map_to_the_close_codes_and_statuses_of_the_contract() -> None:
    table = {r.name: (r.close_code, r.http_status) for r in Refusal}
    assert table == {
        "UNAUTHENTICATED": (4001, 401),
        "FORBIDDEN": (4003, 403),
        "TOO_MANY": (4029, 429),
        "BAD_REQUEST": (4400, 400),
    }


def test_client_and_admin_tokens(auth: Authenticator) -> None:
    client = auth.verify(hs256(valid(role="client", tenant="t1", sub="dash-1")))
    assert client == Principal("client", "t1", "dash-1")
    assert not client.is_admin
    admin = auth.verify(hs256(valid(role="admin")))
    assert admin == Principal("admin", None, None)
    assert admin.is_admin


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "garbage",
        hs256(valid(role="client", tenant="t1"), secret="another-secret-of-32-bytes-or-more!!"),
        hs256({"exp": int(time.time()) - 5, "role": "client", "tenant": "t1"}),
        hs256({"role": "client", "tenant": "t1"}),  # no exp: tokens must expire
        jwt.encode(valid(role="admin"), key=None, algorithm="none"),  # type: ignore[arg-type]
        hs256(valid(role="client", tenant="t1"))[:-3] + "AAA",
    ],
    ids=["none", "empty", "garbage", "wrong-secret", "expired", "no-exp", "alg-none", "tampered"],
)
def test_missing_invalid_or_expired_tokens_are_4001(auth: Authenticator, token: str | None) -> None:
    assert refusal_of(auth, token) is Refusal.UNAUTHENTICATED


@pytest.mark.parametrize(
    "claims",
    [
        {"role": "viewer", "tenant": "t1"},
        {"tenant": "t1"},
        {"role": "client"},
        {"role": "client", "tenant": ""},
        {"role": "client", "tenant": ["t1"]},
        {"role": "admin", "tenant": 5},
    ],
)
def test_wrong_role_or_tenant_claims_are_4003(auth: Authenticator, claims: dict[str, Any]) -> None:
    assert refusal_of(auth, hs256(valid(**claims))) is Refusal.FORBIDDEN


def test_leeway_accepts_a_just_expired_token() -> None:
    auth = Authenticator(AuthSettings(jwt_secret=SECRET, leeway_s=30), environ={})
    token = hs256({"exp": int(time.time()) - 5, "role": "client", "tenant": "t1"})
    assert auth.verify(token).tenant == "t1"


def test_secret_from_the_environment() -> None:
    auth = Authenticator(AuthSettings(), environ={"EDGE_BRIDGE_JWT_SECRET": SECRET})
    assert auth.configured
    assert auth.verify(hs256(valid(role="admin"))).role == "admin"


def test_without_any_key_every_token_is_refused() -> None:
    auth = Authenticator(AuthSettings(), environ={})
    assert not auth.configured
    assert refusal_of(auth, hs256(valid(role="admin"))) is Refusal.UNAUTHENTICATED


def test_audience_and_issuer_are_checked_when_configured() -> None:
    auth = Authenticator(
        AuthSettings(jwt_secret=SECRET, audience="edge", issuer="https://idp"), environ={}
    )
    good = valid(role="admin", aud="edge", iss="https://idp")
    assert auth.verify(hs256(good)).is_admin
    assert refusal_of(auth, hs256({**good, "aud": "other"})) is Refusal.UNAUTHENTICATED
    assert refusal_of(auth, hs256({**good, "iss": "https://evil"})) is Refusal.UNAUTHENTICATED


def _write_public_key(path: Path, private_key: Any) -> Path:
    path.write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.mark.parametrize(
    ("algorithm", "make_key"),
    [
        ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
    ],
)
def test_public_key_algorithms(tmp_path: Path, algorithm: str, make_key: Any) -> None:
    private_key = make_key()
    key_file = _write_public_key(tmp_path / "key.pem", private_key)
    auth = Authenticator(
        AuthSettings(public_key_file=str(key_file), algorithms=[algorithm]), environ={}
    )
    token = jwt.encode(valid(role="client", tenant="t9"), private_key, algorithm=algorithm)
    assert auth.verify(token) == Principal("client", "t9", None)
    other = make_key()
    forged = jwt.encode(valid(role="admin"), other, algorithm=algorithm)
    assert refusal_of(auth, forged) is Refusal.UNAUTHENTICATED


def test_an_algorithm_not_listed_is_refused_even_with_a_key_for_it(tmp_path: Path) -> None:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = _write_public_key(tmp_path / "key.pem", private_key)
    auth = Authenticator(
        AuthSettings(jwt_secret=SECRET, public_key_file=str(key_file), algorithms=["RS256"]),
        environ={},
    )
    assert refusal_of(auth, hs256(valid(role="admin"))) is Refusal.UNAUTHENTICATED


def test_the_public_key_is_never_used_as_an_hmac_secret(tmp_path: Path) -> None:
    """The classic confusion: an HS256 token signed with the (public) PEM text."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = _write_public_key(tmp_path / "key.pem", private_key)
    auth = Authenticator(
        AuthSettings(public_key_file=str(key_file), algorithms=["RS256", "HS256"]), environ={}
    )
    # PyJWT refuses to sign with a PEM key as HMAC secret, so sign by hand.
    parts = ({"alg": "HS256", "typ": "JWT"}, valid(role="admin"))
    signing_input = b".".join(_b64(json.dumps(part).encode()) for part in parts)
    signature = hmac.new(key_file.read_bytes(), signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + _b64(signature)).decode()
    assert refusal_of(auth, forged) is Refusal.UNAUTHENTICATED


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (AuthSettings(algorithms=["HS999"]), "auth.algorithms"),
        (AuthSettings(algorithms=["none"]), "auth.algorithms"),
        (AuthSettings(algorithms=[]), "auth.algorithms"),
        (AuthSettings(public_key_file="/nonexistent/key.pem"), "auth.public_key_file"),
    ],
)
def test_unusable_settings_fail_at_start(settings: AuthSettings, message: str) -> None:
    with pytest.raises(AuthConfigError, match=message):
        Authenticator(settings, environ={})


def test_a_key_file_that_is_not_a_pem_key_fails_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    with pytest.raises(AuthConfigError, match=str(bad)):
        Authenticator(AuthSettings(public_key_file=str(bad)), environ={})


# --------------------------------------------------------------------------- where the token is
def test_token_from_query_then_header_then_subprotocol() -> None:
    assert find_token({"token": ["q.q.q"]}, {"authorization": "Bearer h.h.h"}, ["s.s.s"]) == "q.q.q"
    assert find_token({}, {"authorization": "bearer  h.h.h "}, ["bearer", "s.s.s"]) == "h.h.h"
    assert find_token({}, {}, ["bearer", "s.s.s"]) == "s.s.s"
    assert find_token({}, {"authorization": "Basic dXNlcjpwdw=="}, []) is None
    assert find_token({"token": [""]}, {}, ["chat"]) is None


def test_subprotocol_to_accept_so_browsers_keep_the_connection() -> None:
    assert select_subprotocol(["bearer", "a.b.c"]) == "bearer"
    assert select_subprotocol(["a.b.c"]) == "a.b.c"
    assert select_subprotocol(["chat"]) is None
    assert select_subprotocol([]) is None
