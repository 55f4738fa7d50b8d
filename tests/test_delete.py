"""Deleting a study: rows, objects and (when orphaned) the patient go; others stay."""

from __future__ import annotations

from io import BytesIO

import httpx
from sqlalchemy import func, select

from dicomvault.archive import Archive
from dicomvault.index.schema import events, instances, objects, patients, studies
from dicomvault.synthetic import study_instances, uid


def _count(archive: Archive, table: object) -> int:
    with archive.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def test_delete_a_study_over_http(archive: Archive, server: str) -> None:
    for name, patient in (("gone", "P1"), ("kept", "P1"), ("other", "P2")):
        for data in study_instances(name, per_series=2, patient_id=patient):
            archive.ingestor.ingest(BytesIO(data))
    keys_before = {info.key for info in archive.store.list()}
    assert len(keys_before) == 6

    response = httpx.delete(f"{server}/dicom-web/studies/{uid('gone/study')}")
    assert response.status_code == 204, response.text
    assert _count(archive, studies) == 2
    assert _count(archive, instances) == 4
    assert _count(archive, objects) == 4
    assert _count(archive, patients) == 2  # P1 still has a study
    assert len({info.key for info in archive.store.list()}) == 4
    with archive.db.read() as conn:
        kinds = conn.execute(select(events.c.kind, events.c.study_uid)).all()
    assert ("study.deleted", uid("gone/study")) in kinds

    assert httpx.delete(f"{server}/dicom-web/studies/{uid('other/study')}").status_code == 204
    assert _count(archive, patients) == 1  # P2 had only that study

    # Unknown and malformed UIDs change nothing.
    assert httpx.delete(f"{server}/dicom-web/studies/{uid('gone/study')}").status_code == 404
    assert httpx.delete(f"{server}/dicom-web/studies/1.2.x").status_code == 400
    assert _count(archive, instances) == 2
    found = httpx.get(f"{server}/dicom-web/studies", headers={"Accept": "application/dicom+json"})
    assert [m["0020000D"]["Value"][0] for m in found.json()] == [uid("kept/study")]
