"""WADO-RS: retrieve (as stored, default, transcoded), metadata, 404s, and tampered objects.

Through dicomweb-client and httpx against the live server, on both backend pairs.
Multipart responses are split by tests/support (not by the server's own code).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import boto3
import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless
from sqlalchemy import select

from dicomvault.archive import Archive
from dicomvault.index.schema import instances, objects
from dicomvault.parsing.header import BULK_DATA_THRESHOLD
from dicomvault.storage import CachedStore, LocalStore
from dicomvault.synthetic import dataset, to_bytes, uid
from tests.support.dicom_files import parse_multipart

STUDY = uid("w/st")
SERIES = (uid("w/se0"), uid("w/se1"))
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM = 'multipart/related; type="application/dicom"'


def _sop(series: int, number: int) -> str:
    return uid(f"w/{series}/{number}")


@pytest.fixture
def stored(archive: Archive) -> dict[str, bytes]:
    """Two explicit VR instances (one with a non-zero preamble) and one implicit VR one.

    Returns the bytes as sent, by SOP Instance UID.
    """
    sent = {}
    for series, number, syntax in (
        (0, 0, ExplicitVRLittleEndian),
        (0, 1, ExplicitVRLittleEndian),
        (1, 0, ImplicitVRLittleEndian),
    ):
        ds = dataset(
            study_uid=STUDY,
            series_uid=SERIES[series],
            sop_uid=_sop(series, number),
            size=32,
            seed=series * 10 + number,
            series_number=series + 1,
            instance_number=number + 1,
        )
        ds.file_meta.TransferSyntaxUID = syntax
        data = bytearray(to_bytes(ds))
        if number == 1:
            data[:128] = b"MZ" + bytes(range(126))  # a polyglot header: must not come back
        archive.ingestor.ingest(BytesIO(bytes(data)))
        sent[_sop(series, number)] = bytes(data)
    return sent


def _url(server: str, series: int | None = None, number: int | None = None) -> str:
    url = f"{server}/dicom-web/studies/{STUDY}"
    if series is not None:
        url += f"/series/{SERIES[series]}"
    if number is not None:
        url += f"/instances/{_sop(series or 0, number)}"
    return url


def _retrieve(url: str, accept: str) -> list[tuple[dict[str, str], bytes]]:
    response = httpx.get(url, headers={"Accept": accept})
    assert response.status_code == 200, response.text
    return parse_multipart(response.headers["content-type"], response.content)


def _pixels(data: bytes) -> Any:
    return pydicom.dcmread(BytesIO(data)).pixel_array


@pytest.fixture(params=["held", "streamed"])
def reading(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Instances read whole ahead of their turn (the usual size), or all streamed chunk by
    chunk as instances over the whole-read limit are."""
    if request.param == "streamed":
        monkeypatch.setattr("dicomvault.dicomweb.wado.WHOLE_READ_LIMIT", 0)
    return str(request.param)


def test_as_stored_is_byte_for_byte_with_the_preamble_zeroed(
    stored: dict[str, bytes], server: str, reading: str
) -> None:
    parts = _retrieve(_url(server), AS_STORED)
    assert len(parts) == 3
    by_sop = {pydicom.dcmread(BytesIO(body)).SOPInstanceUID: (h, body) for h, body in parts}
    for sop, sent in stored.items():
        headers, body = by_sop[sop]
        assert body == bytes(128) + sent[128:]
        syntax = pydicom.dcmread(BytesIO(sent)).file_meta.TransferSyntaxUID
        assert headers["content-type"] == f"application/dicom; transfer-syntax={syntax}"
    [(_, one)] = _retrieve(_url(server, 0, 1), AS_STORED)
    assert one == bytes(128) + stored[_sop(0, 1)][128:]


def test_a_retrieval_as_stored_announces_its_length(
    stored: dict[str, bytes], server: str, reading: str
) -> None:
    response = httpx.get(_url(server), headers={"Accept": AS_STORED})
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert sum(len(body) for _, body in _retrieve(_url(server), AS_STORED)) == sum(
        map(len, stored.values())
    )
    # The implicit VR instance is transcoded to the default syntax: its size is not known
    # before it is, so the body goes chunked.
    transcoded = httpx.get(_url(server), headers={"Accept": DICOM})
    assert transcoded.status_code == 200
    assert "content-length" not in transcoded.headers
    assert transcoded.headers["transfer-encoding"] == "chunked"
    assert len(parse_multipart(transcoded.headers["content-type"], transcoded.content)) == 3


def test_the_default_is_explicit_vr_little_endian(stored: dict[str, bytes], server: str) -> None:
    parts = _retrieve(_url(server, 1), DICOM)  # the implicit VR series
    [(headers, body)] = parts
    assert headers["content-type"] == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    got = pydicom.dcmread(BytesIO(body))
    sent = pydicom.dcmread(BytesIO(stored[_sop(1, 0)]))
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.PatientName == sent.PatientName
    assert np.array_equal(got.pixel_array, sent.pixel_array)
    # An instance already stored in the default syntax comes back as stored.
    [(_, same)] = _retrieve(_url(server, 0, 0), DICOM)
    assert same == bytes(128) + stored[_sop(0, 0)][128:]


def test_dicomweb_client_retrieves_study_series_and_instance(
    stored: dict[str, bytes], server: str
) -> None:
    client = DICOMwebClient(f"{server}/dicom-web")
    originals = {sop: pydicom.dcmread(BytesIO(data)) for sop, data in stored.items()}

    study = client.retrieve_study(STUDY)
    assert sorted(ds.SOPInstanceUID for ds in study) == sorted(stored)
    for ds in study:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, originals[ds.SOPInstanceUID].pixel_array)

    series = client.retrieve_series(STUDY, SERIES[0])
    assert [ds.InstanceNumber for ds in series] == [1, 2]

    instance = client.retrieve_instance(
        STUDY, SERIES[1], _sop(1, 0), media_types=(("application/dicom", "*"),)
    )
    assert instance.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert np.array_equal(instance.pixel_array, originals[_sop(1, 0)].pixel_array)


def test_jpeg_ls_lossless_transcodes_to_the_same_pixels(
    stored: dict[str, bytes], server: str
) -> None:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={JPEGLSLossless}'
    parts = _retrieve(_url(server), accept)
    assert len(parts) == 3
    for headers, body in parts:
        assert headers["content-type"] == f"application/dicom; transfer-syntax={JPEGLSLossless}"
        got = pydicom.dcmread(BytesIO(body))
        assert got.file_meta.TransferSyntaxUID == JPEGLSLossless
        assert got.SOPInstanceUID in stored  # lossless: the same instance, the same UID
        assert len(got.PixelData) < 32 * 32 * 2  # really compressed
        assert np.array_equal(got.pixel_array, _pixels(stored[got.SOPInstanceUID]))

    client = DICOMwebClient(f"{server}/dicom-web")
    [ds] = client.retrieve_series(
        STUDY, SERIES[1], media_types=(("application/dicom", JPEGLSLossless),)
    )
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert np.array_equal(ds.pixel_array, _pixels(stored[_sop(1, 0)]))


def _expected_metadata(server: str, data: bytes) -> dict[str, Any]:
    """The DICOM JSON of an instance as pydicom itself writes it, with absolute bulk URIs."""
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    base = (
        f"{server}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/bulkdata/"
    )
    expected: dict[str, Any] = ds.to_json_dict(
        BULK_DATA_THRESHOLD, lambda elem: f"{base}{elem.tag:08X}"
    )
    expected["7FE00010"] = {"vr": "OW", "BulkDataURI": f"{base}7FE00010"}
    return expected


def test_metadata_at_every_level_is_the_stored_header(
    archive: Archive, stored: dict[str, bytes], server: str
) -> None:
    expected = {sop: _expected_metadata(server, data) for sop, data in stored.items()}
    with archive.db.read() as conn:
        headers = dict(conn.execute(select(instances.c.sop_uid, instances.c.header)).all())

    study = httpx.get(f"{_url(server)}/metadata")
    assert study.status_code == 200
    assert study.headers["content-type"] == "application/dicom+json"
    by_sop = {item["00080018"]["Value"][0]: item for item in study.json()}
    assert by_sop == expected
    for sop, item in by_sop.items():  # the index's copy, with relative URIs made absolute
        relative = item["7FE00010"]["BulkDataURI"].removeprefix(f"{server}/dicom-web/")
        assert headers[sop]["7FE00010"]["BulkDataURI"] == relative
        assert {k: v for k, v in headers[sop].items() if k != "7FE00010"} == {
            k: v for k, v in item.items() if k != "7FE00010"
        }

    series = httpx.get(f"{_url(server, 0)}/metadata").json()
    assert series == [expected[_sop(0, 0)], expected[_sop(0, 1)]]
    instance = httpx.get(f"{_url(server, 1, 0)}/metadata").json()
    assert instance == [expected[_sop(1, 0)]]

    # The BulkDataURI is absolute and serves the pixel data.
    uri = instance[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith("http://")
    bulk = httpx.get(uri, headers={"Accept": "application/octet-stream"})
    assert bulk.status_code == 200
    assert bulk.content == pydicom.dcmread(BytesIO(stored[_sop(1, 0)])).PixelData

    # dicomweb-client sends "Host: 127.0.0.1" without the port, and absolute URIs are
    # built from the Host the client names; everything else is the same.
    client = DICOMwebClient(f"{server}/dicom-web")
    portless = server.rsplit(":", 1)[0]
    via_client = client.retrieve_instance_metadata(STUDY, SERIES[0], _sop(0, 1))
    assert via_client == _expected_metadata(portless, stored[_sop(0, 1)])


UNKNOWN = [
    "/studies/1.2.3",
    f"/studies/{STUDY}/series/1.2.3",
    f"/studies/{STUDY}/series/{SERIES[0]}/instances/1.2.3",
    f"/studies/{STUDY}/series/{SERIES[0]}/instances/{_sop(1, 0)}",  # in the other series
    f"/studies/1.2.3/series/{SERIES[0]}/instances/{_sop(0, 0)}",  # in another study
]


def test_unknown_uids_are_404(stored: dict[str, bytes], server: str) -> None:
    problems = []
    for path in UNKNOWN:
        for url, accept in ((path, AS_STORED), (f"{path}/metadata", "application/dicom+json")):
            response = httpx.get(f"{server}/dicom-web{url}", headers={"Accept": accept})
            if response.status_code != 404 or not response.json()["error"].startswith("no such"):
                problems.append(f"{url}: {response.status_code} {response.text[:100]}")
    assert problems == []


def _tamper(archive: Archive, sop: str, change: Any) -> bytes:
    """Change a stored object behind the archive's back, the way a disk or a bucket would."""
    with archive.db.read() as conn:
        key = conn.execute(select(objects.c.key).where(objects.c.sop_uid == sop)).scalar_one()
    data = change(b"".join(archive.store.iter_bytes(key)))
    if isinstance(archive.store, LocalStore):
        (archive.store.root / key).write_bytes(data)
    else:
        settings = archive.settings
        bucket, _, prefix = (settings.storage_url or "").removeprefix("s3://").partition("/")
        secret = settings.s3_secret_access_key
        boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
        ).put_object(Bucket=bucket, Key=f"{prefix.strip('/')}/{key}", Body=data)
        if isinstance(archive.store, CachedStore):
            archive.store.drop(key)  # else its intact local copy is what gets served
    assert b"".join(archive.store.iter_bytes(key)) == data
    return data


def _flip(data: bytes) -> bytes:
    changed = bytearray(data)
    changed[-100] ^= 0xFF  # one pixel's worth of bit rot
    return bytes(changed)


def _served_as_good(url: str, accept: str, corrupted: bytes) -> str | None:
    """A description of the response if it passed the corrupted instance off as good."""
    try:
        response = httpx.get(url, headers={"Accept": accept})
    except httpx.HTTPError:
        return None  # the transfer was aborted: the client knows it failed
    if response.status_code >= 400:
        return None
    if corrupted[200:] in response.content:
        return f"{response.status_code}, complete, with the corrupted bytes"
    return f"{response.status_code}, complete (transcoded from the corrupted bytes?)"


@pytest.mark.parametrize("how", ["flipped byte", "truncated", "swapped for another file"])
def test_a_tampered_object_is_never_served_as_good(
    archive: Archive, stored: dict[str, bytes], server: str, how: str, reading: str
) -> None:
    victim = _sop(0, 1)
    if how == "flipped byte":
        corrupted = _tamper(archive, victim, _flip)
    elif how == "truncated":
        corrupted = _tamper(archive, victim, lambda data: data[:-64])
    else:  # a valid DICOM file, just not the one that was stored
        other = bytes(128) + stored[_sop(0, 0)][128:]
        corrupted = _tamper(archive, victim, lambda _data: other)

    checks = {
        "instance as stored": (_url(server, 0, 1), AS_STORED),
        "instance default": (_url(server, 0, 1), DICOM),
        "instance JPEG-LS": (
            _url(server, 0, 1),
            f'multipart/related; type="application/dicom"; transfer-syntax={JPEGLSLossless}',
        ),
        "series as stored": (_url(server, 0), AS_STORED),
        "study default": (_url(server), DICOM),
    }
    problems = {}
    for what, (url, accept) in checks.items():
        outcome = _served_as_good(url, accept, corrupted)
        if outcome is not None:
            problems[what] = outcome
    assert problems == {}

    # A single damaged instance is refused before the response starts: a clean 503.
    refused = httpx.get(_url(server, 0, 1), headers={"Accept": AS_STORED})
    assert refused.status_code == 503, refused.text[:200]
    assert refused.json()["error"]

    # The archive keeps serving the intact instances and the index's metadata.
    [(_, intact)] = _retrieve(_url(server, 0, 0), AS_STORED)
    assert intact == bytes(128) + stored[_sop(0, 0)][128:]
    assert httpx.get(f"{_url(server, 0, 1)}/metadata").status_code == 200
