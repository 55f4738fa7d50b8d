"""WADO-RS (PS3.18 10.4): retrieve instances (multipart/related application/dicom) and metadata.

Transfer syntax negotiation: `transfer-syntax=*` returns each instance as stored;
a named syntax is served as stored when it matches, else transcoded (explicit
and implicit VR little endian, JPEG-LS, RLE and JPEG 2000 lossless); no
parameter means explicit VR little endian, the standard's default.
"""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydicom.uid import ExplicitVRLittleEndian

from dicomvault.archive import Archive
from dicomvault.dicomweb.media import parse_accept
from dicomvault.dicomweb.multipart import new_boundary
from dicomvault.dicomweb.responses import json_text_response, root_url
from dicomvault.dicomweb.streaming import PartSource, content_length, started, stream_parts
from dicomvault.dicomweb.threads import in_thread
from dicomvault.errors import NotAcceptable
from dicomvault.model.transfer_syntax import TRANSCODE_TARGETS
from dicomvault.model.uids import require_uid
from dicomvault.retrieve import (
    WHOLE_READ_LIMIT,
    StoredInstance,
    find_instances,
    headers_json,
    instance_bytes,
    transcode,
)
from dicomvault.storage import ObjectStore

__all__ = ["router"]

router = APIRouter()

ANY_SYNTAX = "*"


def negotiate_transfer_syntax(accept: str | None) -> str:
    """The transfer syntax to send for an Accept header; NotAcceptable if none fits."""
    for media in parse_accept(accept):
        if media.type == "multipart/related":
            if media.params.get("type", "application/dicom").lower() != "application/dicom":
                continue
        elif not media.matches("multipart/related") and media.type != "application/dicom":
            continue
        syntax = media.params.get("transfer-syntax", ExplicitVRLittleEndian)
        if syntax == ANY_SYNTAX or syntax in TRANSCODE_TARGETS:
            return syntax
    raise NotAcceptable(
        'retrieve accepts multipart/related; type="application/dicom" with transfer-syntax '
        "* or one of: " + ", ".join(sorted(TRANSCODE_TARGETS))
    )


def _sources(store: ObjectStore, found: list[StoredInstance], syntax: str) -> list[PartSource]:
    sources = []
    for instance in found:
        small = instance.size <= WHOLE_READ_LIMIT
        if syntax in (ANY_SYNTAX, instance.transfer_syntax):
            sources.append(
                PartSource(
                    f"application/dicom; transfer-syntax={instance.transfer_syntax}",
                    partial(instance_bytes, store, instance),
                    held=small,
                    size=instance.size,
                )
            )
        else:
            sources.append(
                PartSource(
                    f"application/dicom; transfer-syntax={syntax}",
                    partial(_transcoded, store, instance, syntax),
                    held=small,
                )
            )
    return sources


def _transcoded(store: ObjectStore, instance: StoredInstance, syntax: str) -> tuple[bytes]:
    return (transcode(store, instance, syntax),)


async def _retrieve(
    request: Request, study: str, series: str | None = None, sop: str | None = None
) -> Response:
    archive: Archive = request.app.state.archive
    syntax = negotiate_transfer_syntax(request.headers.get("accept"))
    found = await in_thread(find_instances, archive.db, *_uids(study, series, sop))
    sources = _sources(archive.store, found, syntax)
    boundary = new_boundary()
    # The first part is read (and, up to WHOLE_READ_LIMIT, checked) before the status line
    # goes out, so a damaged single instance is a 503, not a transfer cut in the middle.
    # Later parts of a study can only abort the transfer: the status is already sent (and
    # with a Content-Length, the client sees the body end short).
    body = await started(stream_parts(boundary, sources))
    length = content_length(boundary, sources)
    return StreamingResponse(
        body,
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        headers=None if length is None else {"Content-Length": str(length)},
    )


def _uids(study: str, series: str | None, sop: str | None) -> tuple[str, str | None, str | None]:
    return (
        require_uid(study, "StudyInstanceUID"),
        require_uid(series, "SeriesInstanceUID") if series is not None else None,
        require_uid(sop, "SOPInstanceUID") if sop is not None else None,
    )


async def _metadata(
    request: Request, study: str, series: str | None = None, sop: str | None = None
) -> Response:
    for media in parse_accept(request.headers.get("accept")):
        if media.matches("application/dicom+json") or media.type == "application/json":
            break
    else:
        raise NotAcceptable("metadata is served as application/dicom+json")
    archive: Archive = request.app.state.archive
    text = await in_thread(headers_json, archive.db, root_url(request), *_uids(study, series, sop))
    return json_text_response(text, request)


@router.get("/studies/{study}")
async def retrieve_study(request: Request, study: str) -> Response:
    return await _retrieve(request, study)


@router.get("/studies/{study}/series/{series}")
async def retrieve_series(request: Request, study: str, series: str) -> Response:
    return await _retrieve(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}")
async def retrieve_instance(request: Request, study: str, series: str, sop: str) -> Response:
    return await _retrieve(request, study, series, sop)


@router.get("/studies/{study}/metadata")
async def study_metadata(request: Request, study: str) -> Response:
    return await _metadata(request, study)


@router.get("/studies/{study}/series/{series}/metadata")
async def series_metadata(request: Request, study: str, series: str) -> Response:
    return await _metadata(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
async def instance_metadata(request: Request, study: str, series: str, sop: str) -> Response:
    return await _metadata(request, study, series, sop)
