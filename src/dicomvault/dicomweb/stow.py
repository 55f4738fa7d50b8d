"""STOW-RS (PS3.18 10.5): store instances sent as multipart/related; type="application/dicom".

The body is spooled part by part (bounded memory) and ingested only once the
closing boundary has arrived, so a truncated request stores nothing. Each part
then goes through the one ingest function on a worker thread.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from dicomvault.archive import Archive
from dicomvault.dicomweb.access import AccessContext
from dicomvault.dicomweb.media import parse_media_type
from dicomvault.dicomweb.multipart import MultipartError, Part, close_parts, read_parts
from dicomvault.dicomweb.responses import DICOM_JSON, root_url
from dicomvault.errors import (
    DuplicateConflict,
    InvalidInstance,
    StorageError,
    StudyMismatch,
)
from dicomvault.ingest import IngestResult
from dicomvault.model.origin import Door, Origin
from dicomvault.model.status import FailureReason
from dicomvault.model.uids import require_uid

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter()

_RETRIEVE_URL = "00081190"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_SOP_CLASS = "00081150"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"


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


@router.post("/studies")
@router.post("/studies/{study}")
async def store_instances(request: Request, study: str | None = None) -> Response:
    archive: Archive = request.app.state.archive
    settings = archive.settings
    if study is not None:
        require_uid(study, "StudyInstanceUID in the URL")
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
    if not parts:
        return _error(400, "the multipart body has no parts")
    try:
        context: AccessContext = request.state.access
        origin = Origin(
            Door.DICOMWEB,
            site=context.store_site,
            user=context.principal.name,
            address=request.client.host if request.client else None,
        )
        return await _store_parts(
            archive, parts, study, root_url(request), origin, context.stored_studies
        )
    finally:
        close_parts(parts)


async def _store_parts(
    archive: Archive,
    parts: list[Part],
    study: str | None,
    base: str,
    origin: Origin,
    stored_studies: set[str],
) -> Response:
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    conflicts = server_errors = 0
    for number, part in enumerate(parts, start=1):
        if part.content_type not in ("", "application/dicom"):
            reason = f"part {number} is {part.content_type}, not application/dicom"
            failed.append(_failure(FailureReason.CANNOT_UNDERSTAND) | _comment(reason))
            continue
        try:
            result = await run_in_threadpool(
                archive.ingestor.ingest, part.file, expected_study_uid=study, origin=origin
            )
        except InvalidInstance as exc:
            log.info("STOW-RS part refused: %s", exc)
            failed.append(_failure(FailureReason.CANNOT_UNDERSTAND) | _comment(str(exc)))
        except StudyMismatch as exc:
            failed.append(_failure(FailureReason.DATASET_DOES_NOT_MATCH) | _comment(str(exc)))
            conflicts += 1
        except DuplicateConflict as exc:
            failed.append(_failure(FailureReason.DUPLICATE_SOP_INSTANCE) | _comment(str(exc)))
            conflicts += 1
        except StorageError as exc:
            log.error("STOW-RS storage failure: %s", exc)
            failed.append(_failure(FailureReason.OUT_OF_RESOURCES) | _comment(str(exc)))
            server_errors += 1
        except Exception:  # one part's failure must not hide the others' outcomes
            log.exception("STOW-RS part %d failed unexpectedly", number)
            failed.append(
                _failure(FailureReason.PROCESSING_FAILURE)
                | _comment(f"part {number} could not be processed (server error)")
            )
            server_errors += 1
        else:
            stored.append(_reference(base, result))
            stored_studies.add(result.study_uid)

    body: dict[str, Any] = {}
    if study is not None:
        body[_RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    if failed:
        body[_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if stored:
        body[_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": stored}
    return JSONResponse(
        body,
        status_code=_status(len(stored), len(failed), conflicts, server_errors),
        media_type=DICOM_JSON,
    )


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


def _comment(text: str) -> dict[str, Any]:
    # ErrorComment (0000,0902) carries the human-readable reason alongside the code,
    # whole: a clear reason matters more here than LO's nominal 64 characters.
    return {"00000902": {"vr": "LO", "Value": [text]}}
