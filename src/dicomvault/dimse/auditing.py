"""The DIMSE door's audit records: the same trail and event codes as the HTTP door.

- A refusal (association rejected, an operation not permitted, a study of another
  site asked for) is one `permission-denied` record, written at once.
- A C-FIND is one `query` record; a C-MOVE or C-GET one `retrieve` record per study.
- C-STOREs are tallied per association and written when it ends, one `store` record
  per study with the number of instances (as DICOM audit messages describe "DICOM
  Instances Transferred": per study and association), and every `FLUSH_EVERY`
  instances of a study for a long association, so a crash loses at most that many.
  A modality sending a thousand instances makes a few records, not a thousand
  hash-chained appends on its hot path.

Writing a record never breaks the operation it describes: a failure is logged.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from dicomvault.access.audit import AuditAction, AuditEvent, Outcome
from dicomvault.access.ownership import study_owners
from dicomvault.access.policy import Action
from dicomvault.access.sinks import Auditor
from dicomvault.dimse.policy import Peer

__all__ = ["DimseAudit"]

log = logging.getLogger(__name__)

DOOR = "dimse"
FLUSH_EVERY = 500  # C-STOREs of one study after which a long association's record is written


@dataclass
class _Tally:
    stored: int = 0
    failed: int = 0


class DimseAudit:
    """Audit records of one DICOM node."""

    def __init__(self, auditor: Auditor) -> None:
        self.auditor = auditor
        self._lock = threading.Lock()
        self._stores: weakref.WeakKeyDictionary[Any, tuple[Peer, dict[str, _Tally]]] = (
            weakref.WeakKeyDictionary()
        )

    def _write(self, event: AuditEvent) -> None:
        try:
            self.auditor.record(event)
        except Exception:
            log.exception("DICOM audit record not written: %s %s", event.action, event.actor)

    def _owner_patient(self, study_uid: str | None) -> str | None:
        if study_uid is None:
            return None
        try:
            owner = study_owners(self.auditor.db, [study_uid]).get(study_uid)
        except Exception:  # noqa: BLE001 - the record is written without the patient
            return None
        return owner.patient_id if owner else None

    def denied(
        self,
        actor: str,
        address: str | None,
        wanted: Action | None,
        reason: str,
        *,
        study_uid: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """A refusal: association rejected (`wanted` None) or an operation not permitted."""
        self._write(
            AuditEvent(
                actor=actor or "unknown",
                actor_kind="ae",
                door=DOOR,
                action=AuditAction.PERMISSION_DENIED,
                outcome=Outcome.DENIED,
                address=address,
                patient_id=self._owner_patient(study_uid),
                study_uid=study_uid,
                detail={
                    "reason": reason,
                    "wanted": wanted.value if wanted else "associate",
                    **(detail or {}),
                },
            )
        )

    def done(
        self,
        peer: Peer,
        action: AuditAction,
        outcome: Outcome,
        *,
        study_uid: str | None = None,
        patient_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """One completed (or failed) query or retrieval."""
        if patient_id is None:
            patient_id = self._owner_patient(study_uid)
        self._write(
            AuditEvent(
                actor=peer.principal.name,
                actor_kind="ae",
                door=DOOR,
                action=action,
                outcome=outcome,
                address=peer.address,
                patient_id=patient_id,
                study_uid=study_uid,
                detail={"calling_aet": peer.calling_aet, **(detail or {})},
            )
        )

    def stored(self, assoc: Any, peer: Peer, study_uid: str | None, ok: bool) -> None:
        """Count one C-STORE of `assoc` (written by `association_ended`)."""
        key = study_uid or ""
        with self._lock:
            entry = self._stores.get(assoc)
            if entry is None:
                entry = (peer, {})
                self._stores[assoc] = entry
            tally = entry[1].setdefault(key, _Tally())
            if ok:
                tally.stored += 1
            else:
                tally.failed += 1
            full = tally.stored + tally.failed >= FLUSH_EVERY
            if full:
                del entry[1][key]
        if full:  # a long association: record what it stored so far
            self._write_stores(peer, {key: tally})

    def association_ended(self, assoc: Any) -> None:
        """Write the store records of an association that has ended."""
        with self._lock:
            entry = self._stores.pop(assoc, None)
        if entry is None:
            return
        peer, tallies = entry
        self._write_stores(peer, tallies)

    def _write_stores(self, peer: Peer, tallies: dict[str, _Tally]) -> None:
        try:
            owners = study_owners(self.auditor.db, [uid for uid in tallies if uid])
        except Exception:  # noqa: BLE001 - the records are written without the patients
            owners = {}
        for study_uid, tally in sorted(tallies.items()):
            owner = owners.get(study_uid)
            self.done(
                peer,
                AuditAction.STORE,
                Outcome.SUCCESS if tally.failed == 0 else Outcome.FAILURE,
                study_uid=study_uid or None,
                patient_id=owner.patient_id if owner else None,
                detail={"instances": tally.stored, "failed": tally.failed},
            )
