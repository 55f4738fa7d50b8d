"""STOW-RS: the response body, idempotent duplicates, conflicts, and odd-but-valid values.

Through dicomweb-client and httpx against the live server, on both backend pairs.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

import boto3
import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi import Request
from sqlalchemy import func, select

from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.dicomweb.app import create_app
from dicomvault.dicomweb.responses import root_url
from dicomvault.index.schema import events, instances, objects, patients, series, studies
from dicomvault.model.status import FailureReason
from dicomvault.storage import LocalStore
from dicomvault.synthetic import dataset, to_bytes, uid
from tests.support.dicom_files import STOW_TYPE, good, multipart, parse_multipart
from tests.support.live import running_server

FAILED = "00081198"
REFERENCED = "00081199"
RETRIEVE_URL = "00081190"
SOP_CLASS = "00081150"
SOP_INSTANCE = "00081155"
REASON = "00081197"
COMMENT = "00000902"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _stow(base: str, *files: bytes, path: str = "") -> httpx.Response:
    body = multipart(*(("application/dicom", f) for f in files))
    return httpx.post(
        f"{base}/dicom-web/studies{path}", content=body, headers={"Content-Type": STOW_TYPE}
    )


def _count(archive: Archive, table: Any) -> int:
    with archive.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _instance_url(base: str, name: str) -> str:
    return (
        f"{base}/dicom-web/studies/{uid(f'{name}/st')}/series/{uid(f'{name}/se')}"
        f"/instances/{uid(f'{name}/i')}"
    )


def test_response_references_each_instance_with_its_retrieve_url(
    archive: Archive, server: str
) -> None:
    response = _stow(server, good("r1"), good("r2"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    body = response.json()
    assert set(body) == {REFERENCED}
    assert body[REFERENCED]["vr"] == "SQ"
    assert body[REFERENCED]["Value"] == [
        {
            SOP_CLASS: {"vr": "UI", "Value": [CT_IMAGE_STORAGE]},
            SOP_INSTANCE: {"vr": "UI", "Value": [uid(f"{name}/i")]},
            RETRIEVE_URL: {"vr": "UR", "Value": [_instance_url(server, name)]},
        }
        for name in ("r1", "r2")
    ]
    # The RetrieveURL is real: it gives the instance back.
    url = body[REFERENCED]["Value"][1][RETRIEVE_URL]["Value"][0]
    got = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    [(_, part)] = parse_multipart(got.headers["content-type"], got.content)
    assert pydicom.dcmread(BytesIO(part)).SOPInstanceUID == uid("r2/i")


def test_stow_to_a_study_url_adds_the_study_retrieve_url(archive: Archive, server: str) -> None:
    study = uid("s/st")
    response = _stow(server, good("s"), path=f"/{study}")
    assert response.status_code == 200
    assert response.json()[RETRIEVE_URL] == {
        "vr": "UR",
        "Value": [f"{server}/dicom-web/studies/{study}"],
    }


def test_dicomweb_client_stores_and_the_index_counts_them(archive: Archive, server: str) -> None:
    client = DICOMwebClient(f"{server}/dicom-web")
    # Datasets read from Part 10 files, as dicomweb-client documents: it writes them back
    # with pydicom's dcmwrite, which keeps the preamble and DICM prefix they were read with.
    datasets = [
        pydicom.dcmread(
            BytesIO(
                to_bytes(
                    dataset(
                        study_uid=uid("dc/st"),
                        series_uid=uid(f"dc/se{s}"),
                        sop_uid=uid(f"dc/{s}/{i}"),
                        size=16,
                        series_number=s + 1,
                        instance_number=i + 1,
                    )
                )
            )
        )
        for s in range(2)
        for i in range(3)
    ]
    result = client.store_instances(datasets)
    stored = [item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence]
    assert sorted(stored) == sorted(ds.SOPInstanceUID for ds in datasets)
    assert "FailedSOPSequence" not in result
    with archive.db.read() as conn:
        row = conn.execute(select(studies.c.num_series, studies.c.num_instances)).one()
        doors = conn.execute(select(instances.c.origin_door).distinct()).scalars().all()
    assert tuple(row) == (2, 6)
    assert doors == ["dicomweb"]
    assert len(list(archive.store.list())) == 6


def test_the_same_bytes_again_succeed_and_write_nothing(archive: Archive, server: str) -> None:
    data = good("dup")
    first = _stow(server, data)
    assert first.status_code == 200
    objects_before = sorted(o.key for o in archive.store.list())

    again = _stow(server, data)
    assert again.status_code == 200
    assert again.json() == first.json()

    preamble = bytearray(data)
    preamble[:128] = b"MZ" + b"\x90" * 126  # the stored copy has its preamble zeroed anyway
    assert _stow(server, bytes(preamble)).status_code == 200

    assert sorted(o.key for o in archive.store.list()) == objects_before
    assert (_count(archive, objects), _count(archive, instances), _count(archive, events)) == (
        1,
        1,
        1,
    )


def test_different_bytes_under_a_stored_uid_are_409_and_the_first_stays(
    archive: Archive, server: str
) -> None:
    first = good("conflict", seed=1)
    assert _stow(server, first).status_code == 200
    response = _stow(server, good("conflict", seed=2))
    assert response.status_code == 409
    [failure] = response.json()[FAILED]["Value"]
    assert failure[REASON]["Value"] == [FailureReason.DUPLICATE_SOP_INSTANCE]
    assert uid("conflict/i") in failure[COMMENT]["Value"][0]
    assert "different content" in failure[COMMENT]["Value"][0]
    assert failure[SOP_INSTANCE]["Value"] == [uid("conflict/i")]
    assert failure[SOP_CLASS]["Value"] == [CT_IMAGE_STORAGE]
    assert REFERENCED not in response.json()

    served = httpx.get(
        _instance_url(server, "conflict"),
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    [(_, part)] = parse_multipart(served.headers["content-type"], served.content)
    assert part[128:] == first[128:]
    assert _count(archive, objects) == 1


def test_a_part_too_damaged_to_name_itself_fails_without_references(server: str) -> None:
    response = _stow(server, b"\0" * 128 + b"DICM" + b"\xff" * 40)
    assert response.status_code == 400
    [failure] = response.json()[FAILED]["Value"]
    assert failure[REASON]["Value"] == [FailureReason.CANNOT_UNDERSTAND]
    assert SOP_INSTANCE not in failure
    assert SOP_CLASS not in failure


def test_a_conflict_beside_a_new_instance_is_202(archive: Archive, server: str) -> None:
    assert _stow(server, good("x", seed=1)).status_code == 200
    response = _stow(server, good("x", seed=2), good("y"))
    assert response.status_code == 202
    body = response.json()
    assert [i[SOP_INSTANCE]["Value"][0] for i in body[REFERENCED]["Value"]] == [uid("y/i")]
    assert [f[REASON]["Value"][0] for f in body[FAILED]["Value"]] == [
        FailureReason.DUPLICATE_SOP_INSTANCE
    ]


def test_urls_in_responses_use_the_configured_public_url(settings: Settings) -> None:
    archive = Archive.open(settings.model_copy(update={"public_url": "https://pacs.example.org/"}))
    try:
        with running_server(archive) as base:
            response = _stow(base, good("pub"))
            metadata = httpx.get(_instance_url(base, "pub") + "/metadata")
    finally:
        archive.close()
    [item] = response.json()[REFERENCED]["Value"]
    public = "https://pacs.example.org/dicom-web/studies/"
    assert item[RETRIEVE_URL]["Value"][0].startswith(public)
    [header] = metadata.json()
    assert header["7FE00010"]["BulkDataURI"].startswith(public)


@pytest.mark.parametrize("root_path", ["", "/archive"])
def test_without_a_public_url_urls_are_the_ones_the_request_came_to(
    archive: Archive, root_path: str
) -> None:
    app = create_app(archive)
    request = Request(
        {
            "type": "http",
            "app": app,
            "router": app.router,
            "method": "POST",
            "scheme": "https",
            "server": ("10.0.0.5", 8443),
            "root_path": root_path,
            "path": root_path + "/dicom-web/studies",
            "query_string": b"",
            "headers": [(b"host", b"pacs.local:8443")],
        }
    )
    assert root_url(request) == f"https://pacs.local:8443{root_path}/dicom-web"
    assert root_url(request) == str(request.url_for("dicomweb_root"))


@pytest.fixture
def spooling_server(settings: Settings) -> Iterator[tuple[Archive, str]]:
    """A live server that spools every upload part to disk (no in-memory parts)."""
    archive = Archive.open(settings.model_copy(update={"spool_memory_bytes": 0}))
    try:
        with running_server(archive) as base:
            yield archive, base
    finally:
        archive.close()


def test_parts_spooled_to_disk_are_stored_byte_for_byte(
    spooling_server: tuple[Archive, str],
) -> None:
    archive, base = spooling_server
    data = good("big", size=256, frames=4)  # half a megabyte
    assert _stow(base, data).status_code == 200
    [info] = archive.store.list()
    stored = b"".join(archive.store.iter_bytes(info.key))
    assert stored == bytes(128) + data[128:]


def test_a_request_past_the_memory_budget_is_stored_byte_for_byte(
    settings: Settings,
) -> None:
    """Parts that together pass `spool_memory_bytes` (each alone under it) go to the
    request's spool file and are stored exactly as sent, the invalid one refused."""
    files = [good(f"budget{i}", size=64) for i in range(6)]
    archive = Archive.open(settings.model_copy(update={"spool_memory_bytes": 2 * len(files[0])}))
    try:
        with running_server(archive) as base:
            response = _stow(base, *files[:3], b"not DICOM" * 100, *files[3:])
        assert response.status_code == 202, response.text
        stored = {b"".join(archive.store.iter_bytes(info.key)) for info in archive.store.list()}
        assert stored == {bytes(128) + f[128:] for f in files}
        assert _count(archive, instances) == 6
    finally:
        archive.close()


def test_an_upload_that_cannot_be_spooled_is_refused_and_nothing_is_stored(
    spooling_server: tuple[Archive, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while a part is spooled: 503 with the reason, nothing stored, and the
    server goes on serving."""
    archive, base = spooling_server

    def full(self: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("dicomvault.dicomweb.multipart._Spool.flush", full)
        response = _stow(base, good("nospace1"), good("nospace2"))
    assert response.status_code == 503
    assert "could not be spooled: No space left on device" in response.json()["error"]
    assert _count(archive, instances) == 0
    assert list(archive.store.list()) == []
    assert _stow(base, good("nospace1")).status_code == 200


def _odd(name: str, **values: Any) -> bytes:
    ds = dataset(
        study_uid=uid(f"{name}/st"), series_uid=uid(f"{name}/se"), sop_uid=uid(f"{name}/i")
    )
    ds.PatientID = f"PID-{name}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the out-of-spec values
        for keyword, value in values.items():
            if keyword.startswith("0x"):
                vr, raw = value
                ds.add_new(int(keyword, 16), vr, raw)
            else:
                setattr(ds, keyword, value)
        return to_bytes(ds)


ODD_VALUES: dict[str, dict[str, Any]] = {
    # Values real files carry that break no structure: every backend must store them.
    "over-long short strings": {
        "AccessionNumber": "A" * 40,
        "Modality": "VERYLONGMODALITYNAME",
        "PatientSex": "FEMALE-ISH-VALUE-TOO-LONG",
        "StudyDescription": "D" * 300,
    },
    "NUL inside and after text": {"StudyDescription": "CT\0CHEST", "PatientName": "Doe^Jane\0"},
    "ACR-NEMA date and a bad date": {"StudyDate": "2024.01.15", "PatientBirthDate": "19xx"},
    "numbers out of range": {"InstanceNumber": "99999999999", "SeriesNumber": "-99999999999"},
    "non-finite floats": {"0x00189087": ("FD", [float("nan"), float("inf"), -float("inf")])},
}


def test_odd_but_parseable_values_are_stored_on_every_backend(
    archive: Archive, server: str
) -> None:
    for name, values in ODD_VALUES.items():
        response = _stow(server, _odd(name.replace(" ", "-"), **values))
        assert response.status_code == 200, (name, response.text)

    def indexed(name: str, column: Any) -> Any:
        with archive.db.read() as conn:
            return conn.execute(
                select(column)
                .select_from(
                    instances.join(studies, studies.c.id == instances.c.study_fk)
                    .join(series, series.c.id == instances.c.series_fk)
                    .join(patients, patients.c.id == studies.c.patient_fk)
                )
                .where(instances.c.sop_uid == uid(f"{name}/i"))
            ).scalar_one()

    assert indexed("over-long-short-strings", studies.c.accession_number) == "A" * 16
    assert indexed("over-long-short-strings", series.c.modality) == "VERYLONGMODALITY"
    assert indexed("over-long-short-strings", studies.c.description) == "D" * 64
    assert indexed("NUL-inside-and-after-text", studies.c.description) == "CT\ufffdCHEST"
    assert indexed("NUL-inside-and-after-text", patients.c.patient_name) == "Doe^Jane"
    assert indexed("ACR-NEMA-date-and-a-bad-date", studies.c.study_date) == "20240115"
    assert indexed("ACR-NEMA-date-and-a-bad-date", patients.c.birth_date) is None
    assert indexed("numbers-out-of-range", instances.c.instance_number) is None

    # The metadata is valid JSON (no NaN tokens) and keeps the whole values.
    name = "over-long-short-strings"
    metadata = httpx.get(f"{_instance_url(server, name)}/metadata")
    assert metadata.json()[0]["00081030"]["Value"] == ["D" * 300]
    floats = httpx.get(f"{_instance_url(server, 'non-finite-floats')}/metadata")
    json.loads(floats.text, parse_constant=_refuse_constant)
    assert floats.json()[0]["00189087"]["Value"] == ["NaN", "Infinity", "-Infinity"]
    found = httpx.get(f"{server}/dicom-web/studies", params={"StudyDate": "20240101-20240131"})
    assert uid("ACR-NEMA-date-and-a-bad-date/st") in {
        s["0020000D"]["Value"][0] for s in found.json()
    }


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


def _break_store(archive: Archive) -> Callable[[], None]:
    """Make the object store refuse writes, as a full disk or a deleted bucket would.

    Returns the repair.
    """
    if isinstance(archive.store, LocalStore):
        objects_dir = archive.store.root / "instances"
        objects_dir.mkdir(exist_ok=True)
        aside = archive.store.root / "instances.aside"
        objects_dir.rename(aside)
        objects_dir.write_bytes(b"")  # the objects' directory is now a file: every put fails

        def repair_local() -> None:
            objects_dir.unlink()
            aside.rename(objects_dir)

        return repair_local
    settings = archive.settings
    bucket = (settings.storage_url or "").removeprefix("s3://").split("/")[0]
    secret = settings.s3_secret_access_key
    s3 = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
    )
    s3.delete_bucket(Bucket=bucket)
    return lambda: s3.create_bucket(Bucket=bucket) and None


def test_a_store_that_cannot_write_is_503_per_part_and_indexes_nothing(
    archive: Archive, server: str
) -> None:
    repair = _break_store(archive)
    response = _stow(server, good("w1"), good("w2"))
    assert response.status_code == 503, response.text
    failures = response.json()[FAILED]["Value"]
    assert len(failures) == 2
    for failure in failures:
        assert failure[REASON]["Value"][0] == FailureReason.OUT_OF_RESOURCES
        assert failure[COMMENT]["Value"][0]
    assert (_count(archive, instances), _count(archive, objects), _count(archive, events)) == (
        0,
        0,
        0,
    )
    repair()
    assert _stow(server, good("w1")).status_code == 200
