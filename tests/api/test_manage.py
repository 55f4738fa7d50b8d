"""The management API (/api) over real HTTP: what an admin of every site can do, bad
input that changes nothing, and refusals to everyone else (each one audited)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from dicomvault.access import accounts, audit
from dicomvault.config import Settings
from dicomvault.dimse import registry
from dicomvault.jobs.queue import list_jobs
from tests.access.conftest import World, basic, served_world


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    with served_world(settings) as served:
        yield served


def _api(
    world: World, method: str, path: str, user: str = "admin", **kwargs: object
) -> httpx.Response:
    return httpx.request(
        method, f"{world.url}/api{path}", headers=basic(user), timeout=30, **kwargs
    )  # type: ignore[arg-type]


def test_sites_users_and_tokens(world: World) -> None:
    assert (
        _api(world, "POST", "/sites", json={"code": "D", "organization": "ORG1"}).status_code == 201
    )
    assert "D" in [s["code"] for s in _api(world, "GET", "/sites").json()]
    dora = {"name": "dora", "role": "technologist", "site": "D", "password": "long enough pw"}
    made = _api(world, "POST", "/users", json=dora)
    assert made.status_code == 201, made.text
    issued = _api(world, "POST", "/users/dora/tokens", json={"days": 1})
    assert issued.status_code == 201, issued.text
    token = issued.json()
    whoami = httpx.get(
        f"{world.url}/auth/whoami", headers={"Authorization": f"Bearer {token['token']}"}
    )
    assert whoami.json()["name"].startswith("dora")
    assert _api(world, "DELETE", f"/tokens/{token['id']}").status_code == 204
    revoked = httpx.get(
        f"{world.url}/auth/whoami", headers={"Authorization": f"Bearer {token['token']}"}
    )
    assert revoked.status_code == 401
    assert _api(world, "POST", "/users/dora/disable").json() == {"name": "dora", "disabled": True}
    assert (
        httpx.get(f"{world.url}/auth/whoami", headers=basic("dora", "long enough pw")).status_code
        == 401
    )


def test_aets_routes_and_jobs(world: World) -> None:
    put = _api(world, "PUT", "/aets/HSR_PACS", json={"host": "127.0.0.1", "port": 104, "site": "A"})
    assert put.status_code == 200, put.text
    assert registry.find(world.archive.db, "HSR_PACS") == registry.KnownAE(
        "HSR_PACS", "127.0.0.1", 104, site="A"
    )
    route = _api(world, "POST", "/routes", json={"from_aet": "RAJ_MR1", "to_aet": "HSR_PACS"})
    assert route.status_code == 201
    assert _api(world, "GET", "/routes").json() == [
        {"id": route.json()["id"], "from_aet": "RAJ_MR1", "to_aet": "HSR_PACS"}
    ]
    assert _api(world, "GET", "/jobs", params={"state": "dead"}).json() == []
    assert _api(world, "DELETE", "/aets/HSR_PACS").status_code == 204
    assert _api(world, "GET", "/routes").json() == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/sites", {"code": "A"}, 409),  # exists
        ("POST", "/sites", {"code": "bad code!"}, 400),
        ("POST", "/users", {"name": "x", "role": "wizard", "site": "A"}, 400),
        ("POST", "/users", {"name": "x", "role": "viewer", "site": "A", "password": "short"}, 422),
        ("POST", "/users", {"name": "x", "role": "viewer"}, 400),  # a viewer needs a site
        ("POST", "/users/nobody/disable", None, 404),
        ("POST", "/users/nobody/tokens", {}, 404),
        ("DELETE", "/tokens/999", None, 404),
        ("PUT", "/aets/WAY_TOO_LONG_AE_TITLE", {}, 400),
        ("PUT", "/aets/X", {"port": 104}, 400),  # a port without a host
        ("PUT", "/aets/X", {"site": "NOWHERE"}, 404),
        ("DELETE", "/aets/UNKNOWN", None, 404),
        ("POST", "/routes", {"from_aet": "A1", "to_aet": "UNKNOWN"}, 404),
        ("DELETE", "/routes/99", None, 404),
        ("POST", "/jobs/99/retry", None, 404),
        ("GET", "/jobs?state=sleeping", None, 422),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    world: World, method: str, path: str, body: object, status: int
) -> None:
    db = world.archive.db
    before = (accounts.list_sites(db), accounts.list_users(db), registry.all_known(db),
              registry.all_routes(db), list_jobs(db))  # fmt: skip
    response = (
        _api(world, method, path, json=body) if body is not None else _api(world, method, path)
    )
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    after = (accounts.list_sites(db), accounts.list_users(db), registry.all_known(db),
             registry.all_routes(db), list_jobs(db))  # fmt: skip
    assert after == before


@pytest.mark.parametrize("user", ["ann", "carl", "vic"])
def test_only_an_admin_of_every_site_may_manage(world: World, user: str) -> None:
    before = audit.count(world.archive.db)
    response = _api(world, "POST", "/sites", user=user, json={"code": "E"})
    assert response.status_code == 403
    assert "E" not in [s["code"] for s in accounts.list_sites(world.archive.db)]
    records = audit.search(world.archive.db, after_seq=0, limit=10_000)[before:]
    assert [r["action"] for r in records] == ["permission-denied"]


def test_a_site_admin_is_refused_too(world: World) -> None:
    accounts.add_user(
        world.archive.db, "sam", role=accounts.Role.ADMIN, site="A", password="pw-long-enough"
    )
    response = httpx.get(f"{world.url}/api/users", headers=basic("sam", "pw-long-enough"))
    assert response.status_code == 403
    assert "every site" in response.json()["detail"]


def test_the_audit_trail_is_searchable_and_reading_it_is_recorded(world: World) -> None:
    _api(world, "GET", "/sites")
    found = _api(world, "GET", "/audit", params={"actor": "admin", "limit": 1000}).json()
    assert any(r["detail"].get("path") == "/api/sites" for r in found)
    again = _api(world, "GET", "/audit", params={"actor": "admin", "limit": 1000}).json()
    assert any(r["detail"].get("path") == "/api/audit" for r in again)
