"""C-STORE SCP: each received instance goes, as received, through the one ingest function.

pynetdicom hands over the dataset exactly as the peer encoded it (compressed pixel
data stays compressed, a deflated dataset stays deflated). The door adds the Part 10
file meta that the presentation context implies and calls `Ingestor.ingest`; pixels
are never decoded. Archive errors become C-STORE statuses (PS3.4 B.2.3, PS3.7 C):
the peer learns whether to retry (0xA700) or not (0xA900, 0xC000).
"""

from __future__ import annotations

import logging
from io import BytesIO
from tempfile import TemporaryFile
from typing import IO, Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy.exc import DBAPIError

from dicomvault.access.policy import Action
from dicomvault.archive import Archive
from dicomvault.dimse.auditing import DimseAudit
from dicomvault.dimse.connections import peer_of
from dicomvault.dimse.policy import authorize
from dicomvault.errors import DuplicateConflict, InvalidInstance, StorageError, StudyMismatch
from dicomvault.ingest import Outcome
from dicomvault.model.origin import Door, Origin
from dicomvault.model.status import FailureReason

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION", "StoreHandler", "status"]

log = logging.getLogger(__name__)

IMPLEMENTATION_CLASS_UID = UID("1.2.826.0.1.3680043.8.498.1.20240115.1")
IMPLEMENTATION_VERSION = "DICOMVAULT_01"
SUCCESS = 0x0000
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5: Refused: Not Authorized
_COMMENT_LIMIT = 64  # Error Comment (0000,0902) is LO


def status(code: int, comment: str | None = None) -> Dataset:
    """A status dataset; the comment, clipped to what LO holds, says why to a human."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment.replace("\\", "/")[:_COMMENT_LIMIT]
    return ds


def part10(
    sop_class: str, sop_instance: str, transfer_syntax: str, dataset: memoryview, spool: int
) -> IO[bytes]:
    """The Part 10 file of a received dataset: preamble, file meta, the bytes as received.

    `dataset` is a view of the bytes pynetdicom gathered, not a copy of them. Up to
    `spool` bytes, the file is one bytes object (one copy; pydicom then reads it through
    C calls); a larger dataset goes to a temporary file, so that a large instance is
    not held twice in memory."""
    head = b"\x00" * 128 + b"DICM" + file_meta(sop_class, sop_instance, transfer_syntax)
    if len(head) + len(dataset) <= spool:
        return BytesIO(b"".join((head, dataset)))
    fp: IO[bytes] = TemporaryFile()  # noqa: SIM115 - handed to the caller
    fp.write(head)
    fp.write(dataset)
    fp.seek(0)
    return fp


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """The File Meta Information group (PS3.10 7.1), encoded directly: it is written for
    every received instance, and pydicom's general writer costs more than the rest of
    the wrapping. The UIDs come from the peer's command; ingest checks them against
    the dataset's own."""
    body = b"".join(
        (
            b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01",  # version 00 01
            _short(0x0002, "UI", _uid(sop_class)),
            _short(0x0003, "UI", _uid(sop_instance)),
            _short(0x0010, "UI", _uid(transfer_syntax)),
            _short(0x0012, "UI", _uid(IMPLEMENTATION_CLASS_UID)),
            _short(0x0013, "SH", _padded(IMPLEMENTATION_VERSION.encode(), b" ")),
        )
    )
    return _short(0x0000, "UL", len(body).to_bytes(4, "little")) + body


def _short(element: int, vr: str, value: bytes) -> bytes:
    """A group 0002 element with a 2-byte length, explicit VR little endian."""
    return (
        b"\x02\x00"
        + element.to_bytes(2, "little")
        + vr.encode()
        + len(value).to_bytes(2, "little")
        + value
    )


def _uid(value: str) -> bytes:
    encoded = value.encode("ascii", errors="replace")
    return _padded(encoded, b"\x00")


def _padded(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


class StoreHandler:
    """The EVT_C_STORE handler of one archive."""

    def __init__(self, archive: Archive, audit: DimseAudit) -> None:
        self.archive = archive
        self.audit = audit

    def __call__(self, event: Any) -> Dataset:
        peer = peer_of(event.assoc)
        request = event.request
        sop_uid = str(request.AffectedSOPInstanceUID)
        decision = authorize(peer, Action.STORE)
        if not decision:
            self.audit.denied(
                peer.calling_aet, peer.address, Action.STORE, decision.reason,
                detail={"sop_uid": sop_uid},
            )  # fmt: skip
            return status(NOT_AUTHORIZED, decision.reason)
        origin = Origin(
            door=Door.DIMSE, site=peer.site, calling_aet=peer.calling_aet, address=peer.address
        )
        answer, study_uid = self._store(event, sop_uid, origin)
        if answer.Status == NOT_AUTHORIZED:  # into a study of another site
            self.audit.denied(
                peer.calling_aet, peer.address, Action.STORE, str(answer.ErrorComment),
                detail={"sop_uid": sop_uid},
            )  # fmt: skip
        else:
            self.audit.stored(event.assoc, peer, study_uid, answer.Status == SUCCESS)
        return answer

    def _store(self, event: Any, sop_uid: str, origin: Origin) -> tuple[Dataset, str | None]:
        """The C-STORE status, and the study stored into (None when nothing was)."""
        request = event.request
        try:
            with (
                request.DataSet.getbuffer() as dataset,
                part10(
                    str(request.AffectedSOPClassUID),
                    sop_uid,
                    str(event.context.transfer_syntax),
                    dataset,
                    self.archive.settings.spool_memory_bytes,
                ) as fp,
            ):
                result = self.archive.ingestor.ingest(fp, origin=origin)
        except StudyMismatch as exc:
            log.info("C-STORE of %s from %s refused: %s", sop_uid, origin.calling_aet, exc)
            return status(NOT_AUTHORIZED, str(exc)), None
        except InvalidInstance as exc:
            log.info("C-STORE of %s from %s refused: %s", sop_uid, origin.calling_aet, exc)
            return status(FailureReason.CANNOT_UNDERSTAND, str(exc)), None
        except DuplicateConflict as exc:
            log.info("C-STORE of %s from %s refused: %s", sop_uid, origin.calling_aet, exc)
            return status(
                FailureReason.DATASET_DOES_NOT_MATCH, "different data under a stored UID"
            ), None
        except (StorageError, DBAPIError) as exc:
            log.warning("C-STORE of %s: archive unavailable: %s", sop_uid, exc)
            return status(
                FailureReason.OUT_OF_RESOURCES, "archive storage unavailable, retry"
            ), None
        except Exception:
            log.exception("C-STORE of %s failed", sop_uid)
            return status(FailureReason.PROCESSING_FAILURE, "processing failure"), None
        if result.outcome is Outcome.DUPLICATE:
            # An identical instance again: stored already, so success, as the peer may
            # safely delete its copy; the comment tells a human nothing new was written.
            return status(SUCCESS, "identical instance already stored"), result.study_uid
        return status(SUCCESS), result.study_uid
