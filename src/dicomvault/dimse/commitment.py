"""Storage Commitment Push Model SCP (PS3.4 J): tells a modality which instances the
archive holds safely, so that it may delete its own copies.

The N-ACTION (Request Storage Commitment) is answered at once; the result follows
as an N-EVENT-REPORT, on the same association when it is still open (a pynetdicom
association may send from another thread: it pauses its own reactor), otherwise on a
new association to the requester's registry entry, as a durable job that is retried
(`dimse.commitment-report`). An instance is committed when the index holds it under
that SOP class and its object is in the store at its recorded size (its SHA-256 was
computed as it was written); anything else is a failure with its reason:

- 0x0112 No such object instance (also for instances of sites the peer cannot read,
  so that commitment does not reveal them),
- 0x0119 Class / instance conflict (stored under another SOP class),
- 0x0110 Processing failure (the object is missing or damaged).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from sqlalchemy import select

from dicomvault import jobs
from dicomvault.access.accounts import site_directory
from dicomvault.access.policy import Action
from dicomvault.archive import Archive
from dicomvault.dimse import registry
from dicomvault.dimse.auditing import DimseAudit
from dicomvault.dimse.connections import peer_of
from dicomvault.dimse.outbound import connect_options
from dicomvault.dimse.policy import Peer, authorize, readable
from dicomvault.dimse.sop import STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
from dicomvault.errors import ObjectNotFound, StorageError
from dicomvault.index.schema import instances, objects, studies

__all__ = ["REPORT_JOB", "CommitmentHandler", "commitment_result"]

log = logging.getLogger(__name__)

REPORT_JOB = "dimse.commitment-report"
REQUEST_STORAGE_COMMITMENT = 1  # N-ACTION Action Type ID
ALL_COMMITTED, SOME_FAILED = 1, 2  # N-EVENT-REPORT Event Type ID
NO_SUCH_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110
NO_SUCH_ACTION = 0x0123
INVALID_ARGUMENT = 0x0115
NOT_AUTHORIZED = 0x0124
_PAUSE = 0.05  # lets pynetdicom send the N-ACTION response before the report


def commitment_result(
    archive: Archive, request: Dataset, sites: frozenset[str] | None
) -> tuple[int, Dataset, list[str]]:
    """The N-EVENT-REPORT (event type, dataset) answering a commitment request, and the
    SOP Instance UIDs held for sites the requester may not read (reported as absent)."""
    refs = [
        (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
        for item in request.get("ReferencedSOPSequence", [])
    ]
    wanted = {sop_uid for _, sop_uid in refs}
    with archive.db.read() as conn:
        rows = conn.execute(
            select(
                instances.c.sop_uid,
                instances.c.sop_class_uid,
                objects.c.key,
                objects.c.size,
                studies.c.site,
            )
            .join(objects, objects.c.id == instances.c.object_fk)
            .join(studies, studies.c.id == instances.c.study_fk)
            .where(instances.c.sop_uid.in_(sorted(wanted)))
        ).all()
    held = {row.sop_uid: row for row in rows if sites is None or row.site in sites}
    hidden = sorted(row.sop_uid for row in rows if row.sop_uid not in held)
    result = Dataset()
    result.TransactionUID = request.TransactionUID
    done: list[Dataset] = []
    failed: list[Dataset] = []
    for sop_class, sop_uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_uid
        row = held.get(sop_uid)
        reason = None
        if row is None:
            reason = NO_SUCH_INSTANCE
        elif row.sop_class_uid != sop_class:
            reason = CLASS_INSTANCE_CONFLICT
        else:
            try:
                if archive.store.size(row.key) != row.size:
                    reason = PROCESSING_FAILURE
            except (ObjectNotFound, StorageError, OSError):
                reason = PROCESSING_FAILURE
        if reason is None:
            done.append(item)
        else:
            item.FailureReason = reason
            failed.append(item)
    if done:
        result.ReferencedSOPSequence = done
    if failed:
        result.FailedSOPSequence = failed
    return (SOME_FAILED if failed else ALL_COMMITTED), result, hidden


class CommitmentHandler:
    """The EVT_N_ACTION handler of one archive (Storage Commitment Push Model)."""

    def __init__(self, archive: Archive, audit: DimseAudit) -> None:
        self.archive = archive
        self.audit = audit

    def __call__(self, event: Any) -> tuple[int, Dataset | None]:
        request = event.request
        if str(request.RequestedSOPClassUID) != STORAGE_COMMITMENT:
            return NO_SUCH_ACTION, None
        if event.action_type != REQUEST_STORAGE_COMMITMENT:
            return NO_SUCH_ACTION, None
        peer = peer_of(event.assoc)
        decision = authorize(peer, Action.STORE)
        if not decision:
            self.audit.denied(peer.calling_aet, peer.address, Action.STORE, decision.reason)
            return NOT_AUTHORIZED, None
        try:
            info = event.action_information
            _ = info.TransactionUID
        except Exception:  # noqa: BLE001 - any undecodable request is an invalid argument
            return INVALID_ARGUMENT, None
        thread = threading.Thread(
            target=self._report,
            args=(event.assoc, peer, info),
            name="storage-commitment",
            daemon=True,
        )
        thread.start()
        return 0x0000, None

    def _report(self, assoc: Any, peer: Peer, request: Dataset) -> None:
        try:
            with self.archive.db.read() as conn:
                sites = readable(peer, site_directory(conn))
            event_type, result, hidden = commitment_result(self.archive, request, sites)
        except Exception:
            log.exception("storage commitment of %s: cannot check", peer.calling_aet)
            return
        if hidden:
            self.audit.denied(
                peer.calling_aet,
                peer.address,
                Action.STORE,
                "storage commitment asked for instances of sites it may not read",
                detail={"sop_uids": hidden[:100]},
            )
        threading.Event().wait(_PAUSE)
        if assoc.is_established:
            try:
                answer = assoc.send_n_event_report(
                    result, event_type, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
                )
                if answer[0] is not None and getattr(answer[0], "Status", 1) == 0:
                    return
            except Exception as exc:  # noqa: BLE001 - then sent later, as a job
                log.info("storage commitment report on the association failed: %s", exc)
        with self.archive.db.write() as conn:
            jobs.enqueue(
                conn,
                REPORT_JOB,
                {
                    "to": peer.calling_aet,
                    "event_type": event_type,
                    "result": result.to_json_dict(),
                },
                key=f"{REPORT_JOB}:{request.TransactionUID}",
            )


@jobs.handler(REPORT_JOB)
def send_report(archive: Archive, payload: dict[str, Any]) -> None:
    """Deliver a commitment result on a new association (we request, as its SCP)."""
    known = registry.find(archive.db, payload["to"])
    if known is None or known.host is None or known.port is None:
        raise jobs.PermanentFailure(f"{payload['to']} is not a known AE with an address")
    ae = AE(ae_title=archive.settings.ae_title)
    ae.add_requested_context(STORAGE_COMMITMENT)
    role = build_role(STORAGE_COMMITMENT, scu_role=False, scp_role=True)
    options = connect_options(archive, known)
    assoc = ae.associate(known.host, known.port, ae_title=known.ae_title, ext_neg=[role], **options)
    if not assoc.is_established:
        raise RuntimeError(f"cannot associate with {known.ae_title} at {known.host}:{known.port}")
    try:
        answer, _ = assoc.send_n_event_report(
            Dataset.from_json(payload["result"]),
            int(payload["event_type"]),
            STORAGE_COMMITMENT,
            STORAGE_COMMITMENT_INSTANCE,
        )
        if answer is None or getattr(answer, "Status", None) != 0:
            raise RuntimeError(f"{known.ae_title} did not take the commitment report: {answer}")
    finally:
        assoc.release()
