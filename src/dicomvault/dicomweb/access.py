"""The HTTP door's access control: every route passes `guard`, every outcome is audited.

`guard` is an app-wide dependency, so a route added later is covered without being
named here (a plain Starlette route, which FastAPI's dependencies do not reach, calls
`guard_at` or `admitted` itself, as STOW-RS does): it authenticates
the caller, classifies the route (`classify`: public, authenticated-only, or an
`Action`; a route it cannot classify needs MANAGE), asks the one policy function (a
route without a rule is for admins only), and leaves an `AccessContext` in
`request.state` for the routes (sites a search is limited to, the site a store goes
to).

`AuditMiddleware` writes one audit record per request that reached a route
(success or failure, with its status code), unless the route wrote it itself
(`record_request`); refusals and failed logins are recorded by `guard` itself, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomvault.access.accounts import site_directory
from dicomvault.access.audit import AuditAction, AuditEvent, Outcome
from dicomvault.access.authn import AuthenticationFailed
from dicomvault.access.ownership import study_owner
from dicomvault.access.policy import Action, Principal, decide, readable_sites
from dicomvault.access.sinks import Auditor
from dicomvault.archive import Archive
from dicomvault.dicomweb.threads import in_thread
from dicomvault.index.db import Database
from dicomvault.model.uids import is_valid_uid

__all__ = [
    "AUTHENTICATED",
    "PUBLIC",
    "AccessContext",
    "AuditMiddleware",
    "admitted",
    "classify",
    "guard",
    "guard_at",
    "record_request",
    "route_path",
]

T = TypeVar("T")

PUBLIC = "public"  # no credentials needed, no patient data: health, login
AUTHENTICATED = "authenticated"  # any authenticated caller: service info, whoami
_PUBLIC_PATHS = frozenset({"/health", "/auth/login"})
_AUTHENTICATED_PATHS = frozenset({"/dicom-web", "/auth/whoami"})
_SEARCH_ENDS = frozenset({"studies", "series", "instances"})
_AUDITED = {
    Action.QUERY: AuditAction.QUERY,
    Action.RETRIEVE: AuditAction.RETRIEVE,
    Action.STORE: AuditAction.STORE,
    Action.DELETE: AuditAction.DELETE,
    Action.EXPORT: AuditAction.EXPORT,
    Action.MANAGE: AuditAction.ACCESS,
}
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="dicomvault", Bearer realm="dicomvault"'}


def classify(method: str, path: str) -> str | Action | None:
    """What a route (method + path template) needs; None: unknown, refused."""
    if path in _PUBLIC_PATHS:
        return PUBLIC
    if path in _AUTHENTICATED_PATHS:
        return AUTHENTICATED
    if not path.startswith("/dicom-web/"):
        return None
    if method == "POST":
        return Action.STORE
    if method == "DELETE":
        return Action.DELETE
    if method in ("GET", "HEAD"):
        return Action.QUERY if path.rsplit("/", 1)[-1] in _SEARCH_ENDS else Action.RETRIEVE
    return None


@dataclass
class AccessContext:
    principal: Principal
    action: Action | None
    sites: frozenset[str] | None  # what searches are limited to (None: no restriction)
    store_site: str | None = None  # the site new studies are filed under
    study_uid: str | None = None
    patient_id: str | None = None
    # Filled in by STOW-RS: study UID -> patient ID of what it stored.
    stored_studies: dict[str, str] = field(default_factory=dict)


def route_path(scope: Scope) -> str:
    """The path template of the matched route, prefixes of included routers included.

    FastAPI >= 0.16x keeps included routers whole and puts the effective route (with
    its full path) in the scope; older versions copy routes with the full path."""
    effective = (scope.get("fastapi") or {}).get("effective_route_context")
    path = getattr(effective, "path", None)
    if isinstance(path, str):
        return path
    route = scope.get("route")
    return route.path if isinstance(route, Route) else "(no route)"


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def guard(request: Request) -> None:
    """Authenticate and authorize the request for its route, or refuse (and audit it)."""
    await guard_at(request, route_path(request.scope))


async def guard_at(request: Request, path: str) -> None:
    """`guard` for the route whose path template is `path`: for plain Starlette
    routes, whose scope carries no route for `route_path` to read."""
    if classify(request.method, path) != PUBLIC:
        await admitted(request, path, _nothing)


def _nothing(_context: AccessContext) -> None:
    return None


async def admitted(request: Request, path: str, then: Callable[[AccessContext], T]) -> T:
    """`guard_at(request, path)`, then `then(context)` (blocking) on the same worker
    thread, the request's `AccessContext` left in `request.state` first; what `then`
    returned. Refusals are raised (and audited) as `guard_at` raises them, and `then`
    does not run. One trip to a worker thread for both: a single-instance STOW-RS
    request took 0.2 ms less CPU of 2.6 with its guard and its store on one trip
    (docs/performance.md). `path` must name a route that is not public."""
    archive: Archive = request.app.state.archive
    need = classify(request.method, path)
    address = _address(request)

    def admit_then() -> T:
        request.state.access = context = _admit(archive, request, need, address)
        return then(context)

    try:
        return await in_thread(admit_then)
    except AuthenticationFailed as exc:
        await _refuse_login(archive.auditor, request, exc, address)
        raise HTTPException(401, str(exc), headers=_CHALLENGE) from exc


def _admit(archive: Archive, request: Request, need: Any, address: str | None) -> AccessContext:
    """Who is asking (AuthenticationFailed if nobody valid) and what they may do here."""
    principal = archive.authenticator.authenticate(request.headers.get("authorization"), address)
    if need is None:
        # A route no rule names yet (added by a later feature): admins only, audited.
        need = Action.MANAGE
    if need == AUTHENTICATED:
        return AccessContext(principal, None, None)
    assert isinstance(need, Action)
    return _authorize(archive.db, request, principal, need)


def _authorize(
    db: Database, request: Request, principal: Principal, action: Action
) -> AccessContext:
    """The policy decision for one request; raises HTTPException (audited) on refusal."""
    raw_study = request.path_params.get("study")
    # A malformed UID names no study: the route answers 400 for it; the audit keeps
    # only valid UIDs in its study column (the raw path is in the record's detail).
    study_uid = raw_study if is_valid_uid(raw_study) else None
    with db.read() as conn:
        directory = site_directory(conn)
        found = study_owner(db, study_uid, conn) if study_uid else None
    sites = readable_sites(principal, directory)
    context = AccessContext(principal, action, sites)
    explicit_site = request.path_params.get("site")
    if action is Action.STORE:
        context.store_site = _store_site(principal, explicit_site, {s.code for s in directory})
    if found is not None:
        context.study_uid, context.patient_id = study_uid, found.patient_id
        decision = decide(principal, action, directory=directory, site=found.site)
        if not decision:
            _deny_sync(db, request, principal, context, decision.reason)
            if action is Action.STORE or sites is None or found.site in sites:
                raise HTTPException(403, decision.reason)
            raise HTTPException(404, "no such study")  # another site's: not even its existence
        return context
    if action is Action.STORE:
        decision = decide(principal, action, directory=directory, site=context.store_site)
    else:
        decision = decide(principal, action, directory=directory, any_site=True)
    if not decision:
        _deny_sync(db, request, principal, context, decision.reason)
        raise HTTPException(403, decision.reason)
    context.study_uid = study_uid
    return context


def _store_site(principal: Principal, explicit: str | None, known: set[str]) -> str | None:
    """Where new studies go: the site in the path, else the caller's only site."""
    if explicit is not None:
        if explicit not in known:
            raise HTTPException(404, f"no site {explicit}")
        return explicit
    if principal.sites is not None and len(principal.sites) == 1:
        return next(iter(principal.sites))
    return None


def _event(
    request: Request,
    principal: Principal | None,
    action: AuditAction,
    outcome: Outcome,
    detail: dict[str, Any],
    context: AccessContext | None = None,
    claimed: str | None = None,
) -> AuditEvent:
    return AuditEvent(
        actor=principal.name if principal else (claimed or "anonymous"),
        actor_kind=principal.kind if principal else "anonymous",
        door="dicomweb",
        action=action,
        outcome=outcome,
        address=_address(request),
        patient_id=context.patient_id if context else None,
        study_uid=context.study_uid if context else None,
        detail={"method": request.method, "path": request.url.path[:2000], **detail},
    )


def _deny_sync(
    db: Database,
    request: Request,
    principal: Principal,
    context: AccessContext | None,
    reason: str,
) -> None:
    archive: Archive = request.app.state.archive
    request.state.audited = True
    archive.auditor.record(
        _event(
            request,
            principal,
            AuditAction.PERMISSION_DENIED,
            Outcome.DENIED,
            {
                "reason": reason,
                "wanted": context.action.value if context and context.action else None,
            },
            context,
        )
    )


async def _deny(
    auditor: Auditor,
    request: Request,
    principal: Principal,
    context: AccessContext | None,
    reason: str,
) -> None:
    await in_thread(_deny_sync, auditor.db, request, principal, context, reason)


async def _refuse_login(
    auditor: Auditor, request: Request, exc: AuthenticationFailed, address: str | None
) -> None:
    request.state.audited = True
    action = AuditAction.LOGIN_FAILED if exc.given else AuditAction.PERMISSION_DENIED
    event = _event(
        request,
        None,
        action,
        Outcome.DENIED if not exc.given else Outcome.FAILURE,
        {"reason": str(exc)},
        claimed=exc.claimed,
    )
    await in_thread(auditor.record, event)


class AuditMiddleware:
    """One audit record for each request a route served (the outcome is its status)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        recorded = False

        async def capture(message: Message) -> None:
            # The record is written before the last body chunk leaves, so a client that
            # has its answer can rely on the audit trail already holding the request.
            nonlocal status, recorded
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                recorded = True
                await self._record(scope, status)
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except BaseException:
            if not recorded:  # the response broke off (an error mid-stream): a failure
                recorded = True
                await self._record(scope, 500)
            raise
        if not recorded:
            await self._record(scope, status)

    async def _record(self, scope: Scope, status: int) -> None:
        event = _request_event(scope, status)
        if event is not None:
            archive: Archive = scope["app"].state.archive
            await in_thread(archive.auditor.record, event)


def _request_event(scope: Scope, status: int) -> AuditEvent | None:
    """The audit record of a request a route served with `status`; None when there is
    none to write (a public route, or one already audited)."""
    state = scope.get("state") or {}
    context: AccessContext | None = state.get("access")
    if context is None or context.action is None or state.get("audited"):
        return None
    request = Request(scope)
    detail: dict[str, Any] = {"status": status}
    if request.url.query:
        detail["query"] = request.url.query
    if context.stored_studies:
        detail["studies"] = sorted(context.stored_studies)
        if context.study_uid is None and len(context.stored_studies) == 1:
            ((context.study_uid, context.patient_id),) = context.stored_studies.items()
    outcome = Outcome.SUCCESS if status < 400 else Outcome.FAILURE
    return _event(request, context.principal, _AUDITED[context.action], outcome, detail, context)


def record_request(scope: Scope, status: int) -> None:
    """Write the request's audit record (blocking: on a worker thread), once.

    A route may call it itself, from the worker thread its own work runs on, when it
    knows its status there (STOW-RS of one part): one thread hop fewer per request,
    and `AuditMiddleware` then finds the request audited."""
    event = _request_event(scope, status)
    if event is None:
        return
    archive: Archive = scope["app"].state.archive
    archive.auditor.record(event)
    scope["state"]["audited"] = True
