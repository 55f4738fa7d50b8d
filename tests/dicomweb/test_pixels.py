"""WADO-RS pixel resources over HTTP, on both backends: frames, bulk data, rendered, thumbnails.

Every check compares real pixel values: frame bytes against the numpy array they
were made from, rendered images decoded with Pillow against the standard's
windowing formula.
"""

from __future__ import annotations

from io import BytesIO

import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from dicomvault.archive import Archive
from dicomvault.frames import open_image
from dicomvault.synthetic import ct_image, dataset, to_bytes, uid
from tests.support.tamper import rewrite_object

STUDY = uid("pixels/study")
SERIES = uid("pixels/series")
OTHER_SERIES = uid("pixels/series-2")
OCTET = 'multipart/related; type="application/octet-stream"'
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _sop(name: str) -> str:
    return uid(f"pixels/{name}")


def _url(server: str, name: str, series: str = SERIES) -> str:
    return f"{server}/dicom-web/studies/{STUDY}/series/{series}/instances/{_sop(name)}"


def _make(name: str, *, series: str = SERIES, **kwargs: object) -> Dataset:
    return dataset(study_uid=STUDY, series_uid=series, sop_uid=_sop(name), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def stored(archive: Archive) -> dict[str, Dataset]:
    """Native, JPEG-LS, RLE, RGB and non-image instances, ingested; the datasets by name."""
    made: dict[str, Dataset] = {
        "native": _make("native", frames=4, seed=1, instance_number=1),
        "single": _make("single", seed=1, instance_number=2),
        "jpegls": _make("jpegls", frames=3, seed=2, instance_number=3),
        "rle": _make("rle", seed=1, instance_number=4),
        "rgb": _make("rgb", seed=0, series=OTHER_SERIES),
        "noimage": _make("noimage", series=OTHER_SERIES, instance_number=2),
    }
    made["jpegls"].compress(JPEGLSLossless, generate_instance_uid=False)
    made["rle"].compress(RLELossless, generate_instance_uid=False)

    rgb = made["rgb"]
    rng = np.random.default_rng(7)
    rgb.pixels = rng.integers(0, 256, (48, 32, 3), dtype=np.uint8)
    rgb.update(
        {
            "SamplesPerPixel": 3,
            "PhotometricInterpretation": "RGB",
            "PlanarConfiguration": 0,
            "Rows": 48,
            "Columns": 32,
            "BitsAllocated": 8,
            "BitsStored": 8,
            "HighBit": 7,
        }
    )
    for name in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        del rgb[name]
    rgb.PixelData = rgb.pixels.tobytes()

    native = made["native"]  # bulk elements: a top-level overlay and a nested icon image
    native.add_new(0x60003000, "OW", np.arange(1024, dtype=np.uint16).tobytes())
    icon = Dataset()
    icon.PixelData = bytes(range(256)) * 8
    icon["PixelData"].VR = "OB"
    native.IconImageSequence = [icon]

    for keyword in ("PixelData", "Rows", "Columns"):  # an instance that is not an image
        delattr(made["noimage"], keyword)
    for ds in made.values():
        archive.ingestor.ingest(BytesIO(to_bytes(ds)))
    return made


def _parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response."""
    media = response.headers["content-type"]
    assert media.startswith("multipart/related"), media
    boundary = media.split("boundary=")[1].split(";")[0].strip('"').encode()
    out = []
    for chunk in response.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk[2:].partition(b"\r\n\r\n")
        content_type = head.decode().split(":", 1)[1].strip()
        out.append((content_type, body[:-2]))
    return out


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["error"]
    assert isinstance(message, str)
    assert message
    return message


# -- frames ------------------------------------------------------------------------------


def test_native_frames_are_the_stored_pixels(stored: dict[str, Dataset], server: str) -> None:
    expected = ct_image(64, 1, 4)
    response = httpx.get(_url(server, "native") + "/frames/1,3,4")
    assert response.status_code == 200
    assert 'type="application/octet-stream"' in response.headers["content-type"]
    parts = _parts(response)
    assert [p[0] for p in parts] == [
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    ] * 3
    assert [p[1] for p in parts] == [
        expected[0].tobytes(),
        expected[2].tobytes(),
        expected[3].tobytes(),
    ]

    client = DICOMwebClient(f"{server}/dicom-web")
    frames = client.retrieve_instance_frames(
        STUDY, SERIES, _sop("native"), [2], media_types=("application/octet-stream",)
    )
    assert frames == [expected[1].tobytes()]
    single = client.retrieve_instance_frames(STUDY, SERIES, _sop("single"), [1])
    assert single == [ct_image(64, 1).tobytes()]


def test_compressed_frames_decoded_or_as_stored(stored: dict[str, Dataset], server: str) -> None:
    original = ct_image(64, 2, 3)
    url = _url(server, "jpegls") + "/frames/3,1"
    decoded = _parts(httpx.get(url, headers={"Accept": OCTET}))
    assert [body for _, body in decoded] == [original[2].tobytes(), original[0].tobytes()]

    pixel_data = stored["jpegls"].PixelData
    want = [
        get_frame(pixel_data, 2, number_of_frames=3),
        get_frame(pixel_data, 0, number_of_frames=3),
    ]
    for accept in (
        f"{OCTET}; transfer-syntax=*",
        'multipart/related; type="image/jls"',
        f'multipart/related; type="image/jls"; transfer-syntax={JPEGLSLossless}',
    ):
        parts = _parts(httpx.get(url, headers={"Accept": accept}))
        assert [body for _, body in parts] == want, accept
        assert parts[0][0] == f"image/jls; transfer-syntax={JPEGLSLossless}"

    client = DICOMwebClient(f"{server}/dicom-web")
    as_stored = client.retrieve_instance_frames(
        STUDY, SERIES, _sop("jpegls"), [3, 1], media_types=(("image/jls", JPEGLSLossless),)
    )
    assert as_stored == want
    rle = client.retrieve_instance_frames(
        STUDY, SERIES, _sop("rle"), [1], media_types=("application/octet-stream",)
    )
    assert rle == [ct_image(64, 1).tobytes()]


def _jpeg_baseline(name: str, pixels: np.ndarray) -> Dataset:
    """An 8-bit JPEG baseline instance whose frames Pillow encoded (pydicom has no encoder)."""
    ds = _make(name, frames=len(pixels))
    ds.update({"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7})
    for attr in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        del ds[attr]
    encoded = []
    for frame in pixels:
        out = BytesIO()
        Image.fromarray(frame).save(out, format="JPEG", quality=95)
        encoded.append(out.getvalue())
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


@pytest.mark.parametrize(
    ("syntax", "media"),
    [
        (RLELossless, "image/dicom-rle"),
        (JPEG2000Lossless, "image/jp2"),
        (JPEGBaseline8Bit, "image/jpeg"),
    ],
)
def test_stored_frames_in_each_compressed_syntax(
    archive: Archive, server: str, syntax: str, media: str
) -> None:
    name = f"frames-{syntax}"
    if syntax == JPEGBaseline8Bit:
        pixels = (ct_image(64, 5, 2) >> 4).astype(np.uint8)
        ds = _jpeg_baseline(name, pixels)
    else:
        pixels = ct_image(64, 5, 2)
        ds = _make(name, frames=2, seed=5)
        ds.compress(syntax, generate_instance_uid=False)
    archive.ingestor.ingest(BytesIO(to_bytes(ds)))
    url = _url(server, name) + "/frames/2"

    parts = _parts(httpx.get(url, headers={"Accept": f'multipart/related; type="{media}"'}))
    assert parts == [(f"{media}; transfer-syntax={syntax}", get_frame(ds.PixelData, 1))]
    decoded = np.frombuffer(_parts(httpx.get(url))[0][1], dtype=pixels.dtype).reshape(64, 64)
    if syntax == JPEGBaseline8Bit:  # lossy: close to what was encoded
        assert np.abs(decoded.astype(int) - pixels[1]).mean() < 3
    else:
        assert np.array_equal(decoded, pixels[1])


@pytest.mark.parametrize(
    ("name", "frames", "accept", "status"),
    [
        ("native", "0", None, 400),
        ("native", "abc", None, 400),
        ("native", "1,,2", None, 400),
        ("native", "-1", None, 400),
        ("native", "5", None, 404),
        ("native", "1,99999999999", None, 400),
        ("single", "2", None, 404),
        ("noimage", "1", None, 404),
        ("missing", "1", None, 404),
        ("native", "1", 'multipart/related; type="image/jls"', 406),
        ("native", "1", "application/dicom", 406),
        ("jpegls", "1", 'multipart/related; type="image/jp2"', 406),
        ("jpegls", "1", f"{OCTET}; transfer-syntax={RLELossless}", 406),
    ],
)
def test_bad_frame_requests_are_refused_with_a_reason(
    stored: dict[str, Dataset],
    server: str,
    name: str,
    frames: str,
    accept: str | None,
    status: int,
) -> None:
    headers = {"Accept": accept} if accept else {}
    _error(httpx.get(_url(server, name) + f"/frames/{frames}", headers=headers), status)


def test_bad_uid_in_a_frame_url_is_400(stored: dict[str, Dataset], server: str) -> None:
    url = f"{server}/dicom-web/studies/{STUDY}/series/{SERIES}/instances/1.02/frames/1"
    _error(httpx.get(url), 400)


def test_native_frames_are_ranged_reads_checked_block_by_block(
    archive: Archive, server: str
) -> None:
    """Four 512x512x16 frames (2 MiB of pixels, three 1 MiB blocks with the header).

    A byte changed in the header breaks block 0 only: the frame in that block and
    every whole-object read are refused with 503, while the last frame, read by
    range from blocks the change did not touch, still serves, checked.
    """
    ds = _make("big", frames=4, size=512, seed=5)
    archive.ingestor.ingest(BytesIO(to_bytes(ds)))
    frames = ct_image(512, 5, 4)
    url = _url(server, "big")
    assert _parts(httpx.get(url + "/frames/4"))[0][1] == frames[3].tobytes()

    def rename(data: bytearray) -> None:
        data[data.index(b"Doe^Jane")] ^= 0x20  # "doe^Jane": same length, different bytes

    rewrite_object(archive, _sop("big"), rename)
    assert _parts(httpx.get(url + "/frames/4"))[0][1] == frames[3].tobytes()
    _error(httpx.get(url + "/frames/1"), 503)
    _error(
        httpx.get(url + "/bulkdata/7FE00010", headers={"Accept": "application/octet-stream"}), 503
    )
    _error(httpx.get(url, headers={"Accept": AS_STORED}), 503)


def test_a_changed_pixel_is_never_served(archive: Archive, server: str) -> None:
    ds = _make("rot", frames=4, size=512, seed=6)
    archive.ingestor.ingest(BytesIO(to_bytes(ds)))
    url = _url(server, "rot")

    def flip_last_pixel(data: bytearray) -> None:
        data[-1] ^= 0xFF

    rewrite_object(archive, _sop("rot"), flip_last_pixel)
    _error(httpx.get(url + "/frames/4"), 503)
    assert _parts(httpx.get(url + "/frames/1"))[0][1] == ct_image(512, 6, 4)[0].tobytes()


def test_one_bit_frames_that_do_not_start_on_a_byte(archive: Archive, server: str) -> None:
    """BitsAllocated 1 with 5x5 frames: frame 2 starts at bit 25 of the Pixel Data."""
    bits = np.random.default_rng(3).integers(0, 2, (3, 5, 5), dtype=np.uint8)
    ds = _make("bits", frames=3)
    ds.update({"Rows": 5, "Columns": 5, "BitsAllocated": 1, "BitsStored": 1, "HighBit": 0})
    for name in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        del ds[name]
    ds.PixelData = np.packbits(bits.ravel(), bitorder="little").tobytes()
    ds["PixelData"].VR = "OB"
    archive.ingestor.ingest(BytesIO(to_bytes(ds)))

    parts = _parts(httpx.get(_url(server, "bits") + "/frames/1,2,3"))
    assert [body for _, body in parts] == [
        np.packbits(frame.ravel(), bitorder="little").tobytes() for frame in bits
    ]
    shown = _image(
        httpx.get(_url(server, "bits") + "/frames/2/rendered", headers={"Accept": "image/png"})
    )
    assert np.array_equal(shown, bits[1] * 255)


# -- bulk data ---------------------------------------------------------------------------


def test_pixel_data_bulk_data_from_the_metadata_uri(
    stored: dict[str, Dataset], server: str
) -> None:
    metadata = httpx.get(_url(server, "native") + "/metadata").json()[0]
    uri = metadata["7FE00010"]["BulkDataURI"]
    client = DICOMwebClient(f"{server}/dicom-web")
    assert client.retrieve_bulkdata(uri) == [ct_image(64, 1, 4).tobytes()]

    plain = httpx.get(uri, headers={"Accept": "application/octet-stream"})
    assert plain.headers["content-type"] == "application/octet-stream"
    assert plain.content == ct_image(64, 1, 4).tobytes()

    compressed = _url(server, "jpegls") + "/bulkdata/7FE00010"
    decoded = _parts(httpx.get(compressed))
    assert decoded == [
        (
            "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
            ct_image(64, 2, 3).tobytes(),
        )
    ]
    frames = _parts(httpx.get(compressed, headers={"Accept": f"{OCTET}; transfer-syntax=*"}))
    pixel_data = stored["jpegls"].PixelData
    assert [body for _, body in frames] == [
        get_frame(pixel_data, i, number_of_frames=3) for i in range(3)
    ]


def test_other_bulk_data_top_level_and_nested(stored: dict[str, Dataset], server: str) -> None:
    metadata = httpx.get(_url(server, "native") + "/metadata").json()[0]
    overlay_uri = metadata["60003000"]["BulkDataURI"]
    icon_uri = metadata["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    assert icon_uri.endswith("/bulkdata/00880200/0/7FE00010")

    client = DICOMwebClient(f"{server}/dicom-web")
    assert client.retrieve_bulkdata(overlay_uri) == [np.arange(1024, dtype=np.uint16).tobytes()]
    icon = httpx.get(icon_uri, headers={"Accept": "application/octet-stream"})
    assert icon.content == bytes(range(256)) * 8


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [("bytes=0-99", 0, 100), ("bytes=2000-", 2000, None), ("bytes=-10", -10, None)],
)
def test_a_byte_range_of_bulk_data(
    stored: dict[str, Dataset], server: str, range_header: str, start: int, end: int | None
) -> None:
    pixels = ct_image(64, 1, 4).tobytes()  # 32 KiB: the slice is read from the object
    overlay = np.arange(1024, dtype=np.uint16).tobytes()
    for path, value in (("7FE00010", pixels), ("60003000", overlay)):
        url = _url(server, "native") + f"/bulkdata/{path}"
        whole = httpx.get(url, headers={"Accept": "application/octet-stream"})
        assert whole.headers["accept-ranges"] == "bytes"
        part = httpx.get(url, headers={"Accept": "application/octet-stream", "Range": range_header})
        assert part.status_code == 206, part.text
        expected = value[start:end]
        assert part.content == expected
        first = start % len(value)
        assert part.headers["content-range"] == (
            f"bytes {first}-{first + len(expected) - 1}/{len(value)}"
        )


def test_unsatisfiable_and_ignored_ranges(stored: dict[str, Dataset], server: str) -> None:
    url = _url(server, "native") + "/bulkdata/7FE00010"
    octet = {"Accept": "application/octet-stream"}
    beyond = httpx.get(url, headers={**octet, "Range": "bytes=40000-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == "bytes */32768"
    for ignored in ("bytes=0-1,5-9", "items=0-4", "bytes=9-2"):
        whole = httpx.get(url, headers={**octet, "Range": ignored})
        assert (whole.status_code, len(whole.content)) == (200, 32768), ignored
    # Decoded from JPEG-LS: not a slice of the object, so answered whole.
    jpegls = _url(server, "jpegls") + "/bulkdata/7FE00010"
    decoded = httpx.get(jpegls, headers={**octet, "Range": "bytes=0-9"})
    assert decoded.status_code == 200
    assert decoded.content == ct_image(64, 2, 3).tobytes()


@pytest.mark.parametrize(
    ("name", "path", "accept", "status"),
    [
        ("native", "12345678", None, 404),  # absent
        ("native", "00100010", None, 404),  # PatientName: not binary
        ("native", "not-a-tag", None, 404),
        ("native", "00880200/5/7FE00010", None, 404),  # no such item
        ("native", "00880200/x/7FE00010", None, 404),
        ("native", "00880200/0", None, 404),  # names an item, not an element
        ("noimage", "7FE00010", None, 404),
        ("missing", "60003000", None, 404),
        ("native", "60003000", "image/png", 406),
        ("native", "7FE00010", 'multipart/related; type="image/jls"', 406),
    ],
)
def test_bad_bulk_data_requests(
    stored: dict[str, Dataset],
    server: str,
    name: str,
    path: str,
    accept: str | None,
    status: int,
) -> None:
    headers = {"Accept": accept} if accept else {}
    _error(httpx.get(_url(server, name) + f"/bulkdata/{path}", headers=headers), status)


# -- rendered ----------------------------------------------------------------------------


def _image(response: httpx.Response, media: str = "image/png") -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media
    return np.asarray(Image.open(BytesIO(response.content)))


def _windowed(stored_values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear windowing of rescaled CT values to 8 bits."""
    hu = stored_values.astype(np.float64) - 1024  # RescaleIntercept -1024, slope 1
    c, w = center - 0.5, width - 1
    return np.rint(np.clip((hu - c) / w + 0.5, 0, 1) * 255).astype(np.uint8)


def test_rendered_png_applies_rescale_and_the_stored_window(
    stored: dict[str, Dataset], server: str
) -> None:
    client = DICOMwebClient(f"{server}/dicom-web")
    png = client.retrieve_instance_rendered(
        STUDY, SERIES, _sop("single"), media_types=("image/png",)
    )
    pixels = np.asarray(Image.open(BytesIO(png)))
    assert pixels.shape == (64, 64)
    assert pixels.min() < pixels.max()
    expected = _windowed(ct_image(64, 1), 40, 400)
    assert np.abs(pixels.astype(int) - expected).max() <= 1

    # The lossless compressed copy of the same pixels renders identically.
    rle = _image(httpx.get(_url(server, "rle") + "/rendered", headers={"Accept": "image/png"}))
    assert np.array_equal(rle, pixels)


def test_window_viewport_and_quality_change_the_output(
    stored: dict[str, Dataset], server: str
) -> None:
    url = _url(server, "single") + "/rendered"
    png = {"Accept": "image/png"}
    stored_window = _image(httpx.get(url, headers=png))
    narrow = _image(httpx.get(url, headers=png, params={"window": "0,100"}))
    assert not np.array_equal(narrow, stored_window)
    assert np.abs(narrow.astype(int) - _windowed(ct_image(64, 1), 0, 100)).max() <= 1
    sigmoid = _image(httpx.get(url, headers=png, params={"window": "0,100,sigmoid"}))
    assert not np.array_equal(sigmoid, narrow)

    small = _image(httpx.get(url, headers=png, params={"viewport": "32,16"}))
    assert small.shape == (16, 16)  # square image, scaled into 32x16 keeping its aspect
    tall = _image(
        httpx.get(
            _url(server, "rgb", OTHER_SERIES) + "/rendered",
            params={"viewport": "16,16"},
            headers=png,
        )
    )
    assert tall.shape[:2] == (16, 11)  # 48x32 (rows x columns) scaled by 1/3, rounded

    # Source regions: the top-left quadrant; the same flipped; to the image's edges.
    def region(value: str) -> np.ndarray:
        return _image(httpx.get(url, headers=png, params={"viewport": value}))

    quadrant = stored_window[:32, :32]
    assert np.array_equal(region("64,64,0,0,32,32"), quadrant)  # not enlarged
    assert np.array_equal(region("64,64,32,0,-32,32"), quadrant[:, ::-1])
    assert np.array_equal(region("64,64,0,32,32,-32"), quadrant[::-1, :])
    assert np.array_equal(region("64,64,48,40,,"), stored_window[40:, 48:])
    assert np.array_equal(region("64,64,,,,"), stored_window)
    assert region("8,8,0,0,32,32").shape == (8, 8)

    jpeg = httpx.get(url)  # JPEG is the default
    assert _image(jpeg, "image/jpeg").shape == (64, 64)
    low = httpx.get(url, params={"quality": "5"})
    high = httpx.get(url, params={"quality": "100"})
    assert len(low.content) < len(jpeg.content) < len(high.content)


def test_rendered_frames_and_colour(stored: dict[str, Dataset], server: str) -> None:
    png = {"Accept": "image/png"}
    base = _url(server, "native")
    frames = [_image(httpx.get(f"{base}/frames/{n}/rendered", headers=png)) for n in (1, 4)]
    original = ct_image(64, 1, 4)
    for pixels, index in zip(frames, (0, 3), strict=True):
        assert np.abs(pixels.astype(int) - _windowed(original[index], 40, 400)).max() <= 1
    assert np.array_equal(_image(httpx.get(f"{base}/rendered", headers=png)), frames[0])

    several = httpx.get(
        f"{base}/frames/1,4/rendered", headers={"Accept": 'multipart/related; type="image/png"'}
    )
    assert several.status_code == 200, several.text
    parts = _parts(several)
    assert [media for media, _ in parts] == ["image/png", "image/png"]
    for (_, body), expected in zip(parts, frames, strict=True):
        assert np.array_equal(np.asarray(Image.open(BytesIO(body))), expected)

    compressed = _image(httpx.get(_url(server, "jpegls") + "/frames/2/rendered", headers=png))
    assert np.abs(compressed.astype(int) - _windowed(ct_image(64, 2, 3)[1], 40, 400)).max() <= 1

    rgb = _image(httpx.get(_url(server, "rgb", OTHER_SERIES) + "/rendered", headers=png))
    assert np.array_equal(rgb, stored["rgb"].pixels)  # colour is shown as stored


@pytest.mark.parametrize(
    ("name", "suffix", "params", "accept", "status"),
    [
        ("single", "/rendered", {"window": "abc"}, None, 400),
        ("single", "/rendered", {"window": "40"}, None, 400),
        ("single", "/rendered", {"window": "40,0"}, None, 400),
        ("single", "/rendered", {"window": "40,400,cubic"}, None, 400),
        ("single", "/rendered", {"window": "nan,400"}, None, 400),
        ("single", "/rendered", {"viewport": "0,10"}, None, 400),
        ("single", "/rendered", {"viewport": "a,b"}, None, 400),
        ("single", "/rendered", {"viewport": "64"}, None, 400),
        ("single", "/rendered", {"viewport": "64,64,0,0,32"}, None, 400),
        ("single", "/rendered", {"viewport": "64,64,0,0,65,10"}, None, 400),
        ("single", "/rendered", {"viewport": "64,64,-1,0,10,10"}, None, 400),
        ("single", "/rendered", {"viewport": "64,64,10,0,-11,10"}, None, 400),
        ("single", "/rendered", {"viewport": "64,64,64,0,,"}, None, 400),
        ("single", "/rendered", {"quality": "0"}, None, 400),
        ("single", "/rendered", {"quality": "101"}, None, 400),
        ("single", "/rendered", {"quality": "high"}, None, 400),
        ("single", "/rendered", {}, "image/gif", 406),
        ("single", "/rendered", {}, "application/dicom", 406),
        ("native", "/frames/1,2/rendered", {}, 'multipart/related; type="image/gif"', 406),
        ("native", "/frames/9/rendered", {}, None, 404),
        ("native", "/frames/x/rendered", {}, None, 400),
        ("noimage", "/rendered", {}, None, 404),
        ("noimage", "/thumbnail", {}, None, 404),
        ("missing", "/rendered", {}, None, 404),
    ],
)
def test_bad_render_requests_are_refused_with_a_reason(
    stored: dict[str, Dataset],
    server: str,
    name: str,
    suffix: str,
    params: dict[str, str],
    accept: str | None,
    status: int,
) -> None:
    series = OTHER_SERIES if name == "noimage" else SERIES
    headers = {"Accept": accept} if accept else {}
    response = httpx.get(_url(server, name, series) + suffix, params=params, headers=headers)
    _error(response, status)


# -- thumbnails --------------------------------------------------------------------------


def test_thumbnails_show_a_representative_instance(archive: Archive, server: str) -> None:
    study = uid("thumbs/study")
    series = [uid("thumbs/series/0"), uid("thumbs/series/1")]
    for s, series_uid in enumerate(series):
        for i in range(3):
            ds = dataset(
                study_uid=study,
                series_uid=series_uid,
                sop_uid=uid(f"thumbs/{s}/{i}"),
                size=256,
                seed=10 * s + i,
                series_number=s + 1,
                instance_number=i + 1,
            )
            archive.ingestor.ingest(BytesIO(to_bytes(ds)))
    png = {"Accept": "image/png"}
    root = f"{server}/dicom-web/studies/{study}"
    study_thumb = _image(httpx.get(f"{root}/thumbnail", headers=png))
    assert study_thumb.shape == (128, 128)
    assert study_thumb.min() < study_thumb.max()

    middle = f"{root}/series/{series[0]}/instances/{uid('thumbs/0/1')}"
    assert np.array_equal(study_thumb, _image(httpx.get(f"{middle}/thumbnail", headers=png)))
    assert np.array_equal(
        study_thumb, _image(httpx.get(f"{root}/series/{series[0]}/thumbnail", headers=png))
    )
    second = _image(httpx.get(f"{root}/series/{series[1]}/thumbnail", headers=png))
    assert not np.array_equal(second, study_thumb)
    full = _image(httpx.get(f"{middle}/rendered", headers=png))
    assert full.shape == (256, 256)

    # Rendered series and study: every image's first frame, one part each, in order.
    multipart_png = {"Accept": 'multipart/related; type="image/png"'}
    series_parts = _parts(httpx.get(f"{root}/series/{series[0]}/rendered", headers=multipart_png))
    study_parts = _parts(httpx.get(f"{root}/rendered", headers=multipart_png))
    assert len(series_parts) == 3
    assert len(study_parts) == 6
    assert {media for media, _ in study_parts} == {"image/png"}
    assert np.array_equal(np.asarray(Image.open(BytesIO(series_parts[1][1]))), full)
    assert [body for _, body in study_parts[:3]] == [body for _, body in series_parts]
    assert _parts(httpx.get(f"{root}/rendered"))[0][0] == "image/jpeg"
    _error(httpx.get(f"{server}/dicom-web/studies/1.2.3/rendered"), 404)

    jpeg = httpx.get(f"{root}/thumbnail", params={"viewport": "64,64"})
    assert _image(jpeg, "image/jpeg").shape == (64, 64)
    _error(httpx.get(f"{server}/dicom-web/studies/1.2.3/thumbnail"), 404)
    _error(httpx.get(f"{root}/series/1.2.3/thumbnail"), 404)
    _error(httpx.get(f"{server}/dicom-web/studies/1..2/thumbnail"), 400)


def test_reading_a_frame_leaves_the_instance_attributes_as_indexed(
    archive: Archive, stored: dict[str, Dataset]
) -> None:
    # The group 0028 attributes are built once per instance and shared with the data
    # set a frame is read through, which says it holds one frame: sharing must not
    # change the instance's own NumberOfFrames.
    image = open_image(archive.db, archive.store, STUDY, SERIES, _sop("native"))
    attributes = image.attributes()
    np.testing.assert_array_equal(image.frame_array(2), stored["native"].pixel_array[1])
    assert image.attributes() is attributes
    assert int(attributes.NumberOfFrames) == 4
    np.testing.assert_array_equal(image.frame_array(4), stored["native"].pixel_array[3])
