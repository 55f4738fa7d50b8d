"""STOW-RS (PS3.18 10.5): store instances sent as multipart/related; type="application/dicom".

The body is spooled part by part (bounded memory) and ingested only once the
closing boundary has arrived, so a truncated request stores nothing. The parts then
go through the one ingest function together (`Ingestor.ingest_many`: their objects
synced at once, their index rows in one transaction), on one worker thread; a request
of one part is also audited on that thread (one hop fewer: see `record_request`).

The routes are plain Starlette routes (`add_routes`) that pass the same access
guard as the others (`access.guard_at`, `access.admitted`): the per-instance request
of a modality or router is the most frequent request an archive serves, and
FastAPI's parameter and dependency handling cost it about 0.15 ms of CPU of 2.9
(docs/performance.md). They are therefore not in the generated OpenAPI description.

A small request (a declared length up to `READ_BEFORE_ADMIT`) is read before it is
admitted, and a single part is then admitted, stored and audited on one worker
thread: a trip fewer, 0.2 ms of CPU of 2.6 (docs/performance.md). Up to that size
the server holds no more of a caller it has not admitted than uvicorn buffers for
any connection before it stops reading (its flow control's high-water mark), and
the answers are the same: a caller the guard refuses gets its 401, 403 or 404
before any complaint about the body. Larger and chunked requests are admitted
before their body is read.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import IO, Any

import pydicom
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydicom.tag import Tag

from dicomvault.archive import Archive
from dicomvault.dicomweb.access import AccessContext, admitted, guard_at, record_request
from dicomvault.dicomweb.media import parse_media_type
from dicomvault.dicomweb.multipart import MultipartError, Part, close_parts, read_parts
from dicomvault.dicomweb.responses import DICOM_JSON, root_url
from dicomvault.dicomweb.threads import in_thread
from dicomvault.errors import (
    DuplicateConflict,
    InvalidInstance,
    InvalidUID,
    StorageError,
    StudyMismatch,
)
from dicomvault.ingest import IngestResult
from dicomvault.model.origin import Door, Origin
from dicomvault.model.status import FailureReason
from dicomvault.model.uids import is_valid_uid, require_uid

__all__ = ["READ_BEFORE_ADMIT", "add_routes"]

log = logging.getLogger(__name__)

# The largest request read before its caller is admitted (see the module doc):
# uvicorn's flow-control high-water mark, what it buffers of any connection.
READ_BEFORE_ADMIT = 64 * 1024

_RETRIEVE_URL = "00081190"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_SOP_CLASS = "00081150"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"
_SOP_CLASS_TAG = Tag(0x0008, 0x0016)
_SOP_INSTANCE_TAG = Tag(0x0008, 0x0018)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _reference(base: str, result: IngestResult) -> dict[str, Any]:
    return {
        _SOP_CLASS: {"vr": "UI", "Value": [result.sop_class_uid]},
        _SOP_INSTANCE: {"vr": "UI", "Value": [result.sop_uid]},
        _RETRIEVE_URL: {
            "vr": "UR",
            "Value": [
                f"{base}/studies/{result.study_uid}/series/{result.series_uid}"
                f"/instances/{result.sop_uid}"
            ],
        },
    }


def _failure(reason: FailureReason) -> dict[str, Any]:
    return {_FAILURE_REASON: {"vr": "US", "Value": [int(reason)]}}


def add_routes(app: FastAPI, prefix: str) -> None:
    """STOW-RS at `prefix`/studies and `prefix`/studies/{study} (see the module doc)."""
    for path in (prefix + "/studies", prefix + "/studies/{study}"):
        app.add_route(
            path, partial(store_instances, path=path), methods=["POST"], include_in_schema=False
        )


async def store_instances(request: Request, path: str) -> Response:
    """Store the parts of a multipart/related request (PS3.18 10.5) sent to the route
    whose path template is `path`. A small request is read before its caller is
    admitted (see the module doc)."""
    length = request.headers.get("content-length")
    admit_first = length is None or not length.isdigit() or int(length) > READ_BEFORE_ADMIT
    if admit_first:
        await guard_at(request, path)
    parts = await _read_request(request)
    if isinstance(parts, Response):
        if not admit_first:
            await guard_at(request, path)  # a refused caller hears of that, not the body
        return parts
    try:
        if len(parts) == 1 and not admit_first:
            body, status = await admitted(request, path, partial(_store_alone, request, parts[0]))
        elif len(parts) == 1:
            # One thread hop for the part and the request's audit record, not two.
            body, status = await in_thread(_store_alone, request, parts[0], request.state.access)
        else:
            if not admit_first:
                await guard_at(request, path)
            store = _store(request, request.state.access)
            body, status = _answer(store, await in_thread(store.parts, parts))
        return JSONResponse(body, status_code=status, media_type=DICOM_JSON)
    finally:
        close_parts(parts)


def _store(request: Request, context: AccessContext) -> _Store:
    """What the parts of `request` are stored with, for the caller admitted as `context`."""
    origin = Origin(
        Door.DICOMWEB,
        site=context.store_site,
        user=context.principal.name,
        address=request.client.host if request.client else None,
    )
    study: str | None = request.path_params.get("study")
    return _Store(
        request.app.state.archive, study, root_url(request), origin, context.stored_studies
    )


async def _read_request(request: Request) -> list[Part] | Response:
    """The request's parts, spooled, or the error response its headers or body earn."""
    settings = request.app.state.archive.settings
    study: str | None = request.path_params.get("study")
    if study is not None:
        try:
            require_uid(study, "StudyInstanceUID in the URL")
        except InvalidUID as exc:
            return _error(400, str(exc))
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_request_bytes:
        return _error(413, f"request body over the {settings.max_request_bytes}-byte limit")
    content_type = parse_media_type(request.headers.get("content-type", ""))
    if content_type.type != "multipart/related":
        return _error(415, 'send multipart/related; type="application/dicom"')
    part_type = content_type.params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        return _error(415, f"parts of type {part_type!r} are not supported; use application/dicom")
    boundary = content_type.params.get("boundary")
    if not boundary:
        return _error(400, "the multipart Content-Type has no boundary")
    try:
        parts = await read_parts(
            request.stream(),
            boundary,
            spool_bytes=settings.spool_memory_bytes,
            max_bytes=settings.max_request_bytes,
        )
    except MultipartError as exc:
        return _error(400, str(exc))
    except OverflowError as exc:
        return _error(413, str(exc))
    except OSError as exc:  # no room or no descriptor left to spool a part: try later
        log.error("STOW-RS upload could not be spooled: %s", exc)
        return _error(503, f"the upload could not be spooled: {exc.strerror or exc}")
    if not parts:
        return _error(400, "the multipart body has no parts")
    return parts


class _Kind(Enum):
    STORED = "stored"
    REFUSED = "refused"  # the part is at fault: 400
    CONFLICT = "conflict"  # it clashes with what is stored: 409
    SERVER = "server"  # the archive could not keep it: 503


@dataclass(frozen=True, slots=True)
class _PartOutcome:
    kind: _Kind
    item: dict[str, Any]  # a ReferencedSOPSequence or FailedSOPSequence item


@dataclass(frozen=True, slots=True)
class _Store:
    """What every part of one request is stored with."""

    archive: Archive
    study: str | None  # the study the URL names, if any
    base: str  # the root URL the RetrieveURLs start from
    origin: Origin
    stored_studies: dict[str, str]  # filled in: study UID -> patient ID

    def part(self, number: int, part: Part) -> _PartOutcome:
        """Ingest one part (blocking: on a worker thread); its sequence item."""
        return self.parts([part], first=number)[0]

    def parts(self, parts: list[Part], first: int = 1) -> list[_PartOutcome]:
        """Ingest the parts together (blocking: on a worker thread); their sequence
        items, in order. `first`: the number of the first part, for messages."""
        outcomes: list[_PartOutcome | None] = [None] * len(parts)
        dicom = []
        for number, part in enumerate(parts, start=first):
            if part.content_type in ("", "application/dicom"):
                dicom.append((number, part))
                continue
            reason = f"part {number} is {part.content_type}, not application/dicom"
            outcomes[number - first] = _PartOutcome(
                _Kind.REFUSED, _failure(FailureReason.CANNOT_UNDERSTAND) | _comment(reason)
            )
        ingested = self.archive.ingestor.ingest_many(
            [part.file for _, part in dicom], expected_study_uid=self.study, origin=self.origin
        )
        for (number, part), result in zip(dicom, ingested, strict=True):
            if isinstance(result, Exception):
                outcomes[number - first] = _failed(number, part, result)
            else:
                self.stored_studies[result.study_uid] = result.patient_id
                outcomes[number - first] = _PartOutcome(_Kind.STORED, _reference(self.base, result))
        return [outcome for outcome in outcomes if outcome is not None]


def _store_alone(
    request: Request, part: Part, context: AccessContext
) -> tuple[dict[str, Any], int]:
    """A request's only part stored, and the request audited, on one worker thread."""
    store = _store(request, context)
    body, status = _answer(store, [store.part(1, part)])
    record_request(request.scope, status)
    return body, status


def _answer(store: _Store, outcomes: list[_PartOutcome]) -> tuple[dict[str, Any], int]:
    """The response body (PS3.18 10.5.3) and status for the parts' outcomes."""
    stored = [o.item for o in outcomes if o.kind is _Kind.STORED]
    failed = [o.item for o in outcomes if o.kind is not _Kind.STORED]
    kinds = Counter(o.kind for o in outcomes)
    body: dict[str, Any] = {}
    if store.study is not None:
        body[_RETRIEVE_URL] = {"vr": "UR", "Value": [f"{store.base}/studies/{store.study}"]}
    if failed:
        body[_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if stored:
        body[_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": stored}
    status = _status(len(stored), len(failed), kinds[_Kind.CONFLICT], kinds[_Kind.SERVER])
    return body, status


def _failed(number: int, part: Part, exc: Exception) -> _PartOutcome:
    """The FailedSOPSequence item for a part the ingest refused with `exc`."""
    if isinstance(exc, InvalidInstance):
        log.info("STOW-RS part refused: %s", exc)
        kind, reason, text = _Kind.REFUSED, FailureReason.CANNOT_UNDERSTAND, str(exc)
    elif isinstance(exc, StudyMismatch):
        kind, reason, text = _Kind.CONFLICT, FailureReason.DATASET_DOES_NOT_MATCH, str(exc)
    elif isinstance(exc, DuplicateConflict):
        kind, reason, text = _Kind.CONFLICT, FailureReason.DUPLICATE_SOP_INSTANCE, str(exc)
    elif isinstance(exc, StorageError):
        log.error("STOW-RS storage failure: %s", exc)
        kind, reason, text = _Kind.SERVER, FailureReason.OUT_OF_RESOURCES, str(exc)
    else:
        log.error("STOW-RS part %d failed unexpectedly", number, exc_info=exc)
        kind, reason = _Kind.SERVER, FailureReason.PROCESSING_FAILURE
        text = f"part {number} could not be processed (server error)"
    return _PartOutcome(kind, _failure(reason) | _identity(part.file) | _comment(text))


def _status(stored: int, failed: int, conflicts: int, server_errors: int) -> int:
    """PS3.18 10.5.3: all stored 200, some 202; none: 409 conflicts, 400 bad parts, else 503."""
    if not failed:
        return 200
    if stored:
        return 202
    if conflicts == failed:
        return 409
    if server_errors == failed:
        return 503  # the parts may be fine; the archive could not keep them
    return 400


def _identity(fp: IO[bytes]) -> dict[str, Any]:
    """The part's SOP Class and Instance UIDs for its FailedSOPSequence item, when readable.

    PS3.18 10.5.3 lets a client match each failure to what it sent; a part too damaged
    to name itself (or naming itself with malformed UIDs) gets no references.
    """
    try:
        fp.seek(0)
        ds = pydicom.dcmread(
            fp, stop_before_pixels=True, specific_tags=[_SOP_CLASS_TAG, _SOP_INSTANCE_TAG]
        )
        found = {
            _SOP_CLASS: str(ds.get("SOPClassUID", "")),
            _SOP_INSTANCE: str(ds.get("SOPInstanceUID", "")),
        }
    except Exception:  # noqa: BLE001 - an unreadable part simply names nothing
        return {}
    return {
        tag: {"vr": "UI", "Value": [value]} for tag, value in found.items() if is_valid_uid(value)
    }


def _comment(text: str) -> dict[str, Any]:
    # ErrorComment (0000,0902) carries the human-readable reason alongside the code,
    # whole: a clear reason matters more here than LO's nominal 64 characters.
    return {"00000902": {"vr": "LO", "Value": [text]}}
