"""Deterministic synthetic DICOM instances for tests, demos and benchmarks.

CT-like images have a body-shaped ellipse with noise and structure, so they
compress like real CT rather than like zeros or white noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["SyntheticStudy", "ct_image", "instance_bytes", "study_instances"]

_ROOT = "1.2.826.0.1.3680043.10.1432."  # a UID root for generated test data


def uid(seed: str) -> str:
    """A deterministic UID derived from `seed`."""
    return generate_uid(prefix=_ROOT, entropy_srcs=[seed])


def ct_image(size: int, seed: int, frames: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    body = ((x - c) / (0.45 * size)) ** 2 + ((y - c) / (0.35 * size)) ** 2 <= 1
    organ = ((x - c * 0.8) / (0.1 * size)) ** 2 + ((y - c) / (0.12 * size)) ** 2 <= 1
    base = np.where(body, 1040, 24).astype(np.int32)
    base = base + np.where(organ, 60, 0)
    out = np.empty((frames, size, size), dtype=np.uint16)
    for f in range(frames):
        noise = rng.normal(0, 12, (size, size)).astype(np.int32)
        out[f] = np.clip(base + noise * body + f % 7, 0, 4095).astype(np.uint16)
    return out if frames > 1 else out[0]


@dataclass(frozen=True)
class SyntheticStudy:
    study_uid: str
    patient_id: str
    patient_name: str
    series_uids: tuple[str, ...]


def dataset(
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    patient_id: str = "PAT001",
    patient_name: str = "Doe^Jane",
    size: int = 64,
    frames: int = 1,
    instance_number: int = 1,
    series_number: int = 1,
    modality: str = "CT",
    study_date: str = "20240115",
    accession: str = "ACC001",
    study_description: str = "CT CHEST",
    seed: int = 0,
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = UID(sop_uid)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "Smith^John"
    ds.StudyDescription = study_description
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"{modality} series {series_number}"
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = "DICOMVAULT SYNTHETIC"
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "5"
    ds.ImagePositionPatient = [0, 0, instance_number * 5]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = ct_image(size, seed, frames).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def to_bytes(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def instance_bytes(**kwargs: object) -> bytes:
    """One Part 10 file; keyword arguments as for `dataset`."""
    return to_bytes(dataset(**kwargs))  # type: ignore[arg-type]


def study_instances(
    name: str,
    *,
    series: int = 1,
    per_series: int = 3,
    size: int = 64,
    **kwargs: object,
) -> Iterator[bytes]:
    """The instances of a deterministic study named `name`."""
    study_uid = uid(f"{name}/study")
    for s in range(series):
        series_uid = uid(f"{name}/series/{s}")
        for i in range(per_series):
            yield instance_bytes(
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=uid(f"{name}/series/{s}/instance/{i}"),
                size=size,
                instance_number=i + 1,
                series_number=s + 1,
                seed=s * 1000 + i,
                **kwargs,
            )
