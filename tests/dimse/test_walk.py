"""Every DIMSE operation the node serves, tried without credentials (an unknown calling
AE) and as the AE of another site, on a study of site A: every one refused, every
refusal exactly one audit record. The operations are read from the node's own handler
table, so a DIMSE service added later without a case here fails this test."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomvault.access import accounts, audit
from dicomvault.access.audit import AuditAction
from dicomvault.archive import Archive
from dicomvault.dimse import DimseServer, registry
from dicomvault.model.origin import Door, Origin
from dicomvault.retrieve import match_instances
from dicomvault.synthetic import instance_bytes, uid
from tests.dimse.conftest import running_node
from tests.support.dcmtk import storescp

STUDY_A = uid("walk/a")
SOP_A = uid("walk/a/1")
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"


def _study_query(level: str = "STUDY") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = STUDY_A
    return ds


def _store(port: int, calling: str) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port)
    if not assoc.is_established:
        return True
    sop = uid(f"walk/{calling}")
    data = instance_bytes(study_uid=STUDY_A, series_uid=uid("walk/a/s2"), sop_uid=sop, size=8)
    intruder = dcmread(BytesIO(data))
    answer = assoc.send_c_store(intruder)
    assoc.release()
    return bool(answer.Status != 0)


def _find(port: int, calling: str) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port)
    if not assoc.is_established:
        return True
    responses = assoc.send_c_find(_study_query(), StudyRootQueryRetrieveInformationModelFind)
    found = [identifier for _, identifier in responses if identifier]
    assoc.release()
    return found == []


def _move(port: int, calling: str, dest: Path) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port)
    if not assoc.is_established:
        return True
    responses = assoc.send_c_move(
        _study_query(), "DEST", StudyRootQueryRetrieveInformationModelMove
    )
    answers = [status for status, _ in responses if status]
    assoc.release()
    return answers[-1].Status != 0 and not any(dest.iterdir())


def _get(port: int, calling: str) -> bool:
    received: list[object] = []
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        "127.0.0.1", port, ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, lambda e: received.append(e) or 0x0000)],  # type: ignore[func-returns-value]
    )  # fmt: skip
    if not assoc.is_established:
        return True
    responses = assoc.send_c_get(_study_query(), StudyRootQueryRetrieveInformationModelGet)
    answers = [status for status, _ in responses if status]
    assoc.release()
    return answers[-1].Status != 0 and received == []


def _commit(port: int, calling: str) -> bool:
    reports: list[Dataset] = []
    ae = AE(ae_title=calling)
    ae.add_requested_context(StorageCommitmentPushModel)

    def on_report(event: object) -> tuple[int, None]:
        reports.append(event.event_information)  # type: ignore[attr-defined]
        return 0x0000, None

    assoc = ae.associate("127.0.0.1", port, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    if not assoc.is_established:
        return True
    request = Dataset()
    request.TransactionUID = uid(f"walk/transaction/{calling}")
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = SOP_A
    request.ReferencedSOPSequence = [item]
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
    deadline = time.monotonic() + 10
    while status.Status == 0 and not reports and time.monotonic() < deadline:
        time.sleep(0.05)
    assoc.release()
    return status.Status != 0 or "ReferencedSOPSequence" not in reports[0]


@pytest.fixture
def node(archive: Archive, tmp_path: Path) -> Iterator[tuple[DimseServer, Path]]:
    archive.settings = archive.settings.model_copy(update={"dicom_known_aes_only": True})
    accounts.add_site(archive.db, "A")
    accounts.add_site(archive.db, "B")
    data = instance_bytes(study_uid=STUDY_A, series_uid=uid("walk/a/s"), sop_uid=SOP_A, size=8)
    archive.ingestor.ingest(BytesIO(data), origin=Origin(Door.API, "A"))
    registry.add(archive.db, registry.KnownAE("MOD_B", site="B"))
    with storescp(tmp_path / "dest") as port, running_node(archive) as server:
        registry.add(archive.db, registry.KnownAE("DEST", "127.0.0.1", port))
        yield server, tmp_path / "dest"


def _cases(dest: Path) -> dict[object, Callable[[int, str], bool]]:
    return {
        evt.EVT_C_STORE: _store,
        evt.EVT_C_FIND: _find,
        evt.EVT_C_MOVE: lambda port, calling: _move(port, calling, dest),
        evt.EVT_C_GET: _get,
        evt.EVT_N_ACTION: _commit,
    }


def _denials(archive: Archive) -> int:
    return len(audit.search(archive.db, action=AuditAction.PERMISSION_DENIED))


@pytest.mark.parametrize("calling", ["STRANGER", "MOD_B"])
def test_every_dimse_operation_is_refused_and_audited(
    archive: Archive, node: tuple[DimseServer, Path], calling: str
) -> None:
    server, dest = node
    cases = _cases(dest)
    guard_events = {event for event, _ in server.guard.handlers()}
    served = {event for event, _ in server.handlers()}
    served -= guard_events | {evt.EVT_C_ECHO}
    assert served == set(cases), "a DIMSE service without a case in this walk"
    for event, attempt in cases.items():
        before = _denials(archive)
        assert attempt(server.port, calling), f"{event} was not refused to {calling}"
        deadline = time.monotonic() + 5  # commitment refusals are written by its thread
        while _denials(archive) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _denials(archive) == before + 1, f"{event} by {calling}: one audit record"
    # Nothing was added to site A's study.
    assert [i.sop_uid for i in match_instances(archive.db, study_uids=[STUDY_A])] == [SOP_A]
