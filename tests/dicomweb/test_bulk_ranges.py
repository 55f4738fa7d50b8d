"""HTTP Range on single-part WADO-RS bulk data, on both backends: 206 with the bytes asked
for (read by range and checked block by block), 416 past the end, Range ignored on
multipart answers."""

from __future__ import annotations

import hashlib
from io import BytesIO

import httpx
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless
from sqlalchemy import select, update

from dicomvault.archive import Archive
from dicomvault.index.schema import objects
from dicomvault.storage.base import BLOCK_SIZE
from dicomvault.synthetic import ct_image, dataset, to_bytes, uid
from tests.support.tamper import rewrite_object

STUDY = uid("ranges/study")
SERIES = uid("ranges/series")
OCTETS = {"Accept": "application/octet-stream"}
OVERLAY = np.arange(1024, dtype=np.uint16).tobytes()


def _sop(name: str) -> str:
    return uid(f"ranges/{name}")


def _url(server: str, name: str, path: str = "7FE00010") -> str:
    return (
        f"{server}/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{_sop(name)}/bulkdata/{path}"
    )


def _make(name: str, **kwargs: object) -> Dataset:
    return dataset(study_uid=STUDY, series_uid=SERIES, sop_uid=_sop(name), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def pixels(archive: Archive) -> dict[str, bytes]:
    """A native 4 x 512x512x16 instance (2 MiB of pixels over three 1 MiB blocks) with an
    overlay, and a JPEG-LS one; the native Pixel Data value of each by name."""
    big = _make("big", frames=4, size=512, seed=5)
    big.add_new(0x60003000, "OW", OVERLAY)
    small = _make("jpegls", frames=3, seed=2)
    small.compress(JPEGLSLossless, generate_instance_uid=False)
    for ds in (big, small):
        archive.ingestor.ingest(BytesIO(to_bytes(ds)))
    return {"big": ct_image(512, 5, 4).tobytes(), "jpegls": ct_image(64, 2, 3).tobytes()}


def _get(
    url: str, byte_range: str | None = None, accept: dict[str, str] = OCTETS
) -> httpx.Response:
    headers = {**accept, **({"Range": byte_range} if byte_range else {})}
    return httpx.get(url, headers=headers, timeout=30)


def _partial(response: httpx.Response, start: int, end: int, length: int) -> bytes:
    assert response.status_code == 206, (response.status_code, response.text)
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{length}"
    assert response.headers["content-length"] == str(end - start)
    assert response.headers["content-type"] == "application/octet-stream"
    return response.content


def test_ranges_of_native_pixel_data(pixels: dict[str, bytes], server: str) -> None:
    value = pixels["big"]
    url = _url(server, "big")
    whole = _get(url)
    assert (whole.status_code, whole.headers["accept-ranges"]) == (200, "bytes")
    assert whole.content == value

    n = len(value)
    across = (BLOCK_SIZE - 100, BLOCK_SIZE + 100)  # across a block and a frame boundary
    assert (
        _partial(_get(url, f"bytes={across[0]}-{across[1] - 1}"), *across, n)
        == value[across[0] : across[1]]
    )
    assert _partial(_get(url, "bytes=0-0"), 0, 1, n) == value[:1]
    assert _partial(_get(url, f"bytes={n - 10}-"), n - 10, n, n) == value[-10:]
    assert _partial(_get(url, "bytes=-4096"), n - 4096, n, n) == value[-4096:]
    assert _partial(_get(url, f"bytes={n - 5}-{n + 500}"), n - 5, n, n) == value[-5:]


def test_decoded_pixel_data_is_answered_whole(pixels: dict[str, bytes], server: str) -> None:
    """A JPEG-LS instance: its uncompressed value is not a slice of the object, so a range
    of it is answered with all of it (200), as RFC 9110 allows."""
    value = pixels["jpegls"]
    response = _get(_url(server, "jpegls"), "bytes=10-99")
    assert (response.status_code, response.content) == (200, value)
    assert "accept-ranges" not in response.headers


def test_ranges_of_other_bulk_data(pixels: dict[str, bytes], server: str) -> None:
    url = _url(server, "big", "60003000")
    assert _partial(_get(url, "bytes=2-5"), 2, 6, len(OVERLAY)) == OVERLAY[2:6]
    assert _get(url).content == OVERLAY


@pytest.mark.parametrize("byte_range", ["bytes=2097152-", "bytes=9999999-10000000", "bytes=-0"])
def test_a_range_past_the_end_is_416(
    pixels: dict[str, bytes], server: str, byte_range: str
) -> None:
    response = _get(_url(server, "big"), byte_range)
    assert response.status_code == 416, response.text
    assert response.headers["content-range"] == f"bytes */{len(pixels['big'])}"
    assert response.json()["error"]


def test_several_ranges_or_a_multipart_answer_get_everything(
    pixels: dict[str, bytes], server: str
) -> None:
    url = _url(server, "big")
    several = _get(url, "bytes=0-1,10-11")
    assert (several.status_code, several.content) == (200, pixels["big"])
    conditional = _get(url, "bytes=0-1", {**OCTETS, "If-Range": '"some-etag"'})
    assert (conditional.status_code, conditional.content) == (200, pixels["big"])
    multipart = _get(
        url, "bytes=0-1", {"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    assert multipart.status_code == 200
    assert multipart.headers["content-type"].startswith("multipart/related")
    assert "content-range" not in multipart.headers
    assert pixels["big"] in multipart.content


def test_a_range_is_checked_against_the_blocks_it_reads(
    archive: Archive, pixels: dict[str, bytes], server: str
) -> None:
    """A flipped last byte breaks the last block only: a range there is refused with 503,
    a range in the first blocks still serves, checked; the whole value stops before the
    damaged block (its first blocks were sent already, so the transfer is cut off)."""
    value = pixels["big"]

    def flip_last_byte(data: bytearray) -> None:
        data[-1] ^= 0xFF

    rewrite_object(archive, _sop("big"), flip_last_byte)
    url = _url(server, "big")
    assert _partial(_get(url, "bytes=100-199"), 100, 200, len(value)) == value[100:200]
    assert _get(url, "bytes=-1").status_code == 503
    with pytest.raises(httpx.RemoteProtocolError):
        _get(url)


def test_an_object_with_sha256_block_digests_is_still_checked(
    archive: Archive, pixels: dict[str, bytes], server: str
) -> None:
    """Objects recorded before block digests were BLAKE3 have SHA-256 ones (block_sha256
    set, block_blake3 NULL): their ranges are still read by block and checked, with
    SHA-256, and a damaged block is still refused."""
    with archive.db.write() as conn:
        key = conn.execute(
            select(objects.c.key).where(objects.c.sop_uid == _sop("big"))
        ).scalar_one()
        data = b"".join(archive.store.iter_bytes(key))
        legacy = b"".join(
            hashlib.sha256(data[at : at + BLOCK_SIZE]).digest()
            for at in range(0, len(data), BLOCK_SIZE)
        )
        conn.execute(
            update(objects)
            .where(objects.c.key == key)
            .values(block_sha256=legacy, block_blake3=None)
        )
    value = pixels["big"]
    url = _url(server, "big")
    assert _partial(_get(url, "bytes=100-199"), 100, 200, len(value)) == value[100:200]
    assert _get(url).content == value

    def flip_last_byte(data: bytearray) -> None:
        data[-1] ^= 0xFF

    rewrite_object(archive, _sop("big"), flip_last_byte)
    assert _partial(_get(url, "bytes=100-199"), 100, 200, len(value)) == value[100:200]
    assert _get(url, "bytes=-1").status_code == 503
