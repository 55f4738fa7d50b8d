"""Logging in over HTTP: `POST /auth/login` trades a user name and password (HTTP Basic)
for a session token that expires after `session_hours`; `GET /auth/whoami` says who
the presented credentials belong to. Both are audited (login, failed login)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, HTTPException, Request

from dicomvault.access import accounts
from dicomvault.access.audit import AuditAction, AuditEvent, Outcome
from dicomvault.access.authn import AuthenticationFailed, parse_basic
from dicomvault.archive import Archive
from dicomvault.dicomweb.access import AccessContext
from dicomvault.dicomweb.threads import in_thread

__all__ = ["router"]

router = APIRouter()


@router.post("/auth/login")
async def login(request: Request) -> dict[str, str | None]:
    archive: Archive = request.app.state.archive
    address = request.client.host if request.client else None
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    user: str | None = None
    principal = None
    reason = "send the user name and password as HTTP Basic credentials"
    if scheme.lower() == "basic":
        try:
            user, password = parse_basic(value.strip())
        except AuthenticationFailed as exc:
            reason = str(exc)
        else:
            principal = await in_thread(
                accounts.check_password, archive.db, user, password, address
            )
            reason = "wrong user name or password"
    ok = principal is not None
    await in_thread(
        archive.auditor.record,
        AuditEvent(
            actor=user or "anonymous",
            actor_kind="user" if ok else "anonymous",
            door="dicomweb",
            action=AuditAction.LOGIN if ok else AuditAction.LOGIN_FAILED,
            outcome=Outcome.SUCCESS if ok else Outcome.FAILURE,
            address=address,
            detail={} if ok else {"reason": reason},
        ),
    )
    if principal is None or user is None:
        raise HTTPException(401, reason, headers={"WWW-Authenticate": 'Basic realm="dicomvault"'})
    lifetime = timedelta(hours=archive.settings.session_hours)
    issued = await in_thread(
        accounts.issue_token, archive.db, user, name="session", lifetime=lifetime
    )
    expires = issued.expires_at.isoformat() if issued.expires_at else None
    return {"token": issued.secret, "token_type": "Bearer", "expires_at": expires}


@router.get("/auth/whoami")
async def whoami(request: Request) -> dict[str, object]:
    context: AccessContext = request.state.access
    principal = context.principal
    return {
        "name": principal.name,
        "kind": principal.kind,
        "role": principal.role.value,
        "sites": sorted(principal.sites) if principal.sites is not None else None,
    }
