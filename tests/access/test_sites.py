"""Who sees what: site scoping and organization-wide sharing on every search and read,
no counts leaking across organizations, stores filed under the right site, and
tokens that expire, are revoked, or belong to a disabled user."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import select

from dicomvault.access import accounts
from dicomvault.index.schema import studies
from dicomvault.model.levels import Level
from dicomvault.query import QueryRequest, search
from dicomvault.synthetic import study_instances, uid
from tests.access.conftest import World, basic, study_uid
from tests.support.dicom_files import STOW_TYPE, multipart

JSON = {"Accept": "application/dicom+json"}


def _study_uids(world: World, user: str, path: str = "/dicom-web/studies") -> set[str]:
    response = httpx.get(f"{world.url}{path}", headers=basic(user) | JSON, timeout=30)
    assert response.status_code == 200, response.text
    return {m["0020000D"]["Value"][0] for m in response.json()}


def test_each_user_sees_own_and_shared_sites_only(world: World) -> None:
    a, b, c = study_uid("A"), study_uid("B"), study_uid("C")
    assert _study_uids(world, "admin") == {a, b, c}
    assert _study_uids(world, "ann") == {a, b}  # A, and B shares within ORG1
    assert _study_uids(world, "vic") == {b}  # A does not share
    assert _study_uids(world, "carl") == {c}  # ORG2: nothing of ORG1, though B shares
    assert _study_uids(world, "carl", "/dicom-web/instances") == {c}
    assert _study_uids(world, "vic", "/dicom-web/series") == {b}


def test_a_shared_study_can_be_read_by_another_site(world: World) -> None:
    url = f"{world.url}/dicom-web/studies/{study_uid('B')}/metadata"
    assert httpx.get(url, headers=basic("ann") | JSON).status_code == 200
    assert httpx.get(url, headers=basic("carl") | JSON).status_code == 404
    url = f"{world.url}/dicom-web/studies/{study_uid('A')}/metadata"
    assert httpx.get(url, headers=basic("vic") | JSON).status_code == 404


def test_no_count_of_another_organizations_patients(world: World) -> None:
    """A patient with studies at A and C: C's user sees one related study, not two."""
    from io import BytesIO

    from dicomvault.model.origin import Door, Origin

    for data in study_instances("pc-at-A", per_series=1, patient_id="PC"):
        world.archive.ingestor.ingest(BytesIO(data), origin=Origin(Door.API, site="A"))
    restricted = QueryRequest(Level.PATIENT, sites=frozenset({"C"}))
    [match] = search(world.archive.db, restricted, max_results=10).matches
    assert match["00201200"]["Value"] == [1]  # NumberOfPatientRelatedStudies
    everyone = QueryRequest(Level.PATIENT, filters={"00100020": "PC"})
    [match] = search(world.archive.db, everyone, max_results=10).matches
    assert match["00201200"]["Value"] == [2]
    nobody = QueryRequest(Level.PATIENT, sites=frozenset({"Z"}))
    assert search(world.archive.db, nobody, max_results=10).matches == []


def test_header_values_come_from_reachable_studies_only(world: World) -> None:
    """includefield at patient level reads a representative header: never another site's."""
    from io import BytesIO

    from dicomvault.model.origin import Door, Origin

    for name, site in (("px-at-A", "A"), ("px-at-C", "C")):  # A's first: the lower row ids
        for data in study_instances(
            name, per_series=1, patient_id="PX", study_description=f"SECRET {site}"
        ):
            world.archive.ingestor.ingest(BytesIO(data), origin=Origin(Door.API, site=site))
    description = "00081030"
    request = QueryRequest(
        Level.PATIENT,
        filters={"00100020": "PX"},
        include={description},
        sites=frozenset({"C"}),
    )
    [match] = search(world.archive.db, request, max_results=10).matches
    assert match[description]["Value"] == ["SECRET C"]


def _stow(world: World, user: str, name: str, path: str = "/dicom-web/studies") -> httpx.Response:
    [data] = list(study_instances(name, per_series=1))
    return httpx.post(
        f"{world.url}{path}",
        headers=basic(user) | {"Content-Type": STOW_TYPE},
        content=multipart(("application/dicom", data)),
        timeout=30,
    )


def _site_of(world: World, name: str) -> str | None:
    with world.archive.db.read() as conn:
        return conn.execute(
            select(studies.c.site).where(studies.c.study_uid == uid(f"{name}/study"))
        ).scalar_one_or_none()


def test_stores_are_filed_under_the_users_or_the_named_site(world: World) -> None:
    assert _stow(world, "tom", "by-tom").status_code == 200
    assert _site_of(world, "by-tom") == "A"
    assert _stow(world, "admin", "by-admin", "/dicom-web/sites/C/studies").status_code == 200
    assert _site_of(world, "by-admin") == "C"
    # tom may not file under site B, and a viewer may not store at all: nothing stored.
    assert _stow(world, "tom", "tom-at-B", "/dicom-web/sites/B/studies").status_code == 403
    assert _stow(world, "vic", "by-vic").status_code == 403
    assert _stow(world, "admin", "nowhere", "/dicom-web/sites/NOPE/studies").status_code == 404
    assert _site_of(world, "tom-at-B") is None
    assert _site_of(world, "by-vic") is None
    assert _site_of(world, "nowhere") is None


def test_tokens_expire_are_revoked_and_die_with_their_user(world: World) -> None:
    db = world.archive.db
    url = f"{world.url}/auth/whoami"

    def status(token: str) -> int:
        return httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code

    live = accounts.issue_token(db, "tom", lifetime=timedelta(days=1))
    expired = accounts.issue_token(db, "tom", lifetime=timedelta(seconds=-1))
    revoked = accounts.issue_token(db, "tom")
    accounts.revoke_token(db, revoked.id)
    assert status(live.secret) == 200
    assert status(expired.secret) == 401
    assert status(revoked.secret) == 401
    assert status(live.secret[:-2] + "xx") == 401  # a wrong secret for a real token id
    accounts.set_disabled(db, "tom")
    assert status(live.secret) == 401
    assert httpx.get(url, headers=basic("tom")).status_code == 401
    # Only a hash of each secret is stored.
    from dicomvault.access.tables import tokens

    with db.read() as conn:
        stored = {row[0] for row in conn.execute(select(tokens.c.secret_sha256))}
    secret = live.secret.split("_", 2)[2]  # the secret itself may hold "_"
    assert not any(secret in value for value in stored)
