"""Good and bad Part 10 files, built byte by byte where pydicom would refuse to write them.

`BAD_FILES` is the corpus the ingest and STOW-RS tests share: each entry is the
bytes and a pattern the refusal's reason must match, so a test fails when a bad
file is refused for the wrong reason as well as when it is stored.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomvault.synthetic import dataset, to_bytes, uid

__all__ = [
    "BAD_FILES",
    "BadFile",
    "element",
    "good",
    "multipart",
    "nested",
    "parse_multipart",
    "pixel_data_offset",
    "top_level_offsets",
]

_ITEM_UNDEFINED = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
CONTENT_SEQUENCE = 0x0040A730  # sorts after the image attributes, before Pixel Data
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def good(name: str, **kwargs: object) -> bytes:
    """A small valid CT instance whose UIDs derive from `name`."""
    return to_bytes(_dataset(name, **kwargs))


def _dataset(name: str, **kwargs: object) -> Dataset:
    options: dict[str, object] = {"size": 16, **kwargs}
    return dataset(  # type: ignore[arg-type]
        study_uid=uid(f"{name}/st"),
        series_uid=uid(f"{name}/se"),
        sop_uid=uid(f"{name}/i"),
        **options,
    )


def element(tag: int, vr: bytes, value: bytes, *, length: int | None = None) -> bytes:
    """One explicit VR little endian element; `length` overrides the encoded length."""
    size = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in _LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", size) + value
    return head + struct.pack("<H", size) + value


def _tag(tag: int) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF)


def nested(depth: int, how: str) -> bytes:
    """A Content Sequence whose items nest `depth` sequences deep.

    how: "undefined" (explicit VR, undefined lengths), "defined" (explicit VR,
    defined lengths) or "un" (the whole nest as one UN value of defined length,
    implicit VR inside, as PS3.5 6.2.2 encodes an unknown sequence).
    """
    inner = b""
    for _ in range(depth):
        if how == "undefined":
            inner = (
                _tag(CONTENT_SEQUENCE)
                + b"SQ\0\0\xff\xff\xff\xff"
                + _ITEM_UNDEFINED
                + inner
                + _ITEM_END
                + _SEQ_END
            )
        else:
            item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(inner)) + inner
            if how == "defined":
                inner = element(CONTENT_SEQUENCE, b"SQ", item)
            else:  # implicit VR inside the UN value: tag + 4-byte length
                inner = _tag(CONTENT_SEQUENCE) + struct.pack("<I", len(item)) + item
    if how == "un":
        value = inner[8:]  # the outermost element's items become the UN value
        return element(CONTENT_SEQUENCE, b"UN", value)
    return inner


def with_nest(name: str, depth: int, how: str) -> bytes:
    """A valid instance with a `depth`-deep Content Sequence before its Pixel Data."""
    data = good(name)
    at = pixel_data_offset(data)
    return data[:at] + nested(depth, how) + data[at:]


def pixel_data_offset(data: bytes) -> int:
    """Where the (top-level, explicit VR) Pixel Data element starts."""
    return data.rindex(PIXEL_DATA_TAG + b"OW")


def top_level_offsets(data: bytes) -> list[int]:
    """Start of every top-level element of a flat explicit VR little endian file, and its end.

    Only for files without sequences (like `good`): it does not descend into items.
    """
    offsets = []
    pos = 132
    while pos < len(data):
        offsets.append(pos)
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack("<I", data[pos + 8 : pos + 12])
            pos += 12 + length
        else:
            (length,) = struct.unpack("<H", data[pos + 6 : pos + 8])
            pos += 8 + length
    offsets.append(len(data))
    return offsets


def _meta_end(data: bytes) -> int:
    (group_length,) = struct.unpack("<I", data[140:144])
    return 144 + group_length


def _with_uid(name: str, keyword: str, value: str | None) -> bytes:
    """An instance whose `keyword` is `value` (None: absent), in the file meta too."""
    ds = _dataset(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs these need
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
            if keyword == "SOPInstanceUID" and value:
                ds.file_meta.MediaStorageSOPInstanceUID = value
        return to_bytes(ds)


def _short_pixels(name: str, *, frames: int = 1, keep: int) -> bytes:
    """Pixel Data whose (consistent) length holds `keep` bytes fewer than declared."""
    data = good(name, frames=frames)
    at = pixel_data_offset(data)
    (length,) = struct.unpack("<I", data[at + 8 : at + 12])
    return data[: at + 8] + struct.pack("<I", length - keep) + data[at + 12 : -keep]


def _deflated(name: str) -> bytes:
    ds = _dataset(name)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return to_bytes(ds)


def _corrupt_deflate(name: str) -> bytes:
    data = bytearray(_deflated(name))
    start = _meta_end(bytes(data))
    data[start : start + 16] = b"\xff" * 16
    return bytes(data)


def _bad_transfer_syntax(name: str) -> bytes:
    data = good(name)
    syntax = b"1.2.840.10008.1.2.1\0"
    evil = b"1.2.840\r\nX-Evil: 12\0"
    assert len(evil) == len(syntax)
    return data.replace(syntax, evil, 1)


def _sequence_past_end(name: str) -> bytes:
    data = good(name)
    at = pixel_data_offset(data)
    item = b"\xfe\xff\x00\xe0" + struct.pack("<I", 0)
    return data[:at] + element(CONTENT_SEQUENCE, b"SQ", item, length=10**6) + data[at:]


def _item_past_sequence(name: str) -> bytes:
    data = good(name)
    at = pixel_data_offset(data)
    item = b"\xfe\xff\x00\xe0" + struct.pack("<I", 400)  # claims 400 bytes, sequence has 8
    return data[:at] + element(CONTENT_SEQUENCE, b"SQ", item) + data[at:]


@dataclass(frozen=True)
class BadFile:
    data: bytes
    reason: str  # a regular expression the refusal's message must match


def _bad_files() -> dict[str, BadFile]:
    base = good("bad")
    meta_end = _meta_end(base)
    at = pixel_data_offset(base)
    sop = uid("bad/i").encode()
    in_sop = base.index(sop, meta_end) + 10  # inside the SOP Instance UID value
    pixel_length = struct.unpack("<I", base[at + 8 : at + 12])[0]
    truncated = "truncated|runs past the end|declares .* but only"
    files = {
        "not DICOM at all": BadFile(b"hello world\n" * 40, "not a DICOM Part 10 file"),
        "cut inside the preamble": BadFile(base[:100], "not a DICOM Part 10 file"),
        "cut inside the meta group length": BadFile(base[:141], truncated),
        "cut inside the meta": BadFile(base[:200], truncated),
        "cut inside the last meta value": BadFile(base[: meta_end - 3], truncated),
        "cut between two meta elements": BadFile(
            base[: top_meta_boundary(base)], "ends inside the file meta"
        ),
        "cut inside an element tag": BadFile(base[: meta_end + 2], truncated),
        "cut inside an element value": BadFile(base[:in_sop], r"declares \d+ bytes but only"),
        "cut exactly before the pixel data": BadFile(
            base[:at], "Rows and Columns describe an image but there is no Pixel Data"
        ),
        "cut inside the pixel data": BadFile(
            base[: at + 12 + pixel_length // 2], r"Pixel Data declares \d+ bytes but only"
        ),
        "pixel data length past the end": BadFile(
            base[: at + 8] + struct.pack("<I", 10**9) + base[at + 12 :],
            r"Pixel Data declares 1000000000 bytes but only \d+ remain",
        ),
        "element length past the end": BadFile(
            base[:at] + element(0x00540081, b"US", b"\1\0", length=0xFFF0),
            r"declares 65520 bytes but only 2 remain",
        ),
        "sequence length past the end": BadFile(_sequence_past_end("bad"), "past the end"),
        "item longer than its sequence": BadFile(_item_past_sequence("bad"), "item declares"),
        "invalid VR": BadFile(base[:at] + b"\x54\x00\x81\x00\x01\x02\x02\x00\x01\x00", "VR"),
        "native pixel data short by 100 bytes": BadFile(
            _short_pixels("bad", keep=100), r"native Pixel Data holds \d+ bytes, \d+ expected"
        ),
        "native pixel data of 1 frame out of 3": BadFile(
            _short_pixels("bad", frames=3, keep=2 * 16 * 16 * 2),
            r"native Pixel Data holds 512 bytes, 1536 expected",
        ),
        "deflated data set cut short": BadFile(_deflated("bad")[:-20], "deflated"),
        "deflated data set corrupt": BadFile(_corrupt_deflate("bad"), "deflated data set is"),
        "transfer syntax UID with a line break": BadFile(
            _bad_transfer_syntax("bad"), "TransferSyntaxUID .* is not a valid UID"
        ),
        "SOPInstanceUID ../": BadFile(
            _with_uid("bad", "SOPInstanceUID", "../../etc/passwd"), "SOPInstanceUID .*not a valid"
        ),
        "SOPInstanceUID with a NUL inside": BadFile(
            _with_uid("bad", "SOPInstanceUID", "1.2\0.3"), "SOPInstanceUID .*not a valid"
        ),
        "SOPInstanceUID over 64 characters": BadFile(
            _with_uid("bad", "SOPInstanceUID", "1." + "2" * 70), "longer than 64"
        ),
        "SOPInstanceUID with letters": BadFile(
            _with_uid("bad", "SOPInstanceUID", "1.2.abc"), "SOPInstanceUID .*not a valid"
        ),
        "SOPInstanceUID empty": BadFile(_with_uid("bad", "SOPInstanceUID", ""), "missing"),
        "SeriesInstanceUID with a leading zero": BadFile(
            _with_uid("bad", "SeriesInstanceUID", "1.02.3"), "SeriesInstanceUID .*not a valid"
        ),
        "StudyInstanceUID missing": BadFile(
            _with_uid("bad", "StudyInstanceUID", None), "StudyInstanceUID is missing"
        ),
        "media SOP instance UID differs": BadFile(
            base.replace(sop, uid("other/i").encode(), 1), "differs from SOPInstanceUID"
        ),
    }
    for depth in (40, 250):
        for how in ("undefined", "defined", "un"):
            files[f"sequences nested {depth} deep ({how} length)"] = BadFile(
                with_nest("bad", depth, how), "nested deeper than 32"
            )
    return files


def top_meta_boundary(data: bytes) -> int:
    """The start of the last file meta element: a cut there ends the file between elements."""
    pos, last = 132, 132
    meta_end = _meta_end(data)
    while pos < meta_end:
        last = pos
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            pos += 12 + struct.unpack("<I", data[pos + 8 : pos + 12])[0]
        else:
            pos += 8 + struct.unpack("<H", data[pos + 6 : pos + 8])[0]
    return last


BAD_FILES = _bad_files()


# -- multipart --------------------------------------------------------------------------

STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=XX'


def multipart(*parts: tuple[str, bytes], boundary: str = "XX", close: bool = True) -> bytes:
    """A multipart/related body of (Content-Type, body) parts."""
    out = b""
    for content_type, body in parts:
        out += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + body + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """(headers, body) of each part of a multipart response, split independently of the server."""
    assert content_type.startswith("multipart/related"), content_type
    boundary = content_type.split("boundary=")[1].split(";")[0].strip().strip('"').encode()
    delimiter = b"\r\n--" + boundary
    assert body.startswith(b"--" + boundary + b"\r\n"), body[:80]
    chunks = (b"\r\n" + body).split(delimiter)
    assert chunks[0] == b""
    assert chunks[-1].startswith(b"--"), "no closing delimiter"
    parts = []
    for chunk in chunks[1:-1]:
        head, _, content = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


def inflate_check(data: bytes) -> bytes:
    """The inflated data set of a deflated file (for tests on the deflate cases)."""
    return zlib.decompress(data[_meta_end(data) :], -zlib.MAX_WBITS)


def as_file(data: bytes) -> BytesIO:
    return BytesIO(data)
