"""Parse an instance's header once: UIDs, the indexed attributes, the DICOM JSON.

Runs after `layout.read_layout` has checked the file's structure, and never
reads Pixel Data (`stop_before_pixels`): the pixel value is described by a
BulkDataURI instead. BulkDataURIs are stored relative to the DICOMweb root
(`studies/...`) and made absolute when served, since the base URL is the
request's.

Values come from files of every vintage, so what goes to the index is made
storable on every backend: NUL characters, which PostgreSQL text and JSONB
refuse, are dropped when trailing (padding in old files) and shown as U+FFFD
inside a value (so a UID with one stays visibly invalid rather than becoming
another UID); integers outside IS's 32-bit range and dates that are not dates
are not indexed (the ACR-NEMA form `YYYY.MM.DD` of old files is read as the
date it is); non-finite floats (NaN, Infinity: not JSON numbers) become the
strings "NaN", "Infinity", "-Infinity" in the DICOM JSON.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import IO, Any

import pydicom
from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filereader import read_sequence
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import (
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.values import convert_string

from dicomvault.errors import InvalidInstance
from dicomvault.model.transfer_syntax import is_native
from dicomvault.model.uids import require_uid
from dicomvault.parsing.dicom_json import BULK_DATA_THRESHOLD, dataset_to_json, without_nul
from dicomvault.parsing.layout import UNDEFINED, Layout, UndefinedSequence

__all__ = ["BULK_DATA_THRESHOLD", "Header", "dataset_to_json", "parse_header", "text"]


@dataclass(frozen=True, slots=True)
class Header:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    json: dict[str, Any]


_INT32 = range(-(2**31), 2**31)
_DATE = re.compile(r"\d{8}")
_LEGACY_DATE = re.compile(r"\d{4}\.\d{2}\.\d{2}")


def text(value: Any) -> str | None:
    """A DICOM value as one string (multi-values joined with a backslash), or None."""
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value) or None
    return str(value)


def _indexed(value: Any) -> str | None:
    """A value as an index column holds it: `text` without NUL characters (see module doc)."""
    return without_nul(text(value) or "") or None


def _int(value: Any) -> int | None:
    """An integer value in IS's range (-2**31 .. 2**31-1), else None (not indexed)."""
    try:
        number = int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and number in _INT32 else None


def _date(value: Any) -> str | None:
    """A DA value as YYYYMMDD (also from the ACR-NEMA YYYY.MM.DD), else None."""
    raw = (_indexed(value) or "").strip()
    if _LEGACY_DATE.fullmatch(raw):
        raw = raw.replace(".", "")
    return raw if _DATE.fullmatch(raw) else None


def _upper(value: str | None) -> str | None:
    return value.upper() if value is not None else None


def bulk_uri(study: str, series: str, sop: str, path: str) -> str:
    return f"studies/{study}/series/{series}/instances/{sop}/bulkdata/{path}"


def _native_pixel_bytes(get: Getter) -> int | None:
    rows, cols = _int(get("Rows")), _int(get("Columns"))
    bits, spp = _int(get("BitsAllocated")), _int(get("SamplesPerPixel")) or 1
    frames = _int(get("NumberOfFrames")) or 1
    if not rows or not cols or not bits:
        return None
    if bits == 1:
        return math.ceil(rows * cols * frames * spp / 8)
    return rows * cols * spp * frames * (bits // 8)


Getter = Callable[[str], Any]


def index_values(
    get: Getter, layout: Layout, sop_class: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The patient, study, series and instance columns, from the attributes `get` reads.

    `get` is `json_getter` of the header's JSON on ingest; a test passes pydicom's
    `Dataset.get` to check both read the same values.
    """
    patient_name = _indexed(get("PatientName"))
    referring = _indexed(get("ReferringPhysicianName"))
    patient = {
        "patient_id": _indexed(get("PatientID")) or "",
        "issuer": _indexed(get("IssuerOfPatientID")) or "",
        "patient_name": patient_name,
        "patient_name_norm": _upper(patient_name),
        "birth_date": _date(get("PatientBirthDate")),
        "sex": _indexed(get("PatientSex")),
    }
    study = {
        "study_date": _date(get("StudyDate")),
        "study_time": _indexed(get("StudyTime")),
        "accession_number": _indexed(get("AccessionNumber")),
        "study_id": _indexed(get("StudyID")),
        "referring_physician": referring,
        "referring_physician_norm": _upper(referring),
        "description": _indexed(get("StudyDescription")),
    }
    series = {
        "modality": _indexed(get("Modality")),
        "series_number": _int(get("SeriesNumber")),
        "description": _indexed(get("SeriesDescription")),
        "body_part": _indexed(get("BodyPartExamined")),
        "series_date": _date(get("SeriesDate")),
        "series_time": _indexed(get("SeriesTime")),
        "performed_start_date": _date(get("PerformedProcedureStepStartDate")),
        "performed_start_time": _indexed(get("PerformedProcedureStepStartTime")),
    }
    instance = {
        "sop_class_uid": sop_class,
        "instance_number": _int(get("InstanceNumber")),
        "rows": _int(get("Rows")),
        "columns": _int(get("Columns")),
        "bits_allocated": _int(get("BitsAllocated")),
        "number_of_frames": _int(get("NumberOfFrames")),
        "transfer_syntax": layout.transfer_syntax,
        "pixel_offset": layout.pixel_offset,
        "pixel_length": layout.pixel_length,
    }
    return patient, study, series, instance


@cache
def _json_key(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def json_getter(json_header: dict[str, Any]) -> Getter:
    """Read a top-level attribute by keyword from DICOM JSON as pydicom's `get` gives it:
    None when absent or empty, the value when one, a list when several, a person
    name as its `=`-joined groups."""

    def get(keyword: str) -> Any:
        values = json_header.get(_json_key(keyword), {}).get("Value")
        if not values:
            return None
        plain = [
            "=".join(v[group] for group in _PN_GROUPS if group in v) if isinstance(v, dict) else v
            for v in values
        ]
        return plain[0] if len(plain) == 1 else plain

    return get


_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


_CHARACTER_SET = 0x00080005


_STUDY_UID, _SERIES_UID, _SOP_UID, _SOP_CLASS_UID = 0x0020000D, 0x0020000E, 0x00080018, 0x00080016


def _uid_text(ds: Dataset, tag: int) -> str | None:
    """`text(ds.get(tag))` for a UID, read from the element's bytes as pydicom would
    (padding stripped, each value stripped, several joined by a backslash) without
    pydicom's conversion of the element: for the four UIDs of every instance that
    conversion cost 50 us, a sixth of the header parse of a small instance. Elements
    of another VR, or converted already, go pydicom's way."""
    element = ds.get_item(tag)
    if not isinstance(element, RawDataElement) or element.VR not in (None, "UI"):
        converted = ds.get(tag)  # by tag, pydicom gives the element
        return None if converted is None else text(converted.value)
    if not element.value:
        return None
    values = element.value.decode(default_encoding).rstrip(" \0").split("\\")
    return "\\".join(value.strip() for value in values) or None


def _read_dataset(fp: IO[bytes], layout: Layout) -> Dataset:
    """The data set up to its pixel data, made of the top-level elements the layout's
    walk read (`Layout.elements`) as pydicom's `read_dataset` makes it of those it
    reads: raw elements converted when used, the character set and encoding recorded.

    `pydicom.dcmread` would read the preamble and the file meta again and build a
    FileDataset around the data set (about half of its cost for a header of 40
    elements), and `read_dataset` from the data set's offset would walk the elements a
    second time (about a quarter of a small instance's header parse). A deflated data
    set, which pydicom inflates itself, and the private transfer syntaxes pydicom knows
    still go through `dcmread`."""
    syntax = layout.transfer_syntax
    if layout.elements is None or syntax in PrivateTransferSyntaxes:
        fp.seek(0)
        return pydicom.dcmread(fp, stop_before_pixels=True)
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    encoding: str | list[str] = default_encoding
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    for element in layout.elements:
        if isinstance(element, UndefinedSequence):
            # Read as pydicom's reader reads it, with the character set seen so far.
            fp.seek(element.value_tell)
            sequence = read_sequence(fp, implicit, little, UNDEFINED, encoding)  # type: ignore[arg-type]
            tag = BaseTag(element.tag)
            elements[tag] = DataElement(
                tag, "SQ", sequence, element.value_tell, is_undefined_length=True
            )
            continue
        if element.tag == _CHARACTER_SET:
            encoding = convert_encodings(convert_string(element.value or b"", little))
        elements[element.tag] = element
    ds = Dataset(elements, parent_encoding=default_encoding)
    charset = elements.get(BaseTag(_CHARACTER_SET))
    if isinstance(charset, RawDataElement):
        encoding = convert_encodings(convert_raw_data_element(charset).value)
    ds.set_original_encoding(implicit, little, encoding)
    return ds


def parse_header(fp: IO[bytes], layout: Layout) -> Header:
    """Parse the header of a structurally valid file; InvalidInstance on bad content."""
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        ds = _read_dataset(fp, layout)
    except RecursionError as exc:
        raise InvalidInstance("sequences nested too deeply to parse") from exc
    except Exception as exc:
        raise InvalidInstance(f"the header does not parse: {exc}") from exc

    study_uid = require_uid(_uid_text(ds, _STUDY_UID), "StudyInstanceUID")
    series_uid = require_uid(_uid_text(ds, _SERIES_UID), "SeriesInstanceUID")
    sop_uid = require_uid(_uid_text(ds, _SOP_UID), "SOPInstanceUID")
    sop_class = require_uid(_uid_text(ds, _SOP_CLASS_UID), "SOPClassUID")
    if layout.media_sop_instance_uid and layout.media_sop_instance_uid != sop_uid:
        raise InvalidInstance(
            f"MediaStorageSOPInstanceUID {layout.media_sop_instance_uid} in the file meta "
            f"differs from SOPInstanceUID {sop_uid}"
        )
    if (
        not layout.has_pixel_data
        and not layout.has_float_pixel_data
        and "Rows" in ds
        and "Columns" in ds
    ):
        # The Image Pixel module requires Pixel Data: a file that describes an image and
        # ends without one was cut short exactly at an element boundary.
        raise InvalidInstance(
            "truncated or incomplete: Rows and Columns describe an image but there is no Pixel Data"
        )
    try:
        json_header = dataset_to_json(ds, bulk_uri(study_uid, series_uid, sop_uid, ""))
    except RecursionError as exc:
        raise InvalidInstance("sequences nested too deeply to convert") from exc
    # Everything else is read from the JSON just made, not decoded by pydicom again.
    get = json_getter(json_header)
    if layout.has_pixel_data:
        # Implicit VR files leave the dictionary's "OB or OW"; DICOM JSON needs one VR,
        # the one pydicom resolves it to.
        vr = layout.pixel_vr
        if vr not in ("OB", "OW"):
            vr = "OW" if (_int(get("BitsAllocated")) or 8) > 8 else "OB"
        json_header["7FE00010"] = {
            "vr": vr,
            "BulkDataURI": bulk_uri(study_uid, series_uid, sop_uid, "7FE00010"),
        }
    json_header.pop("00020010", None)  # file meta is not part of the data set's JSON
    if (
        layout.has_pixel_data
        and layout.pixel_length is not None
        and is_native(layout.transfer_syntax)
    ):
        expected = _native_pixel_bytes(get)
        if expected is not None and layout.pixel_length < expected:
            raise InvalidInstance(
                f"native Pixel Data holds {layout.pixel_length} bytes, "
                f"{expected} expected from Rows, Columns, BitsAllocated, SamplesPerPixel "
                "and NumberOfFrames"
            )

    patient, study, series, instance = index_values(get, layout, sop_class)
    return Header(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        patient=patient,
        study=study,
        series=series,
        instance=instance,
        json=json_header,
    )
