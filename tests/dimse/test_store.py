"""C-ECHO and C-STORE with dcmtk's echoscu and storescu, checked through DICOMweb."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE

from dicomvault.archive import Archive
from dicomvault.dimse import DimseServer
from dicomvault.dimse.store import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION,
    file_meta,
    part10,
)
from dicomvault.synthetic import dataset, to_bytes, uid
from tests.support.dcmtk import dcmtk
from tests.support.dicom_files import parse_multipart
from tests.support.live import running_server

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def test_file_meta_is_what_pydicom_writes() -> None:
    """The directly encoded file meta group is byte for byte pydicom's, odd and even UIDs."""
    cases = [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", ExplicitVRLittleEndian),
        (MR_IMAGE, "1.2.3.45", ImplicitVRLittleEndian),
        (SECONDARY_CAPTURE, uid("dimse/meta/odd"), JPEG2000Lossless),
    ]
    for sop_class, sop_instance, syntax in cases:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_instance)
        meta.TransferSyntaxUID = UID(syntax)
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        expected = BytesIO()
        write_file_meta_info(expected, meta, enforce_standard=True)  # type: ignore[arg-type]
        assert file_meta(sop_class, sop_instance, syntax) == expected.getvalue()


@pytest.mark.parametrize("spool", [1 << 20, 0])
def test_part10_wraps_the_received_bytes_in_memory_or_in_a_file(spool: int) -> None:
    """Up to the spool size the Part 10 file is made in memory, past it in a temporary
    file (a large instance is not held twice in memory); the bytes are the same."""
    received = BytesIO(b"\x08\x00\x16\x00UI\x1a\x001.2.840.10008.5.1.4.1.1.2\x00")
    with received.getbuffer() as view:
        fp = part10("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", ExplicitVRLittleEndian, view, spool)
    with fp:
        assert isinstance(fp, BytesIO) == (spool > 0)
        if spool == 0:
            assert fp.fileno() >= 0  # a real file, not memory
        meta = file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", ExplicitVRLittleEndian)
        assert fp.read() == b"\x00" * 128 + b"DICM" + meta + received.getvalue()
    received.write(b"more")  # the view was released: pynetdicom's buffer may grow again


def test_storescu_instance_past_the_memory_spool_is_stored_as_sent(
    dimse: DimseServer, archive: Archive, tmp_path: Path
) -> None:
    archive.settings = archive.settings.model_copy(update={"spool_memory_bytes": 0})
    raw = to_bytes(_instance("dimse/spooled"))
    (tmp_path / "one.dcm").write_bytes(raw)
    done = dcmtk("storescu", "-aec", "DICOMVAULT", "127.0.0.1", dimse.port, tmp_path / "one.dcm")
    assert done.returncode == 0, done.stdout + done.stderr
    [stored] = archive.store.list("")
    kept = b"".join(archive.store.iter_bytes(stored.key))
    assert _dataset_bytes(kept) == _dataset_bytes(raw)


def _dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file: everything after the file meta group."""
    assert part10[128:132] == b"DICM"
    group_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_length :]


def _mixed_folder(folder: Path) -> dict[str, bytes]:
    """Files of several SOP classes and transfer syntaxes, by SOP Instance UID."""
    study = uid("dimse/mixed/study")
    variants: list[tuple[str, str | None, str]] = [
        ("CT", None, "1.2.840.10008.5.1.4.1.1.2"),
        ("CT", ImplicitVRLittleEndian, "1.2.840.10008.5.1.4.1.1.2"),
        ("MR", DeflatedExplicitVRLittleEndian, MR_IMAGE),
        ("CT", JPEGLSLossless, "1.2.840.10008.5.1.4.1.1.2"),
        ("CT", RLELossless, "1.2.840.10008.5.1.4.1.1.2"),
        ("OT", JPEG2000Lossless, SECONDARY_CAPTURE),
    ]
    files: dict[str, bytes] = {}
    for number, (modality, syntax, sop_class) in enumerate(variants, start=1):
        ds = dataset(
            study_uid=study,
            series_uid=uid(f"dimse/mixed/{modality}"),
            sop_uid=uid(f"dimse/mixed/{number}"),
            modality=modality,
            instance_number=number,
            size=32,
            seed=number,
        )
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        if syntax in (JPEGLSLossless, RLELossless, JPEG2000Lossless):
            ds.compress(syntax)
        elif syntax is not None:
            ds.file_meta.TransferSyntaxUID = syntax
        raw = to_bytes(ds)
        (folder / f"{number:02d}.dcm").write_bytes(raw)
        files[ds.SOPInstanceUID] = raw
    return files


def storescu_profile(files: dict[str, bytes], path: Path) -> Path:
    """A storescu configuration proposing exactly the (SOP class, transfer syntax) pairs
    of `files`, one presentation context each, as a modality sending as it acquired.

    Without one, storescu proposes only uncompressed transfer syntaxes and would
    have to decompress (which dcmtk cannot do for JPEG-LS or JPEG 2000)."""
    pairs = sorted(
        {
            (str(ds.file_meta.MediaStorageSOPClassUID), str(ds.file_meta.TransferSyntaxUID))
            for ds in (dcmread(BytesIO(raw), stop_before_pixels=True) for raw in files.values())
        }
    )
    lines = ["[[TransferSyntaxes]]"]
    for number, (_, syntax) in enumerate(pairs, start=1):
        lines += [f"[TS{number}]", f"TransferSyntax1 = {syntax}"]
    lines += ["[[PresentationContexts]]", "[Sent]"]
    for number, (sop_class, _) in enumerate(pairs, start=1):
        lines.append(f"PresentationContext{number} = {sop_class}\\TS{number}")
    lines += ["[[Profiles]]", "[Sent]", "PresentationContexts = Sent"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_echoscu_is_answered(dimse: DimseServer) -> None:
    done = dcmtk("echoscu", "-aec", "DICOMVAULT", "127.0.0.1", dimse.port)
    assert done.returncode == 0, done.stderr


def test_storescu_folder_is_stored_as_received(
    dimse: DimseServer, archive: Archive, tmp_path: Path
) -> None:
    sent = _mixed_folder(tmp_path)
    done = dcmtk(
        "storescu",
        "-aet",
        "RAJ_MR1",
        "-aec",
        "DICOMVAULT",
        "-xf",
        storescu_profile(sent, tmp_path.parent / f"{tmp_path.name}.cfg"),
        "Sent",
        "+sd",
        "127.0.0.1",
        dimse.port,
        tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    study = dcmread(next(iter(tmp_path.iterdir()))).StudyInstanceUID
    with running_server(archive) as base:
        found = httpx.get(f"{base}/dicom-web/studies/{study}/instances").json()
        assert {item["00080018"]["Value"][0] for item in found} == set(sent)
        for sop_uid, raw in sent.items():
            series = dcmread(BytesIO(raw)).SeriesInstanceUID
            response = httpx.get(
                f"{base}/dicom-web/studies/{study}/series/{series}/instances/{sop_uid}",
                headers={"Accept": AS_STORED},
            )
            assert response.status_code == 200
            [(_, stored)] = parse_multipart(response.headers["content-type"], response.content)
            stored_ds = dcmread(BytesIO(stored))
            assert (
                stored_ds.file_meta.TransferSyntaxUID
                == dcmread(BytesIO(raw)).file_meta.TransferSyntaxUID
            )
            assert _dataset_bytes(stored) == _dataset_bytes(raw), sop_uid
    with archive.db.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT calling_aet FROM instances WHERE calling_aet IS NOT NULL"
        ).all()
    assert {row[0] for row in rows} == {"RAJ_MR1"}
    assert len(rows) == len(sent)


def _store(port: int, ds: Dataset) -> Dataset:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMVAULT")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def _instance(name: str) -> Dataset:
    return dataset(
        study_uid=uid(f"{name}/st"), series_uid=uid(f"{name}/se"), sop_uid=uid(f"{name}/i"), size=8
    )


def test_identical_duplicate_is_success_and_writes_nothing(
    dimse: DimseServer, archive: Archive
) -> None:
    ds = _instance("dimse/dup")
    first = _store(dimse.port, ds)
    again = _store(dimse.port, ds)
    assert first.Status == 0x0000
    assert again.Status == 0x0000
    assert "already stored" in again.ErrorComment
    with archive.db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM objects").scalar() == 1


def test_different_bytes_under_a_stored_uid_are_refused(
    dimse: DimseServer, archive: Archive
) -> None:
    ds = _instance("dimse/conflict")
    assert _store(dimse.port, ds).Status == 0x0000
    ds.PatientName = "Other^Name"
    refused = _store(dimse.port, ds)
    assert refused.Status == 0xA900
    assert "different data" in refused.ErrorComment


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid_is_refused_and_nothing_stored(
    dimse: DimseServer, archive: Archive, missing: str
) -> None:
    ds = _instance(f"dimse/missing/{missing}")
    delattr(ds, missing)
    refused = _store(dimse.port, ds)
    assert refused.Status == 0xC000
    assert refused.ErrorComment
    with archive.db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM instances").scalar() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM objects").scalar() == 0


def test_index_down_is_out_of_resources_and_nothing_stored(
    dimse: DimseServer, archive: Archive
) -> None:
    # A real database failure: the table the ingest reads first is gone.
    with archive.db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE instances RENAME TO instances_away")
    try:
        refused = _store(dimse.port, _instance("dimse/down"))
    finally:
        with archive.db.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE instances_away RENAME TO instances")
    assert refused.Status == 0xA700
    assert "retry" in refused.ErrorComment
    with archive.db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM objects").scalar() == 0


def test_truncated_dataset_is_refused_and_nothing_stored(
    dimse: DimseServer, archive: Archive, tmp_path: Path
) -> None:
    raw = to_bytes(_instance("dimse/truncated"))
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[: len(raw) - 40])  # inside Pixel Data
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title="DICOMVAULT")
    try:
        refused = assoc.send_c_store(cut)  # a path: pynetdicom sends the bytes as they are
    finally:
        assoc.release()
    assert refused.Status == 0xC000
    assert refused.ErrorComment
    with archive.db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM objects").scalar() == 0


def test_store_audit_records_per_study_and_association(
    dimse: DimseServer, archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomvault.access import audit
    from dicomvault.dimse import auditing

    monkeypatch.setattr(auditing, "FLUSH_EVERY", 3)  # a long association, in small
    for number in range(7):
        sop = uid(f"audit/{number}")
        data = to_bytes(dataset(study_uid=uid("audit/st"), series_uid=uid("audit/se"),
                                sop_uid=sop, instance_number=number, size=8))  # fmt: skip
        (tmp_path / f"{number}.dcm").write_bytes(data)
    done = dcmtk("storescu", "-aet", "RAJ_MR1", "-aec", "DICOMVAULT", "+sd", "127.0.0.1",
                 dimse.port, tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = audit.search(archive.db, action="store", study_uid=uid("audit/st"))
        if sum(r["detail"]["instances"] for r in records) == 7:
            break
        time.sleep(0.05)
    assert [r["detail"]["instances"] for r in records] == [3, 3, 1]
    assert {(r["actor"], r["door"], r["patient_id"]) for r in records} == {
        ("RAJ_MR1", "dimse", "PAT001")
    }
