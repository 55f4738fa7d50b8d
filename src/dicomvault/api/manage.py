"""The management API under `/api`: sites, users and tokens, known AEs and routes, jobs,
and the audit trail, over HTTP for consoles and provisioning scripts.

Every route here is for an admin of every site: the access guard already refuses any
route outside DICOMweb to anyone but an admin (and writes one audit record per
request, refusals included); `_admin_of_all` also refuses an admin limited to some
sites, since these objects span sites. Bad input is a 400/404/409 with the reason, and
changes nothing. Each route is a thin door onto the same functions as the
`dicomvault` command.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from dicomvault.access import accounts, audit
from dicomvault.access.policy import Role
from dicomvault.archive import Archive
from dicomvault.dicomweb.threads import in_thread
from dicomvault.dimse import registry
from dicomvault.jobs import queue

__all__ = ["router"]


def _admin_of_all(request: Request) -> None:
    access = getattr(request.state, "access", None)
    if access is not None and access.sites is not None:
        raise HTTPException(403, "the management API is for admins of every site")


router = APIRouter(prefix="/api", dependencies=[Depends(_admin_of_all)])


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


async def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking management function; its refusals become 400/404/409."""
    try:
        return await in_thread(function, *args, **kwargs)
    except accounts.AccountError as exc:
        text = str(exc)
        status = 404 if text.startswith("no ") else 409 if "already" in text else 400
        raise HTTPException(status, text) from exc
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc


# -- sites ---------------------------------------------------------------------------------


class NewSite(BaseModel):
    code: str
    name: str = ""
    organization: str = ""
    share: bool = Field(False, description="Let the organization's other sites read it.")


@router.get("/sites")
async def list_sites(request: Request) -> list[dict[str, Any]]:
    rows = await _call(accounts.list_sites, _archive(request).db)
    return [{k: v for k, v in row.items() if k != "id"} for row in rows]


@router.post("/sites", status_code=201)
async def add_site(request: Request, site: NewSite) -> dict[str, str]:
    await _call(
        accounts.add_site,
        _archive(request).db,
        site.code,
        name=site.name,
        organization=site.organization,
        org_shared=site.share,
    )
    return {"code": site.code}


# -- users and tokens ------------------------------------------------------------------------


class NewUser(BaseModel):
    name: str
    role: str
    site: str | None = None
    password: str | None = Field(None, min_length=8)


class NewToken(BaseModel):
    name: str = "api"
    days: float | None = Field(None, gt=0, description="Lifetime; none: until revoked.")


@router.get("/users")
async def list_users(request: Request) -> list[dict[str, Any]]:
    users = await _call(accounts.list_users, _archive(request).db)
    return [
        {"name": u.name, "role": u.role.value, "site": u.site, "disabled": u.disabled}
        for u in users
    ]


@router.post("/users", status_code=201)
async def add_user(request: Request, user: NewUser) -> dict[str, str]:
    try:
        role = Role.parse(user.role)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    await _call(
        accounts.add_user,
        _archive(request).db,
        user.name,
        role=role,
        site=user.site,
        password=user.password,
    )
    return {"name": user.name}


@router.post("/users/{name}/disable")
async def disable_user(request: Request, name: str) -> dict[str, Any]:
    await _call(accounts.set_disabled, _archive(request).db, name, True)
    return {"name": name, "disabled": True}


@router.post("/users/{name}/enable")
async def enable_user(request: Request, name: str) -> dict[str, Any]:
    await _call(accounts.set_disabled, _archive(request).db, name, False)
    return {"name": name, "disabled": False}


@router.post("/users/{name}/tokens", status_code=201)
async def issue_token(request: Request, name: str, token: NewToken) -> dict[str, Any]:
    lifetime = timedelta(days=token.days) if token.days else None
    issued = await _call(
        accounts.issue_token, _archive(request).db, name, name=token.name, lifetime=lifetime
    )
    return {
        "id": issued.id,
        "token": issued.secret,  # shown this once; only its hash is kept
        "expires_at": issued.expires_at.isoformat() if issued.expires_at else None,
    }


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(request: Request, token_id: int) -> None:
    await _call(accounts.revoke_token, _archive(request).db, token_id)


# -- known AEs and routes ----------------------------------------------------------------------


class KnownAE(BaseModel):
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tls: bool = False
    site: str | None = None
    may_store: bool = True
    may_query: bool = True
    may_retrieve: bool = True


class NewRoute(BaseModel):
    from_aet: str
    to_aet: str


def _title(value: str) -> str:
    title = value.strip()
    if not registry.valid_ae_title(title):
        raise HTTPException(400, f"invalid AE title {value!r}: 1-16 ASCII characters, no '\\'")
    return title


@router.get("/aets")
async def list_aets(request: Request) -> list[dict[str, Any]]:
    known = await _call(registry.all_known, _archive(request).db)
    return [
        {
            "ae_title": ae.ae_title,
            "host": ae.host,
            "port": ae.port,
            "tls": ae.tls,
            "site": ae.site,
            "may_store": ae.may_store,
            "may_query": ae.may_query,
            "may_retrieve": ae.may_retrieve,
        }
        for ae in known
    ]


@router.put("/aets/{ae_title}")
async def put_aet(request: Request, ae_title: str, ae: KnownAE) -> dict[str, str]:
    title = _title(ae_title)
    if ae.port is not None and ae.host is None:
        raise HTTPException(400, "a port needs a host: where does the peer listen?")
    db = _archive(request).db
    if ae.site is not None:
        codes = {row["code"] for row in await _call(accounts.list_sites, db)}
        if ae.site not in codes:
            raise HTTPException(404, f"no site {ae.site}")
    await _call(
        registry.add,
        db,
        registry.KnownAE(
            title, ae.host, ae.port, ae.tls, ae.site, ae.may_store, ae.may_query, ae.may_retrieve
        ),
    )
    return {"ae_title": title}


@router.delete("/aets/{ae_title}", status_code=204)
async def delete_aet(request: Request, ae_title: str) -> None:
    if not await _call(registry.remove, _archive(request).db, ae_title.strip()):
        raise HTTPException(404, f"{ae_title} is not a known AE")


@router.get("/routes")
async def list_routes(request: Request) -> list[dict[str, Any]]:
    routes = await _call(registry.all_routes, _archive(request).db)
    return [{"id": r.id, "from_aet": r.from_aet, "to_aet": r.to_aet} for r in routes]


@router.post("/routes", status_code=201)
async def add_route(request: Request, route: NewRoute) -> dict[str, Any]:
    source, target = _title(route.from_aet), _title(route.to_aet)
    db = _archive(request).db
    destination = await _call(registry.find, db, target)
    if destination is None or destination.host is None or destination.port is None:
        raise HTTPException(404, f"{target} is not a known AE with a host and port")
    return {"id": await _call(registry.add_route, db, source, target)}


@router.delete("/routes/{route_id}", status_code=204)
async def delete_route(request: Request, route_id: int) -> None:
    if not await _call(registry.remove_route, _archive(request).db, route_id):
        raise HTTPException(404, f"no route {route_id}")


# -- jobs ------------------------------------------------------------------------------------


def _job(job: queue.Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "last_error": job.last_error,
        "payload": job.payload,
    }


@router.get("/jobs")
async def list_jobs(
    request: Request,
    state: Literal["pending", "running", "done", "dead"] | None = None,
    kind: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    found = await _call(queue.list_jobs, _archive(request).db, state=state, kind=kind, limit=limit)
    return [_job(job) for job in found]


@router.post("/jobs/{job_id}/retry")
async def retry_job(request: Request, job_id: int) -> dict[str, Any]:
    db = _archive(request).db
    if await _call(queue.get_job, db, job_id) is None:
        raise HTTPException(404, f"no job {job_id}")
    await _call(queue.retry, db, job_id)
    return {"id": job_id, "state": "pending"}


# -- the audit trail ---------------------------------------------------------------------------


@router.get("/audit")
async def search_audit(
    request: Request,
    actor: str | None = None,
    patient_id: str | None = None,
    study_uid: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_seq: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """Audit records, oldest first (page with `after_seq`); this read is itself audited."""
    rows = await _call(
        audit.search,
        _archive(request).db,
        actor=actor,
        patient_id=patient_id,
        study_uid=study_uid,
        action=action,
        since=since,
        until=until,
        after_seq=after_seq,
        limit=limit,
    )
    return [audit.as_json(row) for row in rows]
