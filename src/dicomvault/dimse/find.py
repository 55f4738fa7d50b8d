"""C-FIND SCP (Patient Root and Study Root): the identifier becomes a `QueryRequest`.

The index answers through the same `query.search` as QIDO-RS, so matching
(universal, single value, wildcard, range, UID list; PS3.4 C.2.2.2) is one
implementation for both doors. Keys with a value are matching keys; every key
of the identifier is a return key, and a response carries only those.
Results are read a page at a time, so a C-CANCEL stops the query between pages
and a huge match never sits whole in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from sqlalchemy.exc import DBAPIError

from dicomvault.access.accounts import site_directory
from dicomvault.access.audit import AuditAction, Outcome
from dicomvault.access.ownership import study_owner
from dicomvault.access.policy import Action
from dicomvault.archive import Archive
from dicomvault.dimse.auditing import DimseAudit
from dicomvault.dimse.connections import peer_of
from dicomvault.dimse.policy import authorize, readable
from dicomvault.dimse.sop import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from dicomvault.dimse.store import NOT_AUTHORIZED, status
from dicomvault.errors import InvalidQuery
from dicomvault.model.levels import Level
from dicomvault.model.uids import is_valid_uid
from dicomvault.query import QueryRequest, search

__all__ = [
    "PATIENT_ROOT_FIND",
    "STUDY_ROOT_FIND",
    "FindHandler",
    "identifier_level",
    "query_request",
]

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
OUT_OF_RESOURCES = 0xA700
_PAGE = 500
_LEVEL_TAG = Tag(0x0008, 0x0052)
_CHARSET_TAG = Tag(0x0008, 0x0005)
_NOT_KEYS = {_LEVEL_TAG, _CHARSET_TAG}
_STUDY_UID_TAG = "0020000D"


def _match_value(value: Any) -> str:
    """An identifier value as the text `query.py` matches (multiple values: a UID list)."""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value)


def identifier_level(identifier: Dataset, *, patient_root: bool) -> Level:
    """The QueryRetrieveLevel of a C-FIND / C-MOVE / C-GET identifier; InvalidQuery when
    it is missing, unknown, or PATIENT in the Study Root model."""
    raw_level = str(identifier.get("QueryRetrieveLevel", "")).strip()
    try:
        level = Level(raw_level)
    except ValueError:
        raise InvalidQuery(
            f"QueryRetrieveLevel {raw_level!r} is not PATIENT/STUDY/SERIES/IMAGE"
        ) from None
    if level is Level.PATIENT and not patient_root:
        raise InvalidQuery("the Study Root model has no PATIENT level")
    return level


def query_request(identifier: Dataset, model: str) -> QueryRequest:
    """The `QueryRequest` an identifier describes; InvalidQuery when it describes none."""
    level = identifier_level(identifier, patient_root=model != STUDY_ROOT_FIND)
    request = QueryRequest(level=level)
    for element in identifier:
        if element.tag in _NOT_KEYS or element.VR == "SQ" or element.tag.group == 0x0002:
            continue
        tag = f"{element.tag:08X}"
        value = _match_value(element.value).strip()
        if value:
            request.filters[tag] = value
        else:
            request.include.add(tag)
    return request


def _response(match: dict[str, Any], identifier: Dataset, level: Level) -> Dataset:
    """The response identifier: the requested keys, with the values the index holds."""
    found = Dataset.from_json(match)
    out = Dataset()
    out.SpecificCharacterSet = "ISO_IR 192"
    for element in identifier:
        if element.tag in _NOT_KEYS or element.tag.group == 0x0002:
            continue
        held = found.get(element.tag)
        out[element.tag] = held if held is not None else DataElement(element.tag, element.VR, None)
    out.QueryRetrieveLevel = level.value
    return out


class FindHandler:
    """The EVT_C_FIND handler of one archive."""

    def __init__(self, archive: Archive, audit: DimseAudit) -> None:
        self.archive = archive
        self.audit = audit

    def __call__(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        peer = peer_of(event.assoc)
        decision = authorize(peer, Action.QUERY)
        if not decision:
            self.audit.denied(peer.calling_aet, peer.address, Action.QUERY, decision.reason)
            yield status(NOT_AUTHORIZED, decision.reason), None
            return
        identifier: Dataset = event.identifier
        try:
            request = query_request(identifier, str(event.request.AffectedSOPClassUID))
            with self.archive.db.read() as conn:
                request.sites = readable(peer, site_directory(conn))
        except InvalidQuery as exc:
            yield status(IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
            return
        except DBAPIError as exc:
            log.warning("C-FIND: index unavailable: %s", exc)
            yield status(OUT_OF_RESOURCES, "index unavailable, retry"), None
            return
        study_uid = request.filters.get(_STUDY_UID_TAG)
        study_uid = study_uid if study_uid and is_valid_uid(study_uid) else None
        owner = study_owner(self.archive.db, study_uid) if study_uid else None
        if owner is not None and request.sites is not None and owner.site not in request.sites:
            # Another site's study asked for by UID: it matches nothing, as if absent,
            # and the attempt is on the record (as a DICOMweb request for it would be).
            self.audit.denied(
                peer.calling_aet, peer.address, Action.QUERY,
                f"site {owner.site} is not one of {peer.principal.name}'s sites",
                study_uid=study_uid,
            )  # fmt: skip
        else:
            self.audit.done(
                peer,
                AuditAction.QUERY,
                Outcome.SUCCESS,
                study_uid=study_uid,
                patient_id=owner.patient_id if owner else None,
                detail={"level": request.level.value, "keys": dict(request.filters)},
            )
        yield from self._answer(event, identifier, request)

    def _answer(
        self, event: Any, identifier: Dataset, request: QueryRequest
    ) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        request.limit = _PAGE
        while True:
            if event.is_cancelled:
                yield CANCEL, None
                return
            try:
                page = search(self.archive.db, request, max_results=_PAGE)
            except InvalidQuery as exc:
                yield status(UNABLE_TO_PROCESS, str(exc)), None
                return
            except DBAPIError as exc:
                log.warning("C-FIND: index unavailable: %s", exc)
                yield status(OUT_OF_RESOURCES, "index unavailable, retry"), None
                return
            for match in page.matches:
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                yield PENDING, _response(match, identifier, request.level)
            if not page.more:
                return
            request.offset += _PAGE
