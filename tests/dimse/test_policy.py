"""Access control on the DICOM door: known AEs only, the calling host, per-AE rights, and
sites; every refusal is one audit record. Driven by dcmtk's tools and pynetdicom."""

from __future__ import annotations

import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import select

from dicomvault.access import accounts, audit
from dicomvault.access.audit import AuditAction
from dicomvault.archive import Archive
from dicomvault.dimse import DimseServer, registry
from dicomvault.index.schema import instances, studies
from dicomvault.jobs.worker import Worker
from dicomvault.model.origin import Door, Origin
from dicomvault.synthetic import dataset, to_bytes, uid
from tests.dimse.conftest import running_node
from tests.support.dcmtk import dcmtk, storescp
from tests.support.live import free_port

STUDY_A, STUDY_B = uid("policy/a"), uid("policy/b")
COMMITMENT = "1.2.840.10008.1.20.1.1"  # the well-known Storage Commitment SOP Instance


@pytest.fixture
def guarded(archive: Archive) -> Iterator[DimseServer]:
    """A node that accepts known AEs only, with sites A and B and one study at each."""
    archive.settings = archive.settings.model_copy(update={"dicom_known_aes_only": True})
    accounts.add_site(archive.db, "A", organization="north")
    accounts.add_site(archive.db, "B", organization="south")
    for site, study in (("A", STUDY_A), ("B", STUDY_B)):
        archive.ingestor.ingest(
            BytesIO(_instance(study, f"{site}/1")), origin=Origin(Door.API, site)
        )
    with running_node(archive) as server:
        yield server


def _instance(study: str, name: str) -> bytes:
    return to_bytes(
        dataset(
            study_uid=study,
            series_uid=uid(f"{study}/s"),
            sop_uid=uid(name),
            size=8,
            patient_id=f"P-{study[-4:]}",
        )
    )


def _denials(archive: Archive) -> list[dict]:
    return [
        r for r in audit.search(archive.db, action=AuditAction.PERMISSION_DENIED)
        if r["door"] == "dimse"
    ]  # fmt: skip


def _ae(title: str, *contexts: str) -> AE:
    ae = AE(ae_title=title)
    for context in contexts:
        ae.add_requested_context(context)
    return ae


def _find_studies(title: str, port: int) -> list[tuple[Dataset, Dataset | None]]:
    """The (status, identifier) responses to a Study Root C-FIND of every study."""
    assoc = _ae(title, StudyRootQueryRetrieveInformationModelFind).associate("127.0.0.1", port)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    try:
        return list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()


def test_an_unknown_calling_ae_is_refused_and_audited(
    archive: Archive, guarded: DimseServer
) -> None:
    done = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "DICOMVAULT", "127.0.0.1", guarded.port)
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stdout + done.stderr
    [denial] = _denials(archive)
    assert (denial["actor"], denial["detail"]["wanted"]) == ("STRANGER", "associate")
    assert denial["address"] == "127.0.0.1"
    registry.add(archive.db, registry.KnownAE("MODALITY"))
    done = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "DICOMVAULT", "127.0.0.1", guarded.port)
    assert done.returncode == 0, done.stderr


def test_a_known_ae_calling_from_another_host_is_refused(
    archive: Archive, guarded: DimseServer
) -> None:
    registry.add(archive.db, registry.KnownAE("FARAWAY", host="192.0.2.7", port=104))
    done = dcmtk("echoscu", "-aet", "FARAWAY", "-aec", "DICOMVAULT", "127.0.0.1", guarded.port)
    assert done.returncode != 0
    [denial] = _denials(archive)
    assert "registered at 192.0.2.7, not 127.0.0.1" in denial["detail"]["reason"]


def test_per_ae_rights_refuse_each_operation_with_0124(
    archive: Archive, guarded: DimseServer, tmp_path: Path
) -> None:
    registry.add(archive.db, registry.KnownAE("READONLY", may_store=False, may_retrieve=False))
    registry.add(archive.db, registry.KnownAE("STOREONLY", may_query=False, may_retrieve=False))
    new = tmp_path / "new.dcm"
    new.write_bytes(_instance(uid("policy/new"), "policy/new/1"))
    done = dcmtk(
        "storescu", "-aet", "READONLY", "-aec", "DICOMVAULT", "127.0.0.1", guarded.port, new
    )
    assert "0x0124" in done.stdout + done.stderr or done.returncode != 0
    with archive.db.read() as conn:
        assert conn.execute(select(instances.c.id).where(
            instances.c.sop_uid == uid("policy/new/1"))).first() is None  # fmt: skip

    codes = [int(status.Status) for status, _ in _find_studies("STOREONLY", guarded.port)]
    assert codes == [0x0124]

    with storescp(tmp_path / "dest") as port:
        registry.add(archive.db, registry.KnownAE("DEST", "127.0.0.1", port))
        move = _ae("READONLY", StudyRootQueryRetrieveInformationModelMove)
        assoc = move.associate("127.0.0.1", guarded.port)
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = STUDY_A
        answers = [
            s
            for s, _ in assoc.send_c_move(ident, "DEST", StudyRootQueryRetrieveInformationModelMove)
        ]
        assoc.release()
    assert [int(s.Status) for s in answers] == [0x0124]
    assert list((tmp_path / "dest").iterdir()) == []
    wanted = sorted(d["detail"]["wanted"] for d in _denials(archive))
    assert wanted == ["query", "retrieve", "store"]


def test_an_ae_of_one_site_reaches_only_that_site(
    archive: Archive, guarded: DimseServer, tmp_path: Path
) -> None:
    registry.add(archive.db, registry.KnownAE("MOD_A", site="A"))
    # What it stores is filed under its site.
    new = tmp_path / "a2.dcm"
    new.write_bytes(_instance(uid("policy/a-new"), "A/2"))
    done = dcmtk("storescu", "-aet", "MOD_A", "-aec", "DICOMVAULT", "127.0.0.1", guarded.port, new)
    assert done.returncode == 0, done.stderr
    with archive.db.read() as conn:
        site = conn.execute(
            select(studies.c.site).where(studies.c.study_uid == uid("policy/a-new"))
        )
        assert site.scalar_one() == "A"
    # It cannot add to another site's study.
    intruder = tmp_path / "b2.dcm"
    intruder.write_bytes(_instance(STUDY_B, "B/2"))
    done = dcmtk(
        "storescu", "-aet", "MOD_A", "-aec", "DICOMVAULT", "127.0.0.1", guarded.port, intruder
    )
    assert "0x0124" in done.stdout + done.stderr or done.returncode != 0
    # C-FIND shows its site's studies only, not even a count of the others.
    found = [ident.StudyInstanceUID for _, ident in _find_studies("MOD_A", guarded.port) if ident]
    assert sorted(found) == sorted([STUDY_A, uid("policy/a-new")])
    # C-GET of the other site's study: refused like a study that does not exist, audited.
    get = _ae("MOD_A", StudyRootQueryRetrieveInformationModelGet)
    get.add_requested_context(CTImageStorage)
    assoc = get.associate(
        "127.0.0.1",
        guarded.port,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)],
    )
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = STUDY_B
    answers = [s for s, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    assert [(int(s.Status), s.ErrorComment) for s in answers] == [(0xC000, "no matching instances")]
    denials = _denials(archive)
    assert [(d["detail"]["wanted"], d["study_uid"]) for d in denials] == [
        ("store", None),
        ("retrieve", STUDY_B),
    ]
    assert denials[1]["patient_id"] == f"P-{STUDY_B[-4:]}"


def test_storage_commitment_reports_what_is_held(archive: Archive, guarded: DimseServer) -> None:
    registry.add(archive.db, registry.KnownAE("MOD_A", site="A"))
    reports: list[tuple[int, Dataset]] = []

    def on_report(event: object) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information))  # type: ignore[attr-defined]
        return 0x0000, None

    ae = _ae("MOD_A")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", guarded.port,
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])  # fmt: skip
    request = Dataset()
    request.TransactionUID = uid("policy/transaction")
    refs = []
    for sop in (uid("A/1"), uid("B/1"), uid("policy/never-sent")):
        item = Dataset()
        item.ReferencedSOPClassUID = CTImageStorage
        item.ReferencedSOPInstanceUID = sop
        refs.append(item)
    request.ReferencedSOPSequence = refs
    status, _ = assoc.send_n_action(
        request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
    )
    assert status.Status == 0x0000
    deadline = time.monotonic() + 10
    while not reports and time.monotonic() < deadline:
        time.sleep(0.05)
    assoc.release()
    [(event_type, result)] = reports
    assert event_type == 2  # some failed
    assert result.TransactionUID == request.TransactionUID
    assert [i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence] == [uid("A/1")]
    failed = {i.ReferencedSOPInstanceUID: i.FailureReason for i in result.FailedSOPSequence}
    # Another site's instance is reported as absent, like one never sent.
    assert failed == {uid("B/1"): 0x0112, uid("policy/never-sent"): 0x0112}


def test_a_node_on_another_address_refuses_to_start_open_to_any_ae(archive: Archive) -> None:
    from dicomvault.access.startup import InsecureConfiguration, check_secure_defaults

    accounts.add_user(
        archive.db, "admin", role=accounts.Role.ADMIN, site=None, password="pw-12345678"
    )
    anywhere = "0.0.0.0"  # noqa: S104 - the point of the test
    open_node = archive.settings.model_copy(
        update={"host": anywhere, "dicom_known_aes_only": False}
    )
    with pytest.raises(InsecureConfiguration, match="any calling AE"):
        check_secure_defaults(open_node, archive.db, dicom=True)
    default = archive.settings.model_copy(update={"host": anywhere})
    assert not default.dicom_accepts_unknown_aes
    check_secure_defaults(default, archive.db, dicom=True)


def test_a_commitment_report_after_release_comes_on_a_new_association(
    archive: Archive, guarded: DimseServer
) -> None:
    reports: list[tuple[int, Dataset]] = []

    def on_report(event: object) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information))  # type: ignore[attr-defined]
        return 0x0000, None

    # The modality listens for the report (as Storage Commitment SCU, the archive SCP).
    listener = AE(ae_title="MOD_A")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    port = free_port()
    server = listener.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        registry.add(archive.db, registry.KnownAE("MOD_A", "127.0.0.1", port, site="A"))
        ae = _ae("MOD_A", StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", guarded.port)
        request = Dataset()
        request.TransactionUID = uid("policy/transaction-2")
        item = Dataset()
        item.ReferencedSOPClassUID = CTImageStorage
        item.ReferencedSOPInstanceUID = uid("A/1")
        request.ReferencedSOPSequence = [item]
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT)
        assoc.release()  # before the report could come
        assert status.Status == 0x0000
        worker = Worker(archive)
        deadline = time.monotonic() + 20
        while not reports and time.monotonic() < deadline:
            if not worker.run_once():
                time.sleep(0.05)
    finally:
        server.shutdown()
    [(event_type, result)] = reports
    assert event_type == 1  # all committed
    assert [i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence] == [uid("A/1")]
    assert "FailedSOPSequence" not in result
