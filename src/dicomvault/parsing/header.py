"""Parse an instance's header once: UIDs, the indexed attributes, the DICOM JSON.

Runs after `layout.read_layout` has checked the file's structure, and never
reads Pixel Data (`stop_before_pixels`): the pixel value is described by a
BulkDataURI instead. BulkDataURIs are stored relative to the DICOMweb root
(`studies/...`) and made absolute when served, since the base URL is the
request's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import IO, Any

import pydicom
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomvault.errors import InvalidInstance
from dicomvault.model.transfer_syntax import is_native
from dicomvault.model.uids import require_uid
from dicomvault.parsing.layout import Layout

__all__ = ["BULK_DATA_THRESHOLD", "Header", "dataset_to_json", "parse_header", "text"]

BULK_DATA_THRESHOLD = 1024


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


def text(value: Any) -> str | None:
    """A DICOM value as one string (multi-values joined with a backslash), or None."""
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value) or None
    return str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _upper(value: str | None) -> str | None:
    return value.upper() if value is not None else None


def bulk_uri(study: str, series: str, sop: str, path: str) -> str:
    return f"studies/{study}/series/{series}/instances/{sop}/bulkdata/{path}"


def dataset_to_json(ds: Dataset, uri_prefix: str, path: str = "") -> dict[str, Any]:
    """DICOM JSON (PS3.18 F) of `ds` with large binary values as BulkDataURIs.

    The URI of a nested value names its path (`tag/item/tag`), so the bulkdata
    route can find it again.
    """
    out: dict[str, Any] = {}
    for elem in ds:
        key = f"{elem.tag:08X}"
        elem_path = f"{path}/{key}" if path else key
        if elem.VR == "SQ":
            items = [
                dataset_to_json(item, uri_prefix, f"{elem_path}/{index}")
                for index, item in enumerate(elem.value)
            ]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue

        def handler(_elem: DataElement, _uri: str = f"{uri_prefix}{elem_path}") -> str:
            return _uri

        try:
            out[key] = elem.to_json_dict(handler, BULK_DATA_THRESHOLD)
        except Exception:  # noqa: BLE001 - a value pydicom cannot encode is skipped, not fatal
            out[key] = {"vr": elem.VR}
    return out


def _native_pixel_bytes(ds: Dataset) -> int | None:
    rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
    bits, spp = _int(ds.get("BitsAllocated")), _int(ds.get("SamplesPerPixel")) or 1
    frames = _int(ds.get("NumberOfFrames")) or 1
    if not rows or not cols or not bits:
        return None
    if bits == 1:
        return math.ceil(rows * cols * frames * spp / 8)
    return rows * cols * spp * frames * (bits // 8)


def parse_header(fp: IO[bytes], layout: Layout) -> Header:
    """Parse the header of a structurally valid file; InvalidInstance on bad content."""
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except RecursionError as exc:
        raise InvalidInstance("sequences nested too deeply to parse") from exc
    except Exception as exc:
        raise InvalidInstance(f"the header does not parse: {exc}") from exc

    study_uid = require_uid(text(ds.get("StudyInstanceUID")), "StudyInstanceUID")
    series_uid = require_uid(text(ds.get("SeriesInstanceUID")), "SeriesInstanceUID")
    sop_uid = require_uid(text(ds.get("SOPInstanceUID")), "SOPInstanceUID")
    sop_class = require_uid(text(ds.get("SOPClassUID")), "SOPClassUID")
    if layout.media_sop_instance_uid and layout.media_sop_instance_uid != sop_uid:
        raise InvalidInstance(
            f"MediaStorageSOPInstanceUID {layout.media_sop_instance_uid} in the file meta "
            f"differs from SOPInstanceUID {sop_uid}"
        )
    if (
        layout.has_pixel_data
        and layout.pixel_length is not None
        and is_native(layout.transfer_syntax)
    ):
        expected = _native_pixel_bytes(ds)
        if expected is not None and layout.pixel_length < expected:
            raise InvalidInstance(
                f"native Pixel Data holds {layout.pixel_length} bytes, "
                f"{expected} expected from Rows, Columns, BitsAllocated, SamplesPerPixel "
                "and NumberOfFrames"
            )

    try:
        json_header = dataset_to_json(ds, bulk_uri(study_uid, series_uid, sop_uid, ""))
    except RecursionError as exc:
        raise InvalidInstance("sequences nested too deeply to convert") from exc
    if layout.has_pixel_data:
        vr = layout.pixel_vr or ("OW" if (_int(ds.get("BitsAllocated")) or 8) > 8 else "OB")
        json_header["7FE00010"] = {
            "vr": vr,
            "BulkDataURI": bulk_uri(study_uid, series_uid, sop_uid, "7FE00010"),
        }
    json_header.pop("00020010", None)  # file meta is not part of the data set's JSON

    patient_name = text(ds.get("PatientName"))
    referring = text(ds.get("ReferringPhysicianName"))
    return Header(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        patient={
            "patient_id": text(ds.get("PatientID")) or "",
            "issuer": text(ds.get("IssuerOfPatientID")) or "",
            "patient_name": patient_name,
            "patient_name_norm": _upper(patient_name),
            "birth_date": text(ds.get("PatientBirthDate")),
            "sex": text(ds.get("PatientSex")),
        },
        study={
            "study_date": text(ds.get("StudyDate")),
            "study_time": text(ds.get("StudyTime")),
            "accession_number": text(ds.get("AccessionNumber")),
            "study_id": text(ds.get("StudyID")),
            "referring_physician": referring,
            "referring_physician_norm": _upper(referring),
            "description": text(ds.get("StudyDescription")),
        },
        series={
            "modality": text(ds.get("Modality")),
            "series_number": _int(ds.get("SeriesNumber")),
            "description": text(ds.get("SeriesDescription")),
            "body_part": text(ds.get("BodyPartExamined")),
            "series_date": text(ds.get("SeriesDate")),
            "series_time": text(ds.get("SeriesTime")),
            "performed_start_date": text(ds.get("PerformedProcedureStepStartDate")),
            "performed_start_time": text(ds.get("PerformedProcedureStepStartTime")),
        },
        instance={
            "sop_class_uid": sop_class,
            "instance_number": _int(ds.get("InstanceNumber")),
            "rows": _int(ds.get("Rows")),
            "columns": _int(ds.get("Columns")),
            "bits_allocated": _int(ds.get("BitsAllocated")),
            "number_of_frames": _int(ds.get("NumberOfFrames")),
            "transfer_syntax": layout.transfer_syntax,
            "pixel_offset": layout.pixel_offset,
            "pixel_length": layout.pixel_length,
        },
        json=json_header,
    )
