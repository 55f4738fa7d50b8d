"""Bad input, at the ingest function and over STOW-RS: a clear error, nothing stored.

Each case also checks that the archive keeps serving: a good upload right after
the bad one is stored.
"""

from __future__ import annotations

import struct
import warnings
from io import BytesIO

import httpx
import pytest
from sqlalchemy import func, select

from dicomvault.archive import Archive
from dicomvault.errors import InvalidInstance
from dicomvault.index.schema import instances, objects
from dicomvault.synthetic import dataset, instance_bytes, to_bytes, uid
from tests.support.live import running_server


def _good(name: str = "good") -> bytes:
    return instance_bytes(
        study_uid=uid(f"{name}/st"), series_uid=uid(f"{name}/se"), sop_uid=uid(f"{name}/i")
    )


def _nothing_stored(archive: Archive) -> None:
    with archive.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(instances)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(objects)).scalar_one() == 0
    assert list(archive.store.list()) == []


_SQ_UNDEFINED = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"  # (0008,1115), undefined length
_ITEM_UNDEFINED = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _nested(depth: int) -> bytes:
    """A valid file plus one sequence whose items nest `depth` levels deep."""
    inner = b""
    for _ in range(depth):
        inner = _SQ_UNDEFINED + _ITEM_UNDEFINED + inner + _ITEM_END + _SEQ_END
    ds = dataset(study_uid=uid("deep/st"), series_uid=uid("deep/se"), sop_uid=uid("deep/i"))
    del ds.PixelData
    return to_bytes(ds) + inner


def _cases() -> dict[str, bytes]:
    good = _good("case")
    pixel_at = good.index(b"\xe0\x7f\x10\x00")
    bad_uid = dataset(study_uid="1.2.3", series_uid="1.2.4", sop_uid="1.2.5")
    short = bytearray(good)
    # Shrink the Pixel Data length and the file: the element fits, but holds too few bytes.
    (length,) = struct.unpack("<I", good[pixel_at + 8 : pixel_at + 12])
    short[pixel_at + 8 : pixel_at + 12] = struct.pack("<I", length - 100)
    cases = {
        "truncated in the meta": good[:150],
        "truncated in an element": good[:400],
        "truncated in pixel data": good[: pixel_at + 500],
        "length past the end": good[:pixel_at]
        + b"\xe0\x7f\x10\x00OW\x00\x00"
        + struct.pack("<I", 10**9)
        + good[pixel_at + 12 :],
        "pixel data shorter than declared": bytes(short[:-100]),
        "not DICOM": b"hello world" * 50,
    }
    for name, value in {
        "dot-dot": "../../etc",
        "NUL": "1.2\x00.3",  # a trailing NUL is legal padding; one inside is not
        "too long": "1." + "2" * 70,
        "letters": "1.2.abc",
    }.items():
        ds = dataset(study_uid=uid("u/st"), series_uid=uid("u/se"), sop_uid=uid("u/i"))
        ds.SOPInstanceUID = value
        ds.file_meta.MediaStorageSOPInstanceUID = value
        cases[f"SOPInstanceUID {name}"] = to_bytes(ds)
    del bad_uid.StudyInstanceUID
    cases["StudyInstanceUID missing"] = to_bytes(bad_uid)
    return cases


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs these cases need
    CASES = _cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_ingest_rejects_and_stores_nothing(archive: Archive, case: str) -> None:
    with pytest.raises(InvalidInstance) as info:
        archive.ingestor.ingest(BytesIO(CASES[case]))
    assert str(info.value)  # a reason a person can read
    _nothing_stored(archive)
    archive.ingestor.ingest(BytesIO(_good()))


@pytest.mark.parametrize("depth", [40, 250])
def test_deeply_nested_sequences_are_rejected(archive: Archive, depth: int) -> None:
    with pytest.raises(InvalidInstance, match="nested"):
        archive.ingestor.ingest(BytesIO(_nested(depth)))
    _nothing_stored(archive)


def _multipart(*parts: tuple[str, bytes], boundary: str = "XX") -> bytes:
    out = b""
    for content_type, body in parts:
        out += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + body + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=XX'


def test_stow_bad_bodies(archive: Archive, server: str) -> None:
    url = f"{server}/dicom-web/studies"
    good = _good("stowgood")
    complete = _multipart(("application/dicom", good))
    checks = [
        (b"junk before\r\n" + complete, STOW_TYPE, 400),
        (complete[: -len(b"--XX--\r\n")], STOW_TYPE, 400),  # no closing boundary
        (complete, "application/dicom", 415),
        (complete, 'multipart/related; type="application/dicom+xml"; boundary=XX', 415),
        (complete, "multipart/related; type=application/dicom", 400),  # no boundary
    ]
    for body, content_type, status in checks:
        response = httpx.post(url, content=body, headers={"Content-Type": content_type})
        assert response.status_code == status, (content_type, response.text)
        assert response.json()["error"]
        _nothing_stored(archive)
    response = httpx.post(url, content=complete, headers={"Content-Type": STOW_TYPE})
    assert response.status_code == 200


def test_stow_non_dicom_part_fails_alone(archive: Archive, server: str) -> None:
    body = _multipart(
        ("application/dicom", _good("p1")),
        ("text/plain", b"not an image"),
        ("application/dicom", b"garbage" * 40),
    )
    response = httpx.post(
        f"{server}/dicom-web/studies", content=body, headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 202
    result = response.json()
    assert len(result["00081199"]["Value"]) == 1
    failed = result["00081198"]["Value"]
    assert [f["00081197"]["Value"][0] for f in failed] == [0xC000, 0xC000]
    assert "DICM" in failed[1]["00000902"]["Value"][0]


def test_stow_content_length_over_limit_is_413_before_reading(archive: Archive) -> None:
    small = Archive.open(archive.settings.model_copy(update={"max_request_bytes": 4096}))
    try:
        with running_server(small) as base:
            body = _multipart(("application/dicom", _good("big")))
            response = httpx.post(
                f"{base}/dicom-web/studies", content=body, headers={"Content-Type": STOW_TYPE}
            )
            assert response.status_code == 413

            def chunks() -> object:
                yield body  # chunked: no Content-Length, the limit applies while reading

            response = httpx.post(
                f"{base}/dicom-web/studies", content=chunks(), headers={"Content-Type": STOW_TYPE}
            )
            assert response.status_code == 413
        _nothing_stored(small)
    finally:
        small.close()


def test_stow_to_another_study_is_409(archive: Archive, server: str) -> None:
    body = _multipart(("application/dicom", _good("other")))
    response = httpx.post(
        f"{server}/dicom-web/studies/1.2.3.4", content=body, headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 409
    assert "belongs to study" in response.json()["00081198"]["Value"][0]["00000902"]["Value"][0]
    _nothing_stored(archive)


def test_invalid_uid_in_url_is_400(server: str) -> None:
    response = httpx.get(f"{server}/dicom-web/studies/1.2.abc/series")
    assert response.status_code == 400
    assert "not a valid UID" in response.json()["error"]
