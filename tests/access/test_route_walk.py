"""Every HTTP route, taken from the app's own route table (a route added later is
walked too), refuses a caller without credentials and a user of another site, and
each refusal leaves exactly one audit record.

The other-site user is `carl` (site C of organization ORG2); every path names site
A's study, series and instance. A search route is not refused (carl may search) but
must return none of site A's data; that is checked too.
"""

from __future__ import annotations

import re

import httpx
from fastapi.routing import iter_route_contexts
from sqlalchemy import func, select

from dicomvault.access.audit import verify
from dicomvault.access.tables import audit
from dicomvault.dicomweb.access import AUTHENTICATED, PUBLIC, classify
from dicomvault.dicomweb.app import create_app
from dicomvault.synthetic import uid
from tests.access.conftest import World, basic, study_uid
from tests.support.dicom_files import STOW_TYPE, multipart
from tests.support.live import running_server

# Only these answer without credentials; they carry no patient data.
OPEN_WITHOUT_LOGIN = {("GET", "/health")}

_VALUES = {
    "study": study_uid("A"),
    "series": uid("site-A/series/0"),
    "sop": uid("site-A/series/0/instance/0"),
    "frame_list": "1",
    "path": "00280010",
    "site": "A",
    # The management API's own names.
    "name": "alice",
    "token_id": "1",
    "ae_title": "MOD_A",
    "route_id": "1",
    "job_id": "1",
}


def routes(world: World) -> list[tuple[str, str]]:
    """(method, path template) of every route the app serves."""
    app = create_app(world.archive)
    found = set()
    for context in iter_route_contexts(app.routes):
        for method in context.methods or ():
            if method != "HEAD":
                found.add((method, context.path))
    return sorted(found)


def _url(world: World, path: str) -> str:
    return world.url + re.sub(r"\{(\w+)(:\w+)?\}", lambda m: _VALUES[m.group(1)], path)


def _audit_rows(world: World) -> list[dict[str, object]]:
    with world.archive.db.read() as conn:
        return [dict(r) for r in conn.execute(select(audit).order_by(audit.c.seq)).mappings()]


def _send(method: str, url: str, headers: dict[str, str]) -> httpx.Response:
    body = None
    if method == "POST":
        # An instance of site A's study: a store must not slip it in either.
        from dicomvault.synthetic import instance_bytes

        data = instance_bytes(
            study_uid=_VALUES["study"], series_uid=uid("intruder/series"), sop_uid=uid("intr/1")
        )
        body = multipart(("application/dicom", data))
        headers = {**headers, "Content-Type": STOW_TYPE}
    return httpx.request(method, url, headers=headers, content=body, timeout=30)


def test_the_walk_covers_the_dicomweb_api(world: World) -> None:
    """The route table is read for real: the walk sees the routes the README promises."""
    found = routes(world)
    assert len(found) >= 20
    for expected in [
        ("GET", "/dicom-web/studies"),
        ("POST", "/dicom-web/studies"),
        ("POST", "/dicom-web/sites/{site}/studies"),
        ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}"),
        ("POST", "/auth/login"),
    ]:
        assert expected in found
    # Routes no rule names yet fall to admins only (walked like the others below).
    assert classify("GET", "/some/new/feature") is None


def test_every_route_refuses_a_caller_without_credentials(world: World) -> None:
    problems = []
    for method, path in routes(world):
        before = len(_audit_rows(world))
        response = _send(method, _url(world, path), {})
        after = _audit_rows(world)[before:]
        if (method, path) in OPEN_WITHOUT_LOGIN:
            if response.status_code != 200 or after:
                problems.append(f"{method} {path}: {response.status_code}, {len(after)} records")
            continue
        if response.status_code != 401:
            problems.append(f"{method} {path}: {response.status_code} {response.text[:100]}")
        if len(after) != 1 or after[0]["outcome"] == "success":
            problems.append(f"{method} {path}: audit {after}")
    assert problems == []
    assert verify(world.archive.db)[1] == []


def test_every_route_refuses_a_user_of_another_site(world: World) -> None:
    problems = []
    site_a = {study_uid("A"), "PA", "SiteA"}
    for method, path in routes(world):
        need = classify(method, path)
        before = len(_audit_rows(world))
        response = _send(method, _url(world, path), basic("carl"))
        after = _audit_rows(world)[before:]
        # (A store's refusal may repeat the study UID carl sent himself.)
        shown = response.text.replace(study_uid("A"), "") if method == "POST" else response.text
        # (A login's answer is a random secret, which may hold "PA" by chance.)
        if path == "/auth/login" and response.status_code == 200:
            shown = shown.replace(response.json()["token"], "")
        leaked = [word for word in site_a if word in shown]
        if leaked:
            problems.append(f"{method} {path}: shows {leaked}")
        if need is None:
            # A route without a rule of its own (such as the archive-wide change feed)
            # is for admins only: refused to carl, and the refusal audited.
            denied = [r for r in after if r["action"] == "permission-denied"]
            if response.status_code != 403 or len(after) != 1 or len(denied) != 1:
                problems.append(f"{method} {path}: {response.status_code}, audit {after}")
            continue
        if need in (PUBLIC, AUTHENTICATED) or (method == "GET" and "{study}" not in path):
            # Searches, whoami, login: answered, but with nothing of site A (checked above).
            if method == "GET" and response.status_code != 200:
                problems.append(f"{method} {path}: {response.status_code}")
            continue
        if "{study}" not in path and "{site}" not in path:
            # A store filed under carl's own site: the instance of site A's study in it is
            # refused by ingest, and the failed store is audited.
            if response.status_code != 409 or [r["outcome"] for r in after] != ["failure"]:
                problems.append(f"{method} {path}: {response.status_code}, audit {after}")
            continue
        if response.status_code not in (403, 404):
            problems.append(f"{method} {path}: {response.status_code} {response.text[:100]}")
        denied = [r for r in after if r["action"] == "permission-denied"]
        if len(after) != 1 or len(denied) != 1 or denied[0]["actor"] != "carl":
            problems.append(f"{method} {path}: audit {after}")
    assert problems == [], "\n".join(p[:300] for p in problems)
    # Nothing carl sent was stored in site A's study.
    with world.archive.db.read() as conn:
        from dicomvault.index.schema import instances

        assert conn.execute(select(func.count()).select_from(instances)).scalar_one() == 6


def test_a_route_without_a_rule_is_for_admins_only(world: World) -> None:
    """A feature that adds a route and forgets access control does not open a hole."""
    app = create_app(world.archive)

    @app.get("/experimental/{study}")
    async def experimental(study: str) -> dict[str, str]:
        return {"study": study}

    with running_server(world.archive, app) as url:
        target = f"{url}/experimental/{study_uid('A')}"
        assert httpx.get(target).status_code == 401
        assert httpx.get(target, headers=basic("ann")).status_code == 403
        assert httpx.get(target, headers=basic("admin")).status_code == 200
    rows = _audit_rows(world)
    assert [(r["actor"], r["action"], r["outcome"]) for r in rows] == [
        ("anonymous", "permission-denied", "denied"),
        ("ann", "permission-denied", "denied"),
        ("admin", "access", "success"),
    ]
