"""OIDC bearer tokens against a real JWKS endpoint served over HTTP on loopback.

The identity provider here is a test key pair; its public half is published as a
JWKS by a small HTTP server, fetched by the archive as it would fetch Keycloak's.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from dicomvault.access.audit import search
from dicomvault.config import Settings
from tests.access.conftest import World, served_world, study_uid

ISSUER = "https://idp.example.test/realms/hospital"
AUDIENCE = "dicomvault"


class Provider:
    """A key set published at `url`; `rotate()` adds a new signing key."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.fetches = 0
        self.add_key("k1")

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid, key in self.keys.items():
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            out.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": out}

    def token(self, kid: str = "k1", **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "u-123",
            "preferred_username": "dr.oidc",
            "iat": now,
            "exp": now + 300,
            "roles": ["radiologist"],
            "sites": ["A"],
            **overrides,
        }
        return jwt.encode(claims, self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def provider() -> Iterator[tuple[Provider, str]]:
    idp = Provider()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            idp.fetches += 1
            body = json.dumps(idp.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield idp, f"http://127.0.0.1:{server.server_address[1]}/certs"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def oidc_world(settings: Settings, provider: tuple[Provider, str]) -> Iterator[World]:
    _idp, jwks_url = provider
    with served_world(
        settings,
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_jwks_url=jwks_url,
        oidc_role_map={"pacs-readers": "radiologist"},
        oidc_jwks_refresh_seconds=0,
    ) as world:
        yield world


def _studies(world: World, token: str) -> httpx.Response:
    return httpx.get(
        f"{world.url}/dicom-web/studies",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
        timeout=30,
    )


def _uids(response: httpx.Response) -> set[str]:
    return {m["0020000D"]["Value"][0] for m in response.json()}


def test_a_valid_token_sees_its_sites_studies(
    oidc_world: World, provider: tuple[Provider, str]
) -> None:
    idp, _ = provider
    response = _studies(oidc_world, idp.token())
    assert response.status_code == 200, response.text
    # Site A's own study and site B's (shared in ORG1); never site C's (ORG2).
    assert _uids(response) == {study_uid("A"), study_uid("B")}
    who = httpx.get(
        f"{oidc_world.url}/auth/whoami",
        headers={"Authorization": f"Bearer {idp.token(roles=['pacs-readers'])}"},
        timeout=30,
    ).json()
    assert who == {"name": "dr.oidc", "kind": "oidc", "role": "radiologist", "sites": ["A"]}


def test_a_rotated_key_is_fetched_without_a_restart(
    oidc_world: World, provider: tuple[Provider, str]
) -> None:
    idp, _ = provider
    assert _studies(oidc_world, idp.token()).status_code == 200
    fetched = idp.fetches
    idp.add_key("k2")  # the provider rotates: new tokens carry kid k2
    assert _studies(oidc_world, idp.token(kid="k2")).status_code == 200
    assert idp.fetches == fetched + 1
    # A cached key is not fetched again.
    assert _studies(oidc_world, idp.token(kid="k2")).status_code == 200
    assert idp.fetches == fetched + 1


def _forged(idp: Provider) -> dict[str, str]:
    now = int(time.time())
    good = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "roles": ["admin"], "sites": ["A"]}
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        idp.keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    unsigned = jwt.encode({**good, "exp": now + 300}, None, algorithm="none")
    return {
        "expired": idp.token(exp=now - 60, iat=now - 600),
        "wrong audience": idp.token(aud="another-app"),
        "wrong issuer": idp.token(iss="https://evil.example.test"),
        "wrong signature": jwt.encode(
            {**good, "exp": now + 300}, stranger, algorithm="RS256", headers={"kid": "k1"}
        ),
        "alg none": unsigned,
        "HMAC with the public key": _hs256(good | {"exp": now + 300}, public_pem),
        "no role": idp.token(roles=["cleaner"]),
        "no site": idp.token(sites=[]),
        "garbage": "not.a.jwt",
    }


def _hs256(claims: dict[str, Any], key: bytes) -> str:
    """The classic algorithm-confusion forgery, built by hand (PyJWT refuses to)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def test_bad_tokens_are_refused_and_audited(
    oidc_world: World, provider: tuple[Provider, str]
) -> None:
    idp, _ = provider
    forged = _forged(idp)
    for case, token in forged.items():
        response = _studies(oidc_world, token)
        assert response.status_code == 401, f"{case}: {response.status_code} {response.text}"
        assert study_uid("A") not in response.text
    failed = search(oidc_world.archive.db, action="login-failed")
    assert len(failed) == len(forged)
    assert all(row["outcome"] == "failure" for row in failed)
