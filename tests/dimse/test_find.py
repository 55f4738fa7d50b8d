"""C-FIND with dcmtk's findscu at every level of both models, answered from the index."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE

from dicomvault.archive import Archive
from dicomvault.dimse import DimseServer
from dicomvault.dimse.find import STUDY_ROOT_FIND
from dicomvault.synthetic import dataset, to_bytes, uid
from tests.support.dcmtk import dcmtk

# (patient id, name, study, date, series modality, instances)
_CONTENT = [
    ("PAT001", "Doe^Jane", "s1", "20240115", "CT", 2),
    ("PAT001", "Doe^Jane", "s1", "20240115", "MR", 1),
    ("PAT001", "Doe^Jane", "s2", "20240220", "CT", 1),
    ("PAT002", "Roe^Richard", "s3", "20240110", "CT", 1),
]


@pytest.fixture
def filled(archive: Archive) -> Archive:
    for patient, name, study, date, modality, count in _CONTENT:
        for number in range(1, count + 1):
            ds = dataset(
                study_uid=uid(f"find/{study}"),
                series_uid=uid(f"find/{study}/{modality}"),
                sop_uid=uid(f"find/{study}/{modality}/{number}"),
                patient_id=patient,
                patient_name=name,
                study_date=date,
                modality=modality,
                instance_number=number,
                size=8,
            )
            archive.ingestor.ingest(BytesIO(to_bytes(ds)))
    return archive


def findscu(port: int, model: str, keys: list[str], out: Path) -> list[Dataset]:
    """The response identifiers findscu received (it writes each with -X)."""
    out.mkdir()
    done = dcmtk("findscu", model, "-aec", "DICOMVAULT", "-X", "-od", out,
                 *[a for key in keys for a in ("-k", key)], "127.0.0.1", port)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def test_patient_level_wildcard_on_name(
    filled: Archive, dimse: DimseServer, tmp_path: Path
) -> None:
    keys = [
        "QueryRetrieveLevel=PATIENT",
        "PatientName=doe*",
        "PatientID",
        "NumberOfPatientRelatedStudies",
    ]
    [found] = findscu(dimse.port, "-P", keys, tmp_path / "r")
    assert found.PatientID == "PAT001"
    assert str(found.PatientName) == "Doe^Jane"
    assert found.NumberOfPatientRelatedStudies == 2
    assert set(found.dir()) == {"NumberOfPatientRelatedStudies", "PatientID", "PatientName",
                                "QueryRetrieveLevel", "SpecificCharacterSet"}  # fmt: skip


@pytest.mark.parametrize("model", ["-S", "-P"])
def test_study_level_date_range(
    filled: Archive, dimse: DimseServer, tmp_path: Path, model: str
) -> None:
    keys = ["QueryRetrieveLevel=STUDY", "StudyDate=20240101-20240131", "StudyInstanceUID",
            "PatientID", "ModalitiesInStudy"]  # fmt: skip
    found = findscu(dimse.port, model, keys, tmp_path / "r")
    assert {(d.StudyInstanceUID, d.PatientID) for d in found} == {
        (uid("find/s1"), "PAT001"),
        (uid("find/s3"), "PAT002"),
    }
    by_study = {d.StudyInstanceUID: list(d.ModalitiesInStudy) for d in found}
    assert by_study[uid("find/s1")] == ["CT", "MR"]


def test_series_level_uid_list(filled: Archive, dimse: DimseServer, tmp_path: Path) -> None:
    studies = f"{uid('find/s2')}\\{uid('find/s3')}"
    keys = ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={studies}", "SeriesInstanceUID",
            "Modality=CT"]  # fmt: skip
    found = findscu(dimse.port, "-S", keys, tmp_path / "r")
    assert {d.SeriesInstanceUID for d in found} == {uid("find/s2/CT"), uid("find/s3/CT")}


def test_image_level_returns_keys_the_index_does_not_hold(
    filled: Archive, dimse: DimseServer, tmp_path: Path
) -> None:
    keys = ["QueryRetrieveLevel=IMAGE", "PatientID=PAT001", f"StudyInstanceUID={uid('find/s1')}",
            f"SeriesInstanceUID={uid('find/s1/CT')}", "SOPInstanceUID", "InstanceNumber",
            "ImageType"]  # fmt: skip
    found = findscu(dimse.port, "-P", keys, tmp_path / "r")
    assert sorted((d.InstanceNumber, d.SOPInstanceUID) for d in found) == [
        (1, uid("find/s1/CT/1")),
        (2, uid("find/s1/CT/2")),
    ]
    assert all(list(d.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"] for d in found)


def test_no_match_is_success_with_no_response(
    filled: Archive, dimse: DimseServer, tmp_path: Path
) -> None:
    keys = ["QueryRetrieveLevel=STUDY", "PatientName=Nobody*", "StudyInstanceUID"]
    assert findscu(dimse.port, "-S", keys, tmp_path / "r") == []


@pytest.mark.parametrize("level", ["PATIENT", "WARD", ""])
def test_a_level_the_model_lacks_is_refused(
    filled: Archive, dimse: DimseServer, level: str
) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(STUDY_ROOT_FIND)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title="DICOMVAULT")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    identifier.PatientID = ""
    try:
        responses = list(assoc.send_c_find(identifier, STUDY_ROOT_FIND))
    finally:
        assoc.release()
    [(final, _)] = responses
    assert final.Status == 0xA900
    assert "level" in final.ErrorComment.lower()
