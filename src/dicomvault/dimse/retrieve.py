"""C-MOVE and C-GET SCP (Patient Root, Study Root): stored instances sent as C-STORE
sub-operations, to a known AE (C-MOVE) or back over the same association (C-GET).

The identifier's unique keys (PS3.4 C.4.2.2.1: PatientID, StudyInstanceUID,
SeriesInstanceUID, SOPInstanceUID, each a single value or a UID list) are matched by
`retrieve.match_instances`, the lookup WADO-RS and `dicomvault send` use. Studies of
sites the peer may not read are left out and each is audited as a refusal; when
nothing readable remains the answer is a failure, the same whether the study is
another site's or does not exist, so the peer learns nothing of other sites.

Instances are sent as stored (compressed pixels stay compressed). A peer that did
not accept the stored transfer syntax but accepted an uncompressed one for the SOP
class gets the instance decompressed (`retrieve.transcode`). Every object is read
checksum-verified; one that fails the check is a failed sub-operation, named in the
Failed SOP Instance UID List, and the others still go. pynetdicom counts the
sub-operations and sends the pending responses; a C-CANCEL stops between instances.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import evt
from pynetdicom.presentation import PresentationContext, build_context
from sqlalchemy.exc import DBAPIError

from dicomvault.access.accounts import site_directory
from dicomvault.access.audit import AuditAction, Outcome
from dicomvault.access.ownership import study_owners
from dicomvault.access.policy import Action
from dicomvault.archive import Archive
from dicomvault.dimse import registry
from dicomvault.dimse.auditing import DimseAudit
from dicomvault.dimse.connections import peer_of
from dicomvault.dimse.find import identifier_level
from dicomvault.dimse.outbound import (
    accepted_syntaxes,
    connect_options,
    fitted_dataset,
    proposed_contexts,
)
from dicomvault.dimse.policy import Peer, authorize, readable
from dicomvault.dimse.sop import PATIENT_ROOT_GET, PATIENT_ROOT_MOVE, VERIFICATION
from dicomvault.dimse.store import NOT_AUTHORIZED, status
from dicomvault.errors import InvalidQuery
from dicomvault.model.levels import Level
from dicomvault.retrieve import StoredInstance, match_instances

__all__ = ["GetHandler", "MoveHandler", "RetrieveKeys", "retrieve_keys"]

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00
MOVE_DESTINATION_UNKNOWN = 0xA801
TOO_MANY_MATCHES = 0xA701  # out of resources: unable to calculate number of matches
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
OUT_OF_RESOURCES = 0xA700
MAX_SUBOPERATIONS = 65535  # the sub-operation counts are US
_PATIENT_ROOT = (PATIENT_ROOT_MOVE, PATIENT_ROOT_GET)
_UNIQUE_KEYS = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.INSTANCE: "SOPInstanceUID",
}
_ORDER = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE)


@dataclass
class RetrieveKeys:
    """What a C-MOVE / C-GET identifier asks for: unique keys, each a list of values."""

    level: Level
    patient_ids: list[str] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)
    sop_uids: list[str] = field(default_factory=list)


def _values(identifier: Dataset, keyword: str) -> list[str]:
    """A key's values: one, or a UID list (pydicom gives a MultiValue or a `\\` string)."""
    raw = identifier.get(keyword)
    if raw is None:
        return []
    values = (
        raw.split("\\")
        if isinstance(raw, str)
        else list(raw)
        if isinstance(raw, MultiValue | list)
        else [raw]
    )
    return [str(v).strip() for v in values if str(v).strip()]


def retrieve_keys(identifier: Dataset, model: str) -> RetrieveKeys:
    """The unique keys of a retrieve identifier; InvalidQuery when the level's key is
    missing (PS3.4 C.4.2.2.1: a retrieve names what it wants by unique keys)."""
    level = identifier_level(identifier, patient_root=model in _PATIENT_ROOT)
    keys = RetrieveKeys(
        level,
        patient_ids=_values(identifier, "PatientID"),
        study_uids=_values(identifier, "StudyInstanceUID"),
        series_uids=_values(identifier, "SeriesInstanceUID"),
        sop_uids=_values(identifier, "SOPInstanceUID"),
    )
    wanted = {
        Level.PATIENT: keys.patient_ids,
        Level.STUDY: keys.study_uids,
        Level.SERIES: keys.series_uids,
        Level.INSTANCE: keys.sop_uids,
    }
    if not wanted[level]:
        raise InvalidQuery(f"a {level.value} level retrieve needs {_UNIQUE_KEYS[level]}")
    for deeper in _ORDER[_ORDER.index(level) + 1 :]:
        if wanted[deeper]:
            raise InvalidQuery(f"{_UNIQUE_KEYS[deeper]} is below the {level.value} level")
    return keys


@dataclass
class _Plan:
    instances: list[StoredInstance]
    studies: dict[str, tuple[str | None, int]]  # study UID -> (patient ID, instances)


class _Retrieve:
    """What C-MOVE and C-GET share: who may, which instances, how each is sent."""

    def __init__(self, archive: Archive, audit: DimseAudit) -> None:
        self.archive = archive
        self.audit = audit

    def plan(self, event: Any, peer: Peer) -> _Plan | Dataset:
        """The instances to send, or the failure status to answer with."""
        decision = authorize(peer, Action.RETRIEVE)
        if not decision:
            self.audit.denied(peer.calling_aet, peer.address, Action.RETRIEVE, decision.reason)
            return status(NOT_AUTHORIZED, decision.reason)
        try:
            keys = retrieve_keys(event.identifier, str(event.request.AffectedSOPClassUID))
        except InvalidQuery as exc:
            return status(IDENTIFIER_DOES_NOT_MATCH, str(exc))
        except Exception as exc:  # noqa: BLE001 - an identifier pydicom cannot decode
            return status(IDENTIFIER_DOES_NOT_MATCH, f"cannot read the identifier: {exc}")
        try:
            found = match_instances(
                self.archive.db,
                patient_ids=keys.patient_ids,
                study_uids=keys.study_uids,
                series_uids=keys.series_uids,
                sop_uids=keys.sop_uids,
                limit=MAX_SUBOPERATIONS + 1,
            )
            owners = study_owners(self.archive.db, {i.study_uid for i in found})
            with self.archive.db.read() as conn:
                sites = readable(peer, site_directory(conn))
        except DBAPIError as exc:
            log.warning("C-MOVE/C-GET: index unavailable: %s", exc)
            return status(OUT_OF_RESOURCES, "index unavailable, retry")
        allowed: list[StoredInstance] = []
        studies: dict[str, tuple[str | None, int]] = {}
        for instance in found:
            owner = owners.get(instance.study_uid)
            site = owner.site if owner else None
            if sites is not None and site not in sites:
                if instance.study_uid not in studies:
                    studies[instance.study_uid] = (None, -1)
                    self.audit.denied(
                        peer.calling_aet,
                        peer.address,
                        Action.RETRIEVE,
                        f"site {site} is not one of {peer.principal.name}'s sites",
                        study_uid=instance.study_uid,
                    )
                continue
            allowed.append(instance)
            patient, count = studies.get(instance.study_uid, (None, 0))
            studies[instance.study_uid] = (owner.patient_id if owner else patient, count + 1)
        studies = {uid: entry for uid, entry in studies.items() if entry[1] >= 0}
        if not allowed:
            return status(UNABLE_TO_PROCESS, "no matching instances")
        if len(allowed) > MAX_SUBOPERATIONS:
            return status(TOO_MANY_MATCHES, f"over {MAX_SUBOPERATIONS} instances: ask for less")
        return _Plan(allowed, studies)

    def record(self, peer: Peer, plan: _Plan, detail: dict[str, Any]) -> None:
        for study_uid, (patient_id, count) in sorted(plan.studies.items()):
            self.audit.done(
                peer,
                AuditAction.RETRIEVE,
                Outcome.SUCCESS,
                study_uid=study_uid,
                patient_id=patient_id,
                detail={"instances": count, **detail},
            )

    def sub_operations(
        self, event: Any, plan: _Plan, accepted: list[PresentationContext]
    ) -> Iterator[tuple[int, Dataset | None]]:
        """(Pending, dataset) per instance, fitted to the accepted presentation contexts."""
        syntaxes = accepted_syntaxes(accepted)
        for instance in plan.instances:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield (
                PENDING,
                fitted_dataset(self.archive, instance, syntaxes.get(instance.sop_class_uid, set())),
            )


class MoveHandler(_Retrieve):
    """The EVT_C_MOVE handler: sends to the Move Destination, a known AE.

    pynetdicom asks for the destination first, then the number of sub-operations, and
    associates with the destination before reading any status. So an unknown
    destination is 0xA801 before anything else, and a refusal found later (not
    authorized, nothing matches) is reported as the one result after an association
    to the (known) destination that carries nothing.
    """

    def __call__(self, event: Any) -> Iterator[Any]:
        peer = peer_of(event.assoc)
        destination_title = str(event.move_destination).strip()
        try:
            destination = registry.find(self.archive.db, destination_title)
        except DBAPIError:
            destination = None
        if destination is None or destination.host is None or destination.port is None:
            log.info("C-MOVE from %s: unknown destination %r", peer.calling_aet, destination_title)
            yield None, None  # 0xA801 Move Destination unknown
            return
        plan = self.plan(event, peer)
        instances = plan.instances if isinstance(plan, _Plan) else []
        captured: list[Any] = []

        def established(store_event: Any) -> None:
            captured.append(store_event.assoc)

        options = connect_options(self.archive, destination)
        options["contexts"] = proposed_contexts(instances) or [build_context(VERIFICATION)]
        options["evt_handlers"].append((evt.EVT_ESTABLISHED, established))
        yield destination.host, destination.port, options
        if isinstance(plan, Dataset):
            yield 1
            yield plan, None
            return
        self.record(peer, plan, {"destination": destination_title})
        yield len(plan.instances)
        accepted = captured[0].accepted_contexts if captured else []
        yield from self.sub_operations(event, plan, accepted)


class GetHandler(_Retrieve):
    """The EVT_C_GET handler: sends back over the requesting association."""

    def __call__(self, event: Any) -> Iterator[Any]:
        peer = peer_of(event.assoc)
        plan = self.plan(event, peer)
        if isinstance(plan, Dataset):
            # With zero sub-operations pynetdicom answers success at once; a failure
            # is sent as the only result instead.
            yield 1
            yield plan, None
            return
        self.record(peer, plan, {"over": "c-get"})
        yield len(plan.instances)
        # The contexts in which the requestor accepted the Storage SCP role.
        accepted = [cx for cx in event.assoc.accepted_contexts if cx.as_scu]
        yield from self.sub_operations(event, plan, accepted)
