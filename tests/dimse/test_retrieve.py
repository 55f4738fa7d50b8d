"""C-MOVE with dcmtk's movescu to a storescp the test starts, C-GET with getscu, and the
statuses a pynetdicom SCU sees: unknown destination, bad identifiers, C-CANCEL."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomvault.access import audit
from dicomvault.access.audit import AuditAction
from dicomvault.archive import Archive
from dicomvault.dimse import DimseServer, registry
from dicomvault.synthetic import dataset, to_bytes, uid
from tests.support.dcmtk import dcmtk, storescp

STUDY = uid("move/study")


def _study(archive: Archive, name: str = "move", count: int = 3, patient: str = "PAT001") -> dict:
    """A stored study: `count` CT instances, the last one JPEG-LS compressed; raw by UID."""
    study = uid(f"{name}/study")
    sent: dict[str, bytes] = {}
    for number in range(1, count + 1):
        ds = dataset(
            study_uid=study,
            series_uid=uid(f"{name}/series"),
            sop_uid=uid(f"{name}/{number}"),
            instance_number=number,
            patient_id=patient,
            size=16,
            seed=number,
        )
        if number == count:
            ds.compress(JPEGLSLossless, generate_instance_uid=False)
        raw = to_bytes(ds)
        archive.ingestor.ingest(BytesIO(raw))
        sent[str(ds.SOPInstanceUID)] = raw
    return sent


def _received(out: Path) -> dict[str, Dataset]:
    return {
        str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in out.rglob("*") if p.is_file())
    }


def test_movescu_study_to_a_storescp_arrives_as_stored(
    archive: Archive, dimse: DimseServer, tmp_path: Path
) -> None:
    sent = _study(archive)
    out = tmp_path / "dest"
    with storescp(out) as port:
        registry.add(archive.db, registry.KnownAE("DEST", "127.0.0.1", port))
        study = f"StudyInstanceUID={uid('move/study')}"
        done = dcmtk("movescu", "-S", "-aet", "MOVER", "-aec", "DICOMVAULT", "-aem", "DEST",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", study,
                     "127.0.0.1", dimse.port)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    got = _received(out)
    assert set(got) == set(sent)
    for sop_uid, raw in sent.items():
        original = dcmread(BytesIO(raw))
        # Sent as stored: the compressed one keeps its transfer syntax and exact pixel bytes.
        assert got[sop_uid].file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert got[sop_uid].PixelData == original.PixelData
    records = audit.search(archive.db, study_uid=uid("move/study"))
    retrieves = [r for r in records if r["action"] == AuditAction.RETRIEVE]
    assert len(retrieves) == 1
    assert retrieves[0]["door"] == "dimse"
    assert retrieves[0]["detail"]["destination"] == "DEST"
    assert retrieves[0]["detail"]["instances"] == 3


def test_getscu_series_decompresses_what_the_requestor_cannot_take(
    archive: Archive, dimse: DimseServer, tmp_path: Path
) -> None:
    sent = _study(archive, "get")
    out = tmp_path / "got"
    out.mkdir()
    # getscu proposes uncompressed transfer syntaxes only (its default).
    keys = ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={uid('get/study')}",
            f"SeriesInstanceUID={uid('get/series')}"]  # fmt: skip
    done = dcmtk("getscu", "-S", "-aet", "GETTER", "-aec", "DICOMVAULT", "-od", out,
                 *[a for k in keys for a in ("-k", k)], "127.0.0.1", dimse.port)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    got = _received(out)
    assert set(got) == set(sent)
    compressed = uid("get/3")
    assert got[compressed].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    original = dcmread(BytesIO(sent[compressed]))
    assert (got[compressed].pixel_array == original.pixel_array).all()


def _scu(*contexts: str) -> AE:
    ae = AE(ae_title="SCU")
    for context in contexts:
        ae.add_requested_context(context)
    return ae


def _identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _statuses(responses: object) -> list[tuple[int, Dataset | None]]:
    return [(int(status.Status), ident) for status, ident in responses if status]  # type: ignore[attr-defined]


def test_move_to_an_unknown_destination_fails_with_a801(
    archive: Archive, dimse: DimseServer
) -> None:
    _study(archive)
    assoc = _scu(StudyRootQueryRetrieveInformationModelMove).associate("127.0.0.1", dimse.port)
    assert assoc.is_established
    try:
        identifier = _identifier("STUDY", StudyInstanceUID=uid("move/study"))
        responses = assoc.send_c_move(
            identifier, "NOWHERE", StudyRootQueryRetrieveInformationModelMove
        )
        assert [code for code, _ in _statuses(responses)] == [0xA801]
    finally:
        assoc.release()


@pytest.mark.parametrize(
    ("identifier", "comment"),
    [
        (_identifier("STUDY"), "needs StudyInstanceUID"),
        (_identifier("SERIES", StudyInstanceUID=STUDY), "needs SeriesInstanceUID"),
        (_identifier("WARD", StudyInstanceUID=STUDY), "is not PATIENT/STUDY/SERIES/IMAGE"),
        (_identifier("STUDY", StudyInstanceUID=STUDY, SOPInstanceUID="1.2"), "below the STUDY"),
        (_identifier("STUDY", StudyInstanceUID="1.2.3.999"), "no matching instances"),
    ],
)
def test_bad_move_identifiers_fail_with_a_reason_and_send_nothing(
    archive: Archive, dimse: DimseServer, tmp_path: Path, identifier: Dataset, comment: str
) -> None:
    _study(archive)
    out = tmp_path / "dest"
    with storescp(out) as port:
        registry.add(archive.db, registry.KnownAE("DEST", "127.0.0.1", port))
        assoc = _scu(StudyRootQueryRetrieveInformationModelMove).associate("127.0.0.1", dimse.port)
        try:
            responses = assoc.send_c_move(
                identifier, "DEST", StudyRootQueryRetrieveInformationModelMove
            )
            statuses = [(s, ident) for s, ident in responses if s]
        finally:
            assoc.release()
    ((status, _),) = statuses
    assert status.Status in (0xA900, 0xC000)
    assert comment in status.ErrorComment
    assert _received(out) == {}


def test_patient_root_move_of_a_patient(
    archive: Archive, dimse: DimseServer, tmp_path: Path
) -> None:
    sent = _study(archive, "patient-a", count=2, patient="PAT-A")
    _study(archive, "patient-b", count=2, patient="PAT-B")
    out = tmp_path / "dest"
    with storescp(out) as port:
        registry.add(archive.db, registry.KnownAE("DEST", "127.0.0.1", port))
        assoc = _scu(PatientRootQueryRetrieveInformationModelMove).associate(
            "127.0.0.1", dimse.port
        )
        try:
            responses = assoc.send_c_move(
                _identifier("PATIENT", PatientID="PAT-A"), "DEST",
                PatientRootQueryRetrieveInformationModelMove,
            )  # fmt: skip
            statuses = _statuses(responses)
        finally:
            assoc.release()
    assert [code for code, _ in statuses] == [0xFF00, 0xFF00, 0x0000]
    assert set(_received(out)) == set(sent)


def test_c_cancel_stops_a_c_get_between_instances(archive: Archive, dimse: DimseServer) -> None:
    count = 40
    _study(archive, "cancel", count=count)
    received: list[str] = []

    def on_store(event: object) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))  # type: ignore[attr-defined]
        return 0x0000

    ae = _scu(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, JPEGLSLossless])
    from pynetdicom import evt

    assoc = ae.associate(
        "127.0.0.1",
        dimse.port,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        responses = assoc.send_c_get(
            _identifier("STUDY", StudyInstanceUID=uid("cancel/study")),
            StudyRootQueryRetrieveInformationModelGet,
            msg_id=7,
        )
        codes = []
        for status, _ in responses:
            codes.append(int(status.Status))
            if len(codes) == 3:
                context_id = assoc._get_valid_context(  # the C-GET's context
                    StudyRootQueryRetrieveInformationModelGet, "", "scu"
                ).context_id
                assoc.send_c_cancel(7, context_id)
    finally:
        assoc.release()
    assert codes[-1] == 0xFE00, codes  # Cancel
    assert 3 <= len(received) < count
