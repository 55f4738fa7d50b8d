"""Structural validation of a DICOM Part 10 file, before pydicom sees it.

pydicom parses truncated data without complaint, so this walker checks the
framing of every element first: each declared length fits inside its parent
(sequence, item or file), sequences and items are properly delimited, nesting
stays below `MAX_DEPTH`, and the Pixel Data element's value lies inside the file.
It seeks over values rather than reading them, so a 2 GB instance costs a few
hundred small reads. It also returns where the Pixel Data value lies, so frames
can later be served by ranged reads of the stored object.

Values pydicom may later parse as a sequence (UN or unknown-VR values that begin
with an item) are walked too: otherwise a 250-deep nest hidden in a UN element
would pass here and surface further on as a RecursionError or a huge JSON tree.
The file meta information is checked against its group length, so a file cut
between two meta elements is reported as truncated, and its Transfer Syntax UID
must be a UID: it is echoed in response headers.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import IO

from pydicom.datadict import dictionary_VR
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from dicomvault.errors import InvalidInstance
from dicomvault.model.uids import require_uid

__all__ = ["MAX_DEPTH", "Layout", "read_layout"]

MAX_DEPTH = 32
MAX_INFLATED_BYTES = 1024**3
UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = frozenset({0x7FE00008, 0x7FE00009})  # Float / Double Float Pixel Data
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_META_GROUP_LENGTH = 0x00020000
_TRANSFER_SYNTAX = 0x00020010
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where things are in a structurally valid Part 10 file."""

    size: int
    transfer_syntax: str
    media_sop_instance_uid: str | None
    dataset_offset: int
    pixel_offset: int | None  # start of the Pixel Data value in the file, when seekable
    pixel_length: int | None  # None: undefined length (encapsulated), or no Pixel Data
    pixel_vr: str | None
    has_pixel_data: bool
    has_float_pixel_data: bool = False


class _Walker:
    def __init__(self, fp: IO[bytes], size: int, explicit: bool, little: bool) -> None:
        self.fp = fp
        self.size = size
        self.explicit = explicit
        self.endian = "<" if little else ">"
        self.pixel: tuple[int, int | None, str | None] | None = None
        self.float_pixels = False

    def _read(self, n: int, what: str) -> bytes:
        data = self.fp.read(n)
        if len(data) != n:
            raise InvalidInstance(f"truncated: the data ends inside {what}")
        return data

    def _tag(self) -> int:
        group, elem = struct.unpack(self.endian + "HH", self._read(4, "an element tag"))
        return int((group << 16) | elem)

    def dataset(self, end: int | None, depth: int) -> None:
        """Walk elements until `end` (defined length) or an item delimiter (undefined)."""
        if depth > MAX_DEPTH:
            raise InvalidInstance(f"sequences nested deeper than {MAX_DEPTH} levels")
        while True:
            pos = self.fp.tell()
            if end is not None and pos >= end:
                if pos > end:
                    raise InvalidInstance(f"an element crosses the end of its item at {end}")
                return
            if end is None and pos >= self.size:
                raise InvalidInstance("truncated: an item has no delimiter")
            tag = self._tag()
            if tag == _ITEM_END:
                if end is not None:
                    raise InvalidInstance("item delimiter inside a defined-length item")
                self._read(4, "an item delimiter")
                return
            if tag >> 16 == 0xFFFE:
                raise InvalidInstance(f"unexpected delimiter ({tag:08X}) at offset {pos}")
            vr, length = self._vr_and_length(tag)
            value_start = self.fp.tell()
            limit = self.size if end is None else end
            if tag == PIXEL_DATA and depth == 0:
                self._pixel_data(value_start, length, vr, limit)
                continue
            if tag in _FLOAT_PIXEL_DATA and depth == 0:
                self.float_pixels = True
            opaque = vr in ("UN", None)
            is_sequence = vr == "SQ" or (
                opaque and (length == UNDEFINED or self._holds_items(value_start, length, limit))
            )
            if is_sequence:
                self._sequence(length, limit, depth, implicit_un=vr == "UN")
                continue
            if length == UNDEFINED:
                raise InvalidInstance(f"element ({tag:08X}) has an undefined length")
            if value_start + length > limit:
                raise InvalidInstance(
                    f"element ({tag:08X}) declares {length} bytes but only "
                    f"{max(0, limit - value_start)} remain"
                )
            self.fp.seek(value_start + length)

    def _vr_and_length(self, tag: int) -> tuple[str | None, int]:
        if not self.explicit:
            (length,) = struct.unpack(self.endian + "I", self._read(4, "an element length"))
            try:
                vr: str | None = dictionary_VR(tag)
            except KeyError:
                vr = None
            return vr, int(length)
        raw_vr = self._read(2, "a value representation")
        if raw_vr in _LONG_VRS:
            self._read(2, "reserved bytes")
            (length,) = struct.unpack(self.endian + "I", self._read(4, "an element length"))
        elif raw_vr.isalpha() and raw_vr.isupper():
            (length,) = struct.unpack(self.endian + "H", self._read(2, "an element length"))
        else:
            raise InvalidInstance(f"element ({tag:08X}) has an invalid VR {raw_vr!r}")
        return raw_vr.decode("ascii"), int(length)

    def _holds_items(self, start: int, length: int, limit: int) -> bool:
        """True when a defined-length value begins with an item tag, i.e. is a sequence.

        pydicom turns UN into the dictionary's VR (SQ for known sequences, also
        private ones), and reads it as implicit VR; so must the walker.
        """
        if length < 8 or start + 8 > limit:
            return False
        head = self.fp.read(4)
        self.fp.seek(start)
        return head == struct.pack(self.endian + "HH", 0xFFFE, 0xE000)

    def _sequence(self, length: int, limit: int, depth: int, implicit_un: bool) -> None:
        start = self.fp.tell()
        if length != UNDEFINED and start + length > limit:
            raise InvalidInstance(f"a sequence declares {length} bytes past the end of its parent")
        end = None if length == UNDEFINED else start + length
        saved = self.explicit
        if implicit_un:  # PS3.5 6.2.2: a sequence encoded as UN is implicit VR inside
            self.explicit = False
        try:
            while True:
                if end is not None and self.fp.tell() >= end:
                    if self.fp.tell() > end:
                        raise InvalidInstance("an item crosses the end of its sequence")
                    return
                tag = self._tag()
                (item_len,) = struct.unpack(self.endian + "I", self._read(4, "an item length"))
                if tag == _SEQ_END:
                    if end is not None:
                        raise InvalidInstance("sequence delimiter in a defined-length sequence")
                    return
                if tag != _ITEM:
                    raise InvalidInstance(f"expected an item in a sequence, found ({tag:08X})")
                if item_len == UNDEFINED:
                    self.dataset(None, depth + 1)
                else:
                    item_end = self.fp.tell() + item_len
                    if item_end > (end if end is not None else limit):
                        raise InvalidInstance("an item declares more bytes than its sequence has")
                    self.dataset(item_end, depth + 1)
        finally:
            self.explicit = saved

    def _pixel_data(self, start: int, length: int, vr: str | None, limit: int) -> None:
        if length != UNDEFINED:
            if start + length > limit:
                raise InvalidInstance(
                    f"Pixel Data declares {length} bytes but only {max(0, limit - start)} remain"
                )
            self.pixel = (start, length, vr)
            self.fp.seek(start + length)
            return
        # Encapsulated: a Basic Offset Table item, then one item per fragment.
        self.pixel = (start, None, vr or "OB")
        while True:
            tag = self._tag()
            (item_len,) = struct.unpack(self.endian + "I", self._read(4, "a fragment length"))
            if tag == _SEQ_END:
                return
            if tag != _ITEM or item_len == UNDEFINED:
                raise InvalidInstance("malformed encapsulated Pixel Data fragment")
            if self.fp.tell() + item_len > limit:
                raise InvalidInstance("truncated: a Pixel Data fragment runs past the end")
            self.fp.seek(item_len, 1)


def _read_meta(fp: IO[bytes], size: int) -> tuple[str, str | None, int]:
    fp.seek(0)
    head = fp.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise InvalidInstance("not a DICOM Part 10 file (no 'DICM' prefix at byte 128)")
    walker = _Walker(fp, size, explicit=True, little=True)
    values: dict[int, bytes] = {}
    while True:
        pos = fp.tell()
        peek = fp.read(2)
        fp.seek(pos)
        if len(peek) < 2 or struct.unpack("<H", peek)[0] != 0x0002:
            break
        tag = walker._tag()
        _vr, length = walker._vr_and_length(tag)
        if length == UNDEFINED or fp.tell() + length > size:
            raise InvalidInstance(f"file meta element ({tag:08X}) runs past the end of the data")
        values[tag] = fp.read(length)
    meta_end = fp.tell()
    group_length = values.get(_META_GROUP_LENGTH)
    if group_length is not None and len(group_length) == 4:
        # Group length says where the meta ends: a file cut between two meta
        # elements is caught here, with a reason, rather than as "no Study UID".
        declared_end = 132 + 12 + struct.unpack("<I", group_length)[0]
        if declared_end > size:
            raise InvalidInstance("truncated: the data ends inside the file meta information")
    raw_ts = values.get(_TRANSFER_SYNTAX, b"").rstrip(b"\0 ")
    if not raw_ts:
        raise InvalidInstance("the file meta information has no Transfer Syntax UID")
    ts = require_uid(raw_ts.decode("ascii", "replace"), "TransferSyntaxUID")
    media_uid = values.get(0x00020003)
    media = media_uid.rstrip(b"\0 ").decode("ascii", "replace") if media_uid else None
    return ts, media, meta_end


def read_layout(fp: IO[bytes]) -> Layout:
    """Validate the structure of the Part 10 file in `fp` and say where its parts are."""
    fp.seek(0, 2)
    size = fp.tell()
    ts, media_uid, dataset_offset = _read_meta(fp, size)
    target: IO[bytes] = fp
    target_size = size
    seekable_pixels = True
    if ts == DeflatedExplicitVRLittleEndian:
        target = BytesIO(_inflate(fp))
        target_size = len(target.getbuffer())
        seekable_pixels = False
    walker = _Walker(
        target,
        target_size,
        explicit=ts != ImplicitVRLittleEndian,
        little=ts != ExplicitVRBigEndian,
    )
    if not seekable_pixels:
        target.seek(0)
    walker.dataset(target_size, 0)
    pixel = walker.pixel
    return Layout(
        size=size,
        transfer_syntax=ts,
        media_sop_instance_uid=media_uid,
        dataset_offset=dataset_offset,
        pixel_offset=pixel[0] if pixel and seekable_pixels else None,
        pixel_length=pixel[1] if pixel else None,
        pixel_vr=pixel[2] if pixel else None,
        has_pixel_data=pixel is not None,
        has_float_pixel_data=walker.float_pixels,
    )


def _inflate(fp: IO[bytes]) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    try:
        while chunk := fp.read(1024 * 1024):
            out += inflater.decompress(chunk, MAX_INFLATED_BYTES + 1 - len(out))
            if len(out) > MAX_INFLATED_BYTES:
                raise InvalidInstance("deflated data set inflates past 1 GiB")
        out += inflater.flush()
    except zlib.error as exc:
        raise InvalidInstance(f"deflated data set is corrupt: {exc}") from exc
    if not inflater.eof:
        raise InvalidInstance("truncated: the deflated data set ends early")
    return bytes(out)
