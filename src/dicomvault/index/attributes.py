"""Which DICOM attributes live in which index column, at which level.

This table is what QIDO-RS and C-FIND match on and return without opening an
object. Attributes not listed here are still answered from the stored header
JSON (see `query.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicomvault.index.schema import instances, patients, series, studies
from dicomvault.model.levels import Level

__all__ = ["ATTRIBUTES", "COMPUTED", "Attribute", "by_tag", "tag_of"]

_RANK = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.INSTANCE: 3}


def rank(level: Level) -> int:
    return _RANK[level]


@dataclass(frozen=True, slots=True)
class Attribute:
    keyword: str
    tag: str  # eight upper-case hex digits, as in DICOM JSON
    vr: str
    level: Level
    column: Any  # a Column, or None for attributes computed per result
    norm_column: Any = None  # upper-cased twin for case-insensitive person names


def tag_of(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def _attr(keyword: str, level: Level, column: Any, norm: Any = None) -> Attribute:
    tag = tag_of(keyword)
    return Attribute(keyword, tag, dictionary_VR(int(tag, 16)), level, column, norm)


P, ST, SE, IN = Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE

ATTRIBUTES: tuple[Attribute, ...] = (
    _attr("PatientName", P, patients.c.patient_name, patients.c.patient_name_norm),
    _attr("PatientID", P, patients.c.patient_id),
    _attr("IssuerOfPatientID", P, patients.c.issuer),
    _attr("PatientBirthDate", P, patients.c.birth_date),
    _attr("PatientSex", P, patients.c.sex),
    _attr("StudyInstanceUID", ST, studies.c.study_uid),
    _attr("StudyDate", ST, studies.c.study_date),
    _attr("StudyTime", ST, studies.c.study_time),
    _attr("AccessionNumber", ST, studies.c.accession_number),
    _attr("StudyID", ST, studies.c.study_id),
    _attr(
        "ReferringPhysicianName",
        ST,
        studies.c.referring_physician,
        studies.c.referring_physician_norm,
    ),
    _attr("StudyDescription", ST, studies.c.description),
    _attr("NumberOfStudyRelatedSeries", ST, studies.c.num_series),
    _attr("NumberOfStudyRelatedInstances", ST, studies.c.num_instances),
    _attr("SeriesInstanceUID", SE, series.c.series_uid),
    _attr("Modality", SE, series.c.modality),
    _attr("SeriesNumber", SE, series.c.series_number),
    _attr("SeriesDescription", SE, series.c.description),
    _attr("BodyPartExamined", SE, series.c.body_part),
    _attr("SeriesDate", SE, series.c.series_date),
    _attr("SeriesTime", SE, series.c.series_time),
    _attr("PerformedProcedureStepStartDate", SE, series.c.performed_start_date),
    _attr("PerformedProcedureStepStartTime", SE, series.c.performed_start_time),
    _attr("NumberOfSeriesRelatedInstances", SE, series.c.num_instances),
    _attr("SOPInstanceUID", IN, instances.c.sop_uid),
    _attr("SOPClassUID", IN, instances.c.sop_class_uid),
    _attr("InstanceNumber", IN, instances.c.instance_number),
    _attr("Rows", IN, instances.c.rows),
    _attr("Columns", IN, instances.c.columns),
    _attr("BitsAllocated", IN, instances.c.bits_allocated),
    _attr("NumberOfFrames", IN, instances.c.number_of_frames),
)

# Attributes whose value is computed from other rows for each result.
COMPUTED: tuple[Attribute, ...] = (
    _attr("ModalitiesInStudy", ST, None),
    _attr("NumberOfPatientRelatedStudies", P, None),
)

_BY_TAG = {a.tag: a for a in ATTRIBUTES + COMPUTED}


def by_tag(tag: str) -> Attribute | None:
    return _BY_TAG.get(tag)
