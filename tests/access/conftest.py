"""A small multi-site world on a server that requires authentication.

    organization ORG1: site A (keeps its studies to itself), site B (shares them
                       organization-wide)
    organization ORG2: site C (shares organization-wide, but ORG1 is another organization)

One study per site (patients PA, PB, PC), stored with that site as its origin.
Users: `admin` (no site), `ann` radiologist at A, `tom` technologist at A,
`vic` viewer at B, `carl` radiologist at C.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO

import pytest

from dicomvault.access import accounts
from dicomvault.access.policy import Role
from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.model.origin import Door, Origin
from dicomvault.synthetic import study_instances, uid
from tests.support.live import running_server

PASSWORD = "correct horse battery"
USERS = {
    "admin": (Role.ADMIN, None),
    "ann": (Role.RADIOLOGIST, "A"),
    "tom": (Role.TECHNOLOGIST, "A"),
    "vic": (Role.VIEWER, "B"),
    "carl": (Role.RADIOLOGIST, "C"),
}
STUDIES = {"A": "PA", "B": "PB", "C": "PC"}


def study_uid(site: str) -> str:
    return uid(f"site-{site}/study")


def basic(user: str, password: str = PASSWORD) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@dataclass
class World:
    archive: Archive
    url: str


def populate(archive: Archive) -> None:
    db = archive.db
    accounts.add_site(db, "A", name="Site A", organization="ORG1", org_shared=False)
    accounts.add_site(db, "B", name="Site B", organization="ORG1", org_shared=True)
    accounts.add_site(db, "C", name="Site C", organization="ORG2", org_shared=True)
    for name, (role, site) in USERS.items():
        accounts.add_user(db, name, role=role, site=site, password=PASSWORD)
    for site, patient in STUDIES.items():
        for data in study_instances(
            f"site-{site}", per_series=2, patient_id=patient, patient_name=f"Site{site}^Pat"
        ):
            archive.ingestor.ingest(BytesIO(data), origin=Origin(Door.API, site=site))


@contextmanager
def served_world(settings: Settings, **updates: object) -> Iterator[World]:
    """The populated world on a live server requiring authentication."""
    archive = Archive.open(settings.model_copy(update={"auth_enabled": True, **updates}))
    try:
        populate(archive)
        with running_server(archive) as url:
            yield World(archive, url)
    finally:
        archive.close()


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    with served_world(settings) as served:
        yield served
