"""Keys from an identity provider (bridge.io.jwks through bridge.auth): a
JWKS served by the test itself on 127.0.0.1, fetched with PyJWT's
PyJWKClient; a key rotation (new ``kid``) is picked up, fetches are
rate-limited, and while the provider cannot be reached the last good keys
still verify."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from structlog.testing import capture_logs
from websockets.sync.client import connect

from bridge.auth import AuthConfigError, Authenticator, Refused
from bridge.core.settings import AuthSettings
from bridge.io.jwks import JwksKeys
from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**public, "kid": kid, "use": "sig", "alg": "RS256"}


def token(key: rsa.RSAPrivateKey, kid: str, **claims: Any) -> str:
    body = {"exp": int(time.time()) + 600, "role": "client", "tenant": "t1", **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


class Provider:
    """A JWKS endpoint whose keys the test changes, counting requests."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests += 1
                body = json.dumps({"keys": provider.keys}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/certs"
        self._stopped = False
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def provider() -> Iterator[Provider]:
    running = Provider()
    yield running
    running.stop()


async def test_key_rotation_is_picked_up(provider: Provider) -> None:
    old, new = rsa_key(), rsa_key()
    provider.keys = [jwk(old, "k1")]
    auth = Authenticator(
        AuthSettings(algorithms=["RS256"], jwks_url=provider.url, jwks_min_interval_s=0)
    )
    assert auth.configured
    first = token(old, "k1")
    await auth.refresh_keys(first)
    assert auth.claims(first)["tenant"] == "t1"
    await auth.refresh_keys(first)  # known kid, fresh set: no request
    assert provider.requests == 1

    provider.keys = [jwk(old, "k1"), jwk(new, "k2")]
    rotated = token(new, "k2")
    with pytest.raises(Refused):
        auth.claims(rotated)  # not fetched yet
    await auth.refresh_keys(rotated)
    assert auth.claims(rotated)["role"] == "client"
    assert provider.requests == 2
    with pytest.raises(Refused):
        auth.claims(token(rsa_key(), "k1"))  # right kid, wrong key


async def test_unknown_kids_are_rate_limited_and_the_last_keys_outlive_the_uplink(
    provider: Provider,
) -> None:
    key = rsa_key()
    provider.keys = [jwk(key, "k1")]
    now = [1000.0]
    keys = JwksKeys(url=provider.url, refresh_s=300, min_interval_s=30, clock=lambda: now[0])
    await keys.refresh_for("k1")
    for kid in ("made-up-1", "made-up-2", "made-up-3"):
        await keys.refresh_for(kid)
    assert provider.requests == 1
    now[0] += 31
    await keys.refresh_for("made-up-4")
    assert provider.requests == 2

    provider.stop()  # the gateway's uplink goes down
    now[0] += 400  # the set is stale: it is fetched again, and that fails
    with capture_logs() as logs:
        await keys.refresh_for("k1")
        now[0] += 31
        await keys.refresh_for("k1")
    assert keys.fetches == 4
    assert [e["event"] for e in logs] == ["auth.jwks_unreachable"]  # said once
    assert keys.key("k1") is not None
    auth = Authenticator(AuthSettings(algorithms=["RS256"], jwks_url=provider.url))
    assert auth.jwks is not None
    auth.jwks.adopt(keys)  # a reload keeps them too
    assert auth.claims(token(key, "k1"))["tenant"] == "t1"


def test_jwks_file(tmp_path: Path) -> None:
    key = rsa_key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(key, "only")]}))
    auth = Authenticator(AuthSettings(algorithms=["RS256"], jwks_file=str(path)))
    assert auth.claims(token(key, "only"))["tenant"] == "t1"
    # A token without a kid is checked against the only key.
    plain = jwt.encode({"exp": int(time.time()) + 60, "role": "admin"}, key, algorithm="RS256")
    assert auth.claims(plain)["role"] == "admin"
    good = tmp_path / "good.json"
    good.write_text(path.read_text())
    path.write_text("{nope")
    with pytest.raises(AuthConfigError, match=r"auth\.jwks_file"):
        Authenticator(AuthSettings(algorithms=["RS256"], jwks_file=str(path)))
    assert [event for event, _ in Authenticator(AuthSettings(jwks_file=str(good))).warnings] == [
        "auth.jwks_unused",
        "auth.no_key",
    ]
    with pytest.raises(AuthConfigError, match="only one of"):
        Authenticator(AuthSettings(algorithms=["RS256"], jwks_file=str(path), jwks_url="http://x/"))


@pytest.mark.timeout(90)
def test_through_the_daemon(setup: BridgeSetup, provider: Provider) -> None:
    old, new = rsa_key(), rsa_key()
    provider.keys = [jwk(old, "k1")]
    path = setup.config(
        f"""
[auth]
algorithms = ["RS256"]
jwks_url = "{provider.url}"
jwks_min_interval_s = 0

[[streams]]
name = "portal"
auth = "jwt"
websocket_path = "/portal"
welcome = {{ type = "connected", tenant_id = "{{tenant}}" }}
identity = {{ role_claims = ["realm_access.roles"], client_roles = ["customer"] }}
"""
    )
    url = f"ws://127.0.0.1:{setup.listen_port}/portal?token="

    def tenant_seen(key: rsa.RSAPrivateKey, kid: str) -> Any:
        claims = {"realm_access": {"roles": ["customer"]}, "tenant": "t9"}
        with connect(url + token(key, kid, **claims)) as ws:
            return json.loads(ws.recv(timeout=15))["tenant_id"]

    with BridgeProcess(path) as bridge:
        bridge.wait_for_event("stream.listening", timeout=30)
        assert tenant_seen(old, "k1") == "t9"
        provider.keys = [jwk(old, "k1"), jwk(new, "k2")]  # the provider rotates
        assert tenant_seen(new, "k2") == "t9"
        provider.stop()  # the uplink goes down: the last keys still verify
        assert tenant_seen(new, "k2") == "t9"
        assert tenant_seen(old, "k1") == "t9"
