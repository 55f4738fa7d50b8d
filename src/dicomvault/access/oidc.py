"""OIDC bearer tokens: JWTs from an identity provider (Keycloak, Entra ID, Cognito, ...).

A token is accepted when its signature verifies against a key of the provider's JWKS
(fetched over HTTP and cached; a token naming an unknown key id refetches the set
once, so key rotation at the provider needs no restart), its algorithm is one of the
configured asymmetric ones (never `none`, never HMAC, which would let anyone holding
the public key sign), and its issuer, audience and expiry are right.

Claims become a principal by configuration: the roles claim (a string or a list;
values mapped through `oidc_role_map`, or taken as role names) and the sites claim
(a list of site codes, or one). A token granting no known role is refused.
"""

from __future__ import annotations

from typing import Any

import jwt

from dicomvault.access.policy import Principal, Role
from dicomvault.config import Settings

__all__ = ["OIDCVerifier"]

# Most privileged first: a subject holding several roles acts with the strongest.
_ORDER = (Role.ADMIN, Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.SERVICE, Role.VIEWER)


class OIDCVerifier:
    def __init__(self, settings: Settings) -> None:
        if not (settings.oidc_issuer and settings.oidc_audience and settings.oidc_jwks_url):
            raise ValueError("OIDC needs oidc_issuer, oidc_audience and oidc_jwks_url")
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.algorithms = list(settings.oidc_algorithms)
        self.roles_claim = settings.oidc_roles_claim
        self.sites_claim = settings.oidc_sites_claim
        self.role_map = {k: Role.parse(v) for k, v in settings.oidc_role_map.items()}
        self._jwks = jwt.PyJWKClient(
            settings.oidc_jwks_url,
            cache_keys=True,
            lifespan=settings.oidc_jwks_cache_seconds,
            timeout=10,
            cooldown_duration=settings.oidc_jwks_refresh_seconds,
        )

    def verify(self, token: str, address: str | None = None) -> Principal:
        """The principal a valid token speaks for; jwt.PyJWTError (with why) otherwise."""
        header = jwt.get_unverified_header(token)
        if header.get("alg") not in self.algorithms:
            raise jwt.InvalidAlgorithmError(f"algorithm {header.get('alg')!r} is not accepted")
        key = self._jwks.get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key.key,
            algorithms=self.algorithms,
            audience=self.audience,
            issuer=self.issuer,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
        role = self._role(claims.get(self.roles_claim))
        if role is None:
            raise jwt.InvalidTokenError(f"the token's {self.roles_claim!r} claim grants no role")
        sites = _strings(claims.get(self.sites_claim))
        if not sites and role is not Role.ADMIN:
            raise jwt.InvalidTokenError(f"the token's {self.sites_claim!r} claim names no site")
        name = str(claims.get("preferred_username") or claims["sub"])
        return Principal(
            name=name,
            kind="oidc",
            role=role,
            sites=frozenset(sites) if sites else None,
            address=address,
        )

    def _role(self, value: Any) -> Role | None:
        granted: set[Role] = set()
        for item in _strings(value):
            if item in self.role_map:
                granted.add(self.role_map[item])
                continue
            try:
                granted.add(Role.parse(item))
            except ValueError:
                continue
        return next((role for role in _ORDER if role in granted), None)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, str | int)]
    return []
