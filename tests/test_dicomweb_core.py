"""QIDO-RS matching and WADO-RS retrieval over HTTP with real clients, on both backends."""

from __future__ import annotations

from io import BytesIO

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from sqlalchemy import select

from dicomvault.archive import Archive
from dicomvault.index.schema import objects
from dicomvault.storage import LocalStore
from dicomvault.synthetic import instance_bytes, uid

STUDIES = {
    "a": {"patient_name": "Doe^Jane", "study_date": "20240115", "modality": "CT"},
    "b": {"patient_name": "DOE^JOHN", "study_date": "20240320", "modality": "MR"},
    "c": {"patient_name": "Roe^Richard", "study_date": "20231201", "modality": "CT"},
}


@pytest.fixture
def loaded(archive: Archive) -> dict[str, bytes]:
    """Three studies of two instances; returns each instance's bytes by SOP UID."""
    stored = {}
    for name, attrs in STUDIES.items():
        for i in range(2):
            data = instance_bytes(
                study_uid=uid(f"{name}/st"),
                series_uid=uid(f"{name}/se"),
                sop_uid=uid(f"{name}/{i}"),
                instance_number=i + 1,
                seed=i,
                accession=f"ACC-{name}",
                patient_id=f"PID-{name}",
                **attrs,
            )
            archive.ingestor.ingest(BytesIO(data))
            stored[uid(f"{name}/{i}")] = data
    return stored


def _study_names(server: str, **params: str) -> set[str]:
    response = httpx.get(f"{server}/dicom-web/studies", params=params)
    assert response.status_code == 200, response.text
    by_uid = {uid(f"{n}/st"): n for n in STUDIES}
    return {by_uid[m["0020000D"]["Value"][0]] for m in response.json()}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"a", "b", "c"}),
        ({"PatientName": "doe*"}, {"a", "b"}),  # case-insensitive, wildcard
        ({"PatientName": "DOE^JAN?"}, {"a"}),
        ({"PatientName": "john", "fuzzymatching": "true"}, {"b"}),
        ({"StudyDate": "20240101-20241231"}, {"a", "b"}),
        ({"StudyDate": "-20231231"}, {"c"}),
        ({"StudyDate": "20240301-"}, {"b"}),
        ({"StudyDate": "20240115"}, {"a"}),
        ({"AccessionNumber": "ACC-a"}, {"a"}),
        ({"AccessionNumber": "acc-a"}, set()),  # other strings match case-sensitively
        ({"ModalitiesInStudy": "MR"}, {"b"}),
        ({"0020000D": f"{uid('a/st')},{uid('c/st')}"}, {"a", "c"}),
        ({"StudyInstanceUID": f"{uid('b/st')}\\{uid('c/st')}"}, {"b", "c"}),
    ],
)
def test_study_matching(
    loaded: dict[str, bytes], server: str, params: dict[str, str], expected: set[str]
) -> None:
    assert _study_names(server, **params) == expected


def test_paging_warns_when_cut_and_offset_continues(loaded: dict[str, bytes], server: str) -> None:
    first = httpx.get(f"{server}/dicom-web/instances", params={"limit": 4})
    assert len(first.json()) == 4
    assert "299" in first.headers["warning"]
    rest = httpx.get(f"{server}/dicom-web/instances", params={"limit": 4, "offset": 4})
    assert len(rest.json()) == 2
    assert "warning" not in rest.headers
    sops = {m["00080018"]["Value"][0] for m in first.json() + rest.json()}
    assert sops == set(loaded)


def test_includefield_and_nested_levels(loaded: dict[str, bytes], server: str) -> None:
    client = DICOMwebClient(f"{server}/dicom-web")
    series = client.search_for_series(uid("a/st"))
    assert [s["00080060"]["Value"] for s in series] == [["CT"]]
    found = client.search_for_instances(
        uid("a/st"), uid("a/se"), fields=["SliceThickness", "00080070"]
    )
    assert len(found) == 2
    assert found[0]["00180050"]["Value"] == [5.0]
    assert found[0]["00080070"]["Value"] == ["DICOMVAULT SYNTHETIC"]
    everything = httpx.get(
        f"{server}/dicom-web/studies/{uid('a/st')}/instances", params={"includefield": "all"}
    ).json()
    assert everything[0]["00280030"]["Value"] == [0.7, 0.7]  # PixelSpacing from the header
    assert "7FE00010" not in everything[0]  # never bulk data in QIDO results


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({"NoSuchKeyword": "x"}, {}, 400),
        ({"limit": "-1"}, {}, 400),
        ({"StudyDate": "2024-01-01"}, {}, 400),
        ({}, {"Accept": 'multipart/related; type="application/dicom+xml"'}, 406),
    ],
)
def test_bad_queries(
    server: str, params: dict[str, str], headers: dict[str, str], status: int
) -> None:
    response = httpx.get(f"{server}/dicom-web/studies", params=params, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]


def test_retrieve_as_stored_is_byte_exact(loaded: dict[str, bytes], server: str) -> None:
    client = DICOMwebClient(f"{server}/dicom-web")
    got = client.retrieve_instance(
        uid("b/st"), uid("b/se"), uid("b/1"), media_types=(("application/dicom", "*"),)
    )
    out = BytesIO()
    got.save_as(out, enforce_file_format=True)
    original = pydicom.dcmread(BytesIO(loaded[uid("b/1")]))
    assert got.PixelData == original.PixelData
    assert got.PatientName == "DOE^JOHN"


def test_retrieve_default_and_transcoded(loaded: dict[str, bytes], server: str) -> None:
    client = DICOMwebClient(f"{server}/dicom-web")
    default = client.retrieve_series(uid("a/st"), uid("a/se"))
    assert {ds.file_meta.TransferSyntaxUID for ds in default} == {"1.2.840.10008.1.2.1"}
    jls = client.retrieve_series(
        uid("a/st"),
        uid("a/se"),
        media_types=(("application/dicom", "1.2.840.10008.1.2.4.80"),),
    )
    assert {ds.file_meta.TransferSyntaxUID for ds in jls} == {"1.2.840.10008.1.2.4.80"}
    originals = {
        ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(BytesIO(b)) for b in loaded.values())
    }
    for ds in jls:
        assert np.array_equal(ds.pixel_array, originals[ds.SOPInstanceUID].pixel_array)


def test_metadata_matches_the_header(loaded: dict[str, bytes], server: str) -> None:
    response = httpx.get(f"{server}/dicom-web/studies/{uid('c/st')}/series/{uid('c/se')}/metadata")
    assert response.status_code == 200
    items = response.json()
    assert [i["00200013"]["Value"] for i in items] == [[1], [2]]
    assert items[0]["00100010"]["Value"] == [{"Alphabetic": "Roe^Richard"}]
    assert items[0]["7FE00010"]["BulkDataURI"].startswith(f"{server}/dicom-web/studies/")
    assert httpx.get(f"{server}/dicom-web/studies/1.2.3/metadata").status_code == 404


def test_a_tampered_object_is_never_served_as_good(
    archive: Archive, loaded: dict[str, bytes], server: str
) -> None:
    with archive.db.read() as conn:
        key = conn.execute(
            select(objects.c.key).where(objects.c.sop_uid == uid("a/0"))
        ).scalar_one()
    data = bytearray(b"".join(archive.store.iter_bytes(key)))
    data[-10] ^= 0xFF  # one flipped byte in the pixel data
    archive.store.delete(key)
    if isinstance(archive.store, LocalStore):
        (archive.store.root / key).write_bytes(bytes(data))
    else:
        archive.store.put(key, [bytes(data)])
    url = f"{server}/dicom-web/studies/{uid('a/st')}/series/{uid('a/se')}/instances/{uid('a/0')}"
    headers = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    try:
        response = httpx.get(url, headers=headers)
    except httpx.HTTPError:
        return  # the transfer was aborted: acceptable, nothing was passed off as good
    assert bytes(data[200:]) not in response.content or response.status_code >= 500
