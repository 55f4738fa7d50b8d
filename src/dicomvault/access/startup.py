"""Secure defaults, checked before a server starts listening.

Listening on loopback only needs no login. Binding any other address requires
authentication to be on and usable (an enabled local user, or OIDC configured),
and a DICOM node there to accept known AEs only; otherwise the server refuses to
start and says what to do.
"""

from __future__ import annotations

from dicomvault.access import accounts
from dicomvault.config import Settings
from dicomvault.index.db import Database

__all__ = ["InsecureConfiguration", "check_secure_defaults"]


class InsecureConfiguration(Exception):
    """The server would expose patient data without authentication."""


def check_secure_defaults(settings: Settings, db: Database, *, dicom: bool = False) -> None:
    """Raise InsecureConfiguration when the server would serve patient data to anyone
    who can reach it (`dicom`: the DICOM node listens too)."""
    if settings.binds_loopback_only:
        return
    if dicom and settings.dicom_accepts_unknown_aes:
        raise InsecureConfiguration(
            f"refusing to listen for DICOM on {settings.host} accepting any calling AE "
            "(dicom_known_aes_only=false): any device that can reach the port could query "
            "and retrieve patient data. Register the peers (`dicomvault aets add`) and "
            "leave dicom_known_aes_only unset, or listen on 127.0.0.1."
        )
    if not settings.auth_required:
        raise InsecureConfiguration(
            f"refusing to listen on {settings.host} with authentication turned off "
            "(auth_enabled=false): anyone who can reach this address could read patient "
            "data. Listen on 127.0.0.1, or turn authentication on."
        )
    if not settings.oidc_enabled and not accounts.has_credentials(db):
        raise InsecureConfiguration(
            f"refusing to listen on {settings.host}: authentication is required there, but "
            "no one could log in. Add a user first (`dicomvault users add NAME --role admin`) "
            "or configure OIDC (DICOMVAULT_OIDC_ISSUER, _AUDIENCE, _JWKS_URL)."
        )
