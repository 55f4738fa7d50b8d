"""The frames of a stored image instance: located from the index, read as little as possible.

A native (uncompressed) frame is a fixed-size slice of the Pixel Data value, whose
offset and length the index recorded at ingest, so it is served by one ranged read
of the stored object: a frame of a 2 GB multi-frame instance costs its own bytes,
not the object's. A ranged read cannot be checked against the object's SHA-256
(that needs every byte), so those slices are the one read path that is not
checksum-verified; everything that needs the whole object (compressed frames,
decoding, deflated files) reads it through `read_verified` first.

Frames are numbered from 1, as in WADO-RS URLs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.pixels.utils import pixel_array  # the defining module: typed exports
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

from dicomvault.errors import InvalidQuery, NotAcceptable, NotFound, StorageError
from dicomvault.index.db import Database
from dicomvault.model.transfer_syntax import is_native
from dicomvault.retrieve import (
    StoredInstance,
    find_instances,
    find_with_headers,
    instance_header,
    instance_with_header,
    load_dataset,
)
from dicomvault.storage import ObjectStore, verified_range

__all__ = ["ImageInstance", "open_image", "parse_frame_list", "representative_image"]

PIXEL_DATA = "7FE00010"
_IMAGE_PIXEL_GROUP = "0028"  # Image Pixel, Modality LUT, VOI LUT and palette attributes
_NO_IMAGE = "no image instance to show: nothing here has Rows and Columns"
_FRAME_LIST = re.compile(r"[1-9][0-9]{0,8}(,[1-9][0-9]{0,8})*")


def parse_frame_list(text: str, frame_count: int) -> list[int]:
    """Frame numbers from a WADO-RS frame list ("1,3,5"), each checked against the count."""
    compact = text.replace(" ", "")
    if not _FRAME_LIST.fullmatch(compact):
        raise InvalidQuery(
            f"frame list {text[:80]!r} is not a comma-separated list of frame numbers from 1"
        )
    numbers = [int(n) for n in compact.split(",")]
    beyond = [n for n in numbers if n > frame_count]
    if beyond:
        raise NotFound(
            f"frame {beyond[0]} does not exist: the instance has {frame_count} "
            f"frame{'s' if frame_count != 1 else ''}"
        )
    return numbers


def _value(header: dict[str, Any], tag: str) -> Any:
    values = header.get(tag, {}).get("Value")
    return values[0] if values else None


def _has_bulk_uri(node: Any) -> bool:
    if isinstance(node, dict):
        return "BulkDataURI" in node or any(_has_bulk_uri(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_bulk_uri(v) for v in node)
    return False


@dataclass(frozen=True, slots=True)
class PixelGeometry:
    """What the size of one frame depends on (PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    frames: int

    @property
    def frame_bits(self) -> int:
        return self.rows * self.columns * self.samples * self.bits_allocated


class ImageInstance:
    """One stored instance that has Pixel Data, and the ways to read its frames."""

    def __init__(self, store: ObjectStore, stored: StoredInstance, header: dict[str, Any]) -> None:
        if PIXEL_DATA not in header:
            raise NotFound(f"instance {stored.sop_uid} has no Pixel Data (it is not an image)")
        if not stored.rows or not stored.columns or not stored.bits_allocated:
            raise NotAcceptable(
                f"instance {stored.sop_uid} lacks Rows, Columns or BitsAllocated; "
                "its frames cannot be located"
            )
        self.store = store
        self.stored = stored
        self.header = header
        self.geometry = PixelGeometry(
            rows=stored.rows,
            columns=stored.columns,
            samples=int(_value(header, "00280002") or 1),
            bits_allocated=stored.bits_allocated,
            frames=max(stored.number_of_frames or 1, 1),
        )

    @property
    def transfer_syntax(self) -> str:
        return self.stored.transfer_syntax

    @property
    def is_native(self) -> bool:
        return is_native(self.stored.transfer_syntax)

    @property
    def ranged(self) -> bool:
        """True when native frames can be sliced out of the stored object by ranged reads."""
        return self.is_native and self.stored.pixel_offset is not None

    def frame_numbers(self, frame_list: str) -> list[int]:
        return parse_frame_list(frame_list, self.geometry.frames)

    @cached_property
    def dataset(self) -> Dataset:
        """The whole instance, read and checksum-verified once, only when a frame needs it."""
        return load_dataset(self.store, self.stored)

    def prepare(self) -> None:
        """Read the whole object now, if frames will need it, so a failure is an error
        response and not a transfer cut off midway."""
        if not self.ranged:
            _ = self.dataset

    # -- bytes ---------------------------------------------------------------------------

    def stored_frame(self, number: int) -> bytes:
        """Frame `number` as stored: its compressed bytes, or native bytes for native data."""
        if self.is_native:
            return self.native_frame(number)
        ds = self.dataset
        offsets = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        try:
            return get_frame(
                ds.PixelData,
                number - 1,
                number_of_frames=self.geometry.frames,
                extended_offsets=offsets,
            )
        except (ValueError, KeyError) as exc:
            raise NotAcceptable(f"frame {number} cannot be extracted: {exc}") from exc

    def native_frame(self, number: int) -> bytes:
        """Frame `number` uncompressed, little endian (decoded when stored compressed)."""
        if self.ranged:
            return self._ranged_frame(number)
        if self.is_native:
            return self._sliced_frame(bytes(self.dataset.PixelData), number)
        arr = self._decode(number)
        if self.geometry.bits_allocated == 1:
            return np.packbits(arr.ravel(), bitorder="little").tobytes()
        return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()

    def native_pixel_data(self) -> Iterator[bytes]:
        """Every frame uncompressed, as one stream (the Pixel Data bulk data value)."""
        geometry = self.geometry
        if self.sliceable:
            assert self.stored.pixel_offset is not None
            start = self.stored.pixel_offset
            length = math.ceil(geometry.frame_bits * geometry.frames / 8)
            yield from self._range(start, start + length)
            return
        for number in range(1, geometry.frames + 1):
            yield self.native_frame(number)

    @property
    def native_pixel_length(self) -> int:
        """Bytes of the uncompressed Pixel Data value (every frame)."""
        return math.ceil(self.geometry.frame_bits * self.geometry.frames / 8)

    @property
    def sliceable(self) -> bool:
        """Whether the object holds the uncompressed Pixel Data value as it is sent."""
        return self.ranged and UID(self.transfer_syntax) != ExplicitVRBigEndian

    def native_pixel_slice(self, start: int, end: int) -> Iterator[bytes] | None:
        """Bytes [start, end) of the uncompressed Pixel Data value, read by range from the
        object when it is `sliceable` (checked block by block); None otherwise."""
        if not self.sliceable:
            return None
        assert self.stored.pixel_offset is not None
        return self._range(self.stored.pixel_offset + start, self.stored.pixel_offset + end)

    def _range(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of the stored object, checked against its block digests.

        Objects recorded before block digests existed are read unchecked here (a
        whole-object read, as for compressed frames, is checked by its SHA-256).
        """
        blocks = self.stored.blocks
        if blocks:
            return verified_range(self.store, self.stored.key, start, end, blocks)
        return self.store.iter_bytes(self.stored.key, start, end)

    def _ranged_frame(self, number: int) -> bytes:
        assert self.stored.pixel_offset is not None
        bits = self.geometry.frame_bits
        first_bit = (number - 1) * bits
        start, end = first_bit // 8, math.ceil((first_bit + bits) / 8)
        offset = self.stored.pixel_offset
        data = b"".join(self._range(offset + start, offset + end))
        if len(data) != end - start:
            raise StorageError(
                f"object {self.stored.key} ends inside frame {number} "
                f"({len(data)} of {end - start} bytes)"
            )
        return self._little_endian(_bit_slice(data, first_bit % 8, bits))

    def _sliced_frame(self, pixel_data: bytes, number: int) -> bytes:
        bits = self.geometry.frame_bits
        first_bit = (number - 1) * bits
        data = pixel_data[first_bit // 8 : math.ceil((first_bit + bits) / 8)]
        return self._little_endian(_bit_slice(data, first_bit % 8, bits))

    def _little_endian(self, data: bytes) -> bytes:
        bits = self.geometry.bits_allocated
        if UID(self.transfer_syntax) != ExplicitVRBigEndian or bits <= 8:
            return data
        return np.frombuffer(data, dtype=f">u{bits // 8}").byteswap().tobytes()

    # -- arrays --------------------------------------------------------------------------

    def _decode(self, number: int) -> np.ndarray:
        try:
            return pixel_array(self.dataset, index=number - 1)
        except Exception as exc:  # any codec failure means "cannot decode", not a 500
            raise NotAcceptable(
                f"frame {number} of {self.stored.sop_uid} cannot be decoded from "
                f"{self.transfer_syntax}: {exc}"
            ) from exc

    def frame_array(self, number: int) -> np.ndarray:
        """Frame `number` as a pixel array (rows, columns[, samples]); colour comes out RGB."""
        if not self.ranged:
            return self._decode(number)
        ds = Dataset()
        ds.update(self.attributes())  # shares their elements: replace, never change, them
        ds.add_new(0x00280008, "IS", 1)  # NumberOfFrames
        ds.PixelData = self.native_frame(number)
        ds["PixelData"].VR = "OW" if self.geometry.bits_allocated > 8 else "OB"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        try:
            return pixel_array(ds)
        except Exception as exc:  # inconsistent pixel attributes: the file's fault
            raise NotAcceptable(f"frame {number} cannot be read as pixels: {exc}") from exc

    def attributes(self) -> Dataset:
        """The Image Pixel, Modality LUT and VOI LUT attributes (group 0028), for rendering.

        Taken from the indexed header; when one of them (a large LUT) was replaced by a
        BulkDataURI there, from the stored object instead. Built once per instance (a
        rendered frame needs them twice: to read its pixels, then to display them); not
        to be changed by the caller.
        """
        return self._attributes

    @cached_property
    def _attributes(self) -> Dataset:
        chosen = {k: v for k, v in self.header.items() if k.startswith(_IMAGE_PIXEL_GROUP)}
        if _has_bulk_uri(chosen):
            return self.dataset.group_dataset(0x0028)
        try:
            return Dataset.from_json(chosen)
        except Exception as exc:  # a value pydicom cannot read back: not renderable, not a 500
            raise NotAcceptable(f"the pixel attributes of {self.stored.sop_uid}: {exc}") from exc


def _bit_slice(data: bytes, first_bit: int, bits: int) -> bytes:
    """`bits` bits from `data` starting at `first_bit` (only BitsAllocated 1 is unaligned)."""
    if first_bit == 0 and bits % 8 == 0:
        return data
    unpacked = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    return np.packbits(unpacked[first_bit : first_bit + bits], bitorder="little").tobytes()


def open_image(
    db: Database, store: ObjectStore, study_uid: str, series_uid: str, sop_uid: str
) -> ImageInstance:
    """The image instance at a WADO-RS instance URL; NotFound when absent or not an image."""
    stored, header = instance_with_header(db, study_uid, series_uid, sop_uid)
    return ImageInstance(store, stored, header)


def images_of(
    db: Database, store: ObjectStore, study_uid: str, series_uid: str | None = None
) -> list[ImageInstance]:
    """Every image instance (one with Rows and Columns) of a study or series, in order.

    Headers are read here, from the index; pixels only when a frame is asked for.
    """
    found = [
        (i, h) for i, h in find_with_headers(db, study_uid, series_uid) if i.rows and i.columns
    ]
    if not found:
        raise NotFound(_NO_IMAGE)
    return [ImageInstance(store, stored, header) for stored, header in found]


def _stored_images(db: Database, study_uid: str, series_uid: str | None) -> list[StoredInstance]:
    found = [i for i in find_instances(db, study_uid, series_uid) if i.rows and i.columns]
    if not found:
        raise NotFound(_NO_IMAGE)
    return found


def representative_image(
    db: Database, store: ObjectStore, study_uid: str, series_uid: str | None = None
) -> ImageInstance:
    """The middle image of the series (of the study's first series with images), for thumbnails.

    Only index rows are read for the choice; one header and one instance's pixels after.
    """
    found = _stored_images(db, study_uid, series_uid)
    first_series = [i for i in found if i.series_uid == found[0].series_uid]
    chosen = first_series[(len(first_series) - 1) // 2]
    header = instance_header(db, chosen.study_uid, chosen.series_uid, chosen.sop_uid)
    return ImageInstance(store, chosen, header)
