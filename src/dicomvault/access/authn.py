"""Authentication: turning the credentials a request carries into a `Principal`.

Accepted, in an `Authorization` header:

- `Basic user:password` for a local user (argon2 check);
- `Bearer dvt_...` for an API token or a login session token;
- `Bearer <JWT>` from the configured OIDC provider.

Without credentials, a server that does not require authentication (listening on
loopback only, by default) treats the caller as the local operator: an admin with
access to every site. Credentials that are given are always checked, so a wrong
password fails even there.

This module knows nothing of HTTP frameworks; doors pass the header value.
"""

from __future__ import annotations

import base64
import binascii
import logging

import jwt

from dicomvault.access import accounts
from dicomvault.access.oidc import OIDCVerifier
from dicomvault.access.policy import Principal, Role
from dicomvault.config import Settings
from dicomvault.errors import DicomVaultError
from dicomvault.index.db import Database

__all__ = ["AuthenticationFailed", "Authenticator", "local_operator", "parse_basic"]

log = logging.getLogger(__name__)


class AuthenticationFailed(DicomVaultError):
    """Missing or wrong credentials. `claimed` is who the caller said it was, if anyone."""

    def __init__(self, reason: str, claimed: str | None = None, *, given: bool = True) -> None:
        super().__init__(reason)
        self.claimed = claimed
        self.given = given  # False: no credentials at all (not a failed login)


def local_operator(address: str | None) -> Principal:
    return Principal(name="local", kind="local", role=Role.ADMIN, sites=None, address=address)


class Authenticator:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.required = settings.auth_required
        self.db = db
        self.oidc = OIDCVerifier(settings) if settings.oidc_enabled else None

    def authenticate(self, authorization: str | None, address: str | None) -> Principal:
        """Who the caller is; AuthenticationFailed when they cannot be let in."""
        if not authorization:
            if self.required:
                raise AuthenticationFailed("authentication required", given=False)
            return local_operator(address)
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            user, password = parse_basic(value)
            principal = accounts.check_password(self.db, user, password, address)
            if principal is None:
                raise AuthenticationFailed("wrong user name or password", user)
            return principal
        if scheme.lower() == "bearer":
            return self._bearer(value, address)
        raise AuthenticationFailed(f"unsupported authorization scheme {scheme!r}")

    def _bearer(self, token: str, address: str | None) -> Principal:
        if token.startswith(accounts.TOKEN_PREFIX):
            principal = accounts.check_token(self.db, token, address)
            if principal is None:
                claimed = token.split("_")[1] if token.count("_") >= 2 else None
                raise AuthenticationFailed(
                    "unknown, expired or revoked API token", f"token {claimed}"
                )
            return principal
        if self.oidc is None:
            raise AuthenticationFailed("bearer token is not an API token; OIDC is not configured")
        try:
            return self.oidc.verify(token, address)
        except (jwt.PyJWTError, ValueError) as exc:
            log.info("OIDC token refused: %s", exc)
            raise AuthenticationFailed(f"OIDC token refused: {exc}", _subject(token)) from exc


def parse_basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise AuthenticationFailed("malformed Basic credentials") from exc
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise AuthenticationFailed("malformed Basic credentials")
    return user, password


def _subject(token: str) -> str | None:
    """The unverified subject, only to say in the audit who a refused token claimed to be."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    sub = claims.get("preferred_username") or claims.get("sub")
    return f"claimed {sub}" if sub else None
