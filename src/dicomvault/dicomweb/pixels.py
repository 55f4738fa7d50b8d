"""WADO-RS pixel resources (PS3.18 10.4): frames, bulk data, rendered images, thumbnails.

Each route checks its UIDs, asks the frames / render services for bytes and wraps
them in the negotiated media type (`pixel_media`). Blocking work (index, object
store, codecs) runs in the thread pool; the first part of a multipart answer is
produced before the response starts, so a missing or corrupt object is an error
status rather than a transfer cut off midway.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from dicomvault.archive import Archive
from dicomvault.dicomweb.multipart import new_boundary, write_parts
from dicomvault.dicomweb.pixel_media import (
    OCTET_STREAM,
    FrameEncoding,
    negotiate_bulk,
    negotiate_pixels,
    negotiate_rendered,
    part_content_type,
)
from dicomvault.dicomweb.ranges import RangeNotSatisfiable, content_range, requested_range
from dicomvault.dicomweb.threads import in_thread
from dicomvault.frames import (
    PIXEL_DATA,
    ImageInstance,
    images_of,
    open_image,
    representative_image,
)
from dicomvault.model.uids import require_uid
from dicomvault.render import (
    DEFAULT_QUALITY,
    RenderOptions,
    Viewport,
    parse_quality,
    parse_viewport,
    parse_window,
    render_frame,
)
from dicomvault.retrieve import element_value, find_instances

__all__ = ["router"]

router = APIRouter()

INSTANCE = "/studies/{study}/series/{series}/instances/{sop}"
THUMBNAIL_VIEWPORT = Viewport(128, 128)


def _uids(study: str, series: str, sop: str) -> tuple[str, str, str]:
    return (
        require_uid(study, "StudyInstanceUID"),
        require_uid(series, "SeriesInstanceUID"),
        require_uid(sop, "SOPInstanceUID"),
    )


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


async def _image(request: Request, study: str, series: str, sop: str) -> ImageInstance:
    archive = _archive(request)
    uids = _uids(study, series, sop)
    return await in_thread(open_image, archive.db, archive.store, *uids)


async def _started(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks` with its first item already produced (in the thread pool)."""
    first = await in_thread(lambda: next(chunks, None))
    return chunks if first is None else itertools.chain((first,), chunks)


async def _multipart(part_type: str, bodies: Iterator[bytes], *, one_part: bool) -> Response:
    """Each body its own part, or all of them the chunks of one part."""
    bodies = await _started(bodies)
    boundary = new_boundary()
    parts = iter([(part_type, bodies)]) if one_part else ((part_type, (body,)) for body in bodies)
    media = part_type.split(";")[0]
    return StreamingResponse(
        write_parts(boundary, parts),
        media_type=f'multipart/related; type="{media}"; boundary={boundary}',
    )


@router.get(INSTANCE + "/frames/{frame_list}")
async def retrieve_frames(
    request: Request, study: str, series: str, sop: str, frame_list: str
) -> Response:
    image = await _image(request, study, series, sop)
    numbers = image.frame_numbers(frame_list)
    choice = negotiate_pixels(request.headers.get("accept"), image.transfer_syntax)
    await in_thread(image.prepare)
    read = image.stored_frame if choice.encoding is FrameEncoding.STORED else image.native_frame
    part_type = part_content_type(choice.encoding, image.transfer_syntax)
    return await _multipart(part_type, (read(n) for n in numbers), one_part=False)


@router.get(INSTANCE + "/bulkdata/{path:path}")
async def retrieve_bulkdata(
    request: Request, study: str, series: str, sop: str, path: str
) -> Response:
    accept = request.headers.get("accept")
    if path.strip("/").upper() == PIXEL_DATA:
        image = await _image(request, study, series, sop)
        choice = negotiate_pixels(accept, image.transfer_syntax, single_part_ok=True)
        await in_thread(image.prepare)
        part_type = part_content_type(choice.encoding, image.transfer_syntax)
        if choice.encoding is FrameEncoding.STORED:
            frames = (image.stored_frame(n) for n in range(1, image.geometry.frames + 1))
            return await _multipart(part_type, frames, one_part=False)
        if choice.multipart:
            return await _multipart(part_type, image.native_pixel_data(), one_part=True)
        total = image.native_pixel_length
        try:
            wanted = requested_range(_range_header(request), total)
        except RangeNotSatisfiable as exc:
            return exc.response()
        sliced = image.native_pixel_slice(*wanted) if wanted is not None else None
        if wanted is not None and sliced is not None:
            return StreamingResponse(
                await _started(sliced),
                status_code=206,
                media_type=OCTET_STREAM,
                headers=content_range(*wanted, total),
            )
        chunks = await _started(image.native_pixel_data())
        ranges = {"Accept-Ranges": "bytes"} if image.sliceable else {}
        return StreamingResponse(chunks, media_type=OCTET_STREAM, headers=ranges)
    multipart = negotiate_bulk(accept)
    archive = _archive(request)
    (stored,) = await in_thread(find_instances, archive.db, *_uids(study, series, sop))
    value = await in_thread(element_value, archive.store, stored, path)
    if multipart:
        return await _multipart(OCTET_STREAM, iter((value,)), one_part=False)
    try:
        wanted = requested_range(_range_header(request), len(value))
    except RangeNotSatisfiable as exc:
        return exc.response()
    if wanted is not None:
        start, end = wanted
        return Response(
            value[start:end],
            status_code=206,
            media_type=OCTET_STREAM,
            headers=content_range(start, end, len(value)),
        )
    return Response(value, media_type=OCTET_STREAM, headers={"Accept-Ranges": "bytes"})


def _range_header(request: Request) -> str | None:
    """The Range to honour. With If-Range the client holds a validator we never gave
    (no ETag or Last-Modified here), so it cannot match: the whole value is sent."""
    if "if-range" in request.headers:
        return None
    return request.headers.get("range")


def _render_options(request: Request, viewport: Viewport | None = None) -> RenderOptions:
    query = request.query_params
    media_type = negotiate_rendered(request.headers.get("accept"))
    return RenderOptions(
        media_type=media_type,
        window=parse_window(query["window"]) if "window" in query else None,
        viewport=parse_viewport(query["viewport"]) if "viewport" in query else viewport,
        quality=parse_quality(query["quality"]) if "quality" in query else DEFAULT_QUALITY,
    )


async def _rendered(image: ImageInstance, number: int, options: RenderOptions) -> Response:
    body = await in_thread(render_frame, image, number, options)
    return Response(body, media_type=options.media_type)


@router.get(INSTANCE + "/rendered")
async def rendered_instance(request: Request, study: str, series: str, sop: str) -> Response:
    """The first frame (a JPEG or PNG holds one)."""
    options = _render_options(request)
    return await _rendered(await _image(request, study, series, sop), 1, options)


async def _rendered_parts(
    options: RenderOptions, frames: Iterable[tuple[ImageInstance, int]]
) -> Response:
    """Several rendered frames, one image per part of a multipart/related answer."""
    bodies = (render_frame(image, number, options) for image, number in frames)
    return await _multipart(options.media_type, bodies, one_part=False)


@router.get(INSTANCE + "/frames/{frame_list}/rendered")
async def rendered_frame(
    request: Request, study: str, series: str, sop: str, frame_list: str
) -> Response:
    """One frame as an image; several as a multipart/related of images."""
    options = _render_options(request)
    image = await _image(request, study, series, sop)
    numbers = image.frame_numbers(frame_list)
    if len(numbers) == 1:
        return await _rendered(image, numbers[0], options)
    return await _rendered_parts(options, ((image, n) for n in numbers))


@router.get("/studies/{study}/series/{series}/rendered")
async def rendered_series(request: Request, study: str, series: str) -> Response:
    """The first frame of every image of the series, one part each."""
    options = _render_options(request)
    archive = _archive(request)
    study_uid = require_uid(study, "StudyInstanceUID")
    series_uid = require_uid(series, "SeriesInstanceUID")
    images = await in_thread(images_of, archive.db, archive.store, study_uid, series_uid)
    return await _rendered_parts(options, ((image, 1) for image in images))


@router.get("/studies/{study}/rendered")
async def rendered_study(request: Request, study: str) -> Response:
    """The first frame of every image of the study, one part each."""
    options = _render_options(request)
    archive = _archive(request)
    study_uid = require_uid(study, "StudyInstanceUID")
    images = await in_thread(images_of, archive.db, archive.store, study_uid)
    return await _rendered_parts(options, ((image, 1) for image in images))


async def _thumbnail(request: Request, image: ImageInstance) -> Response:
    options = _render_options(request, THUMBNAIL_VIEWPORT)
    return await _rendered(image, (image.geometry.frames + 1) // 2, options)


@router.get(INSTANCE + "/thumbnail")
async def instance_thumbnail(request: Request, study: str, series: str, sop: str) -> Response:
    return await _thumbnail(request, await _image(request, study, series, sop))


@router.get("/studies/{study}/series/{series}/thumbnail")
async def series_thumbnail(request: Request, study: str, series: str) -> Response:
    archive = _archive(request)
    study_uid = require_uid(study, "StudyInstanceUID")
    series_uid = require_uid(series, "SeriesInstanceUID")
    image = await in_thread(representative_image, archive.db, archive.store, study_uid, series_uid)
    return await _thumbnail(request, image)


@router.get("/studies/{study}/thumbnail")
async def study_thumbnail(request: Request, study: str) -> Response:
    archive = _archive(request)
    study_uid = require_uid(study, "StudyInstanceUID")
    image = await in_thread(representative_image, archive.db, archive.store, study_uid)
    return await _thumbnail(request, image)
