"""QIDO-RS (PS3.18 10.6): search for studies, series and instances; a thin door onto `query`."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import Response

from dicomvault.archive import Archive
from dicomvault.dicomweb.access import AccessContext
from dicomvault.dicomweb.media import parse_accept
from dicomvault.dicomweb.responses import dicom_json_response, root_url
from dicomvault.dicomweb.threads import in_thread
from dicomvault.errors import InvalidQuery, NotAcceptable
from dicomvault.model.levels import Level
from dicomvault.model.uids import require_uid
from dicomvault.query import QueryRequest, resolve_attribute, search

__all__ = ["router"]

router = APIRouter()

_CONTROL = frozenset({"limit", "offset", "fuzzymatching", "includefield"})
_DIGITS = re.compile(r"[0-9]{1,9}")  # not int(): it takes "1_000", " 5" and other digits


def _request(request: Request, level: Level, study: str | None, series: str | None) -> QueryRequest:
    params = request.query_params
    query = QueryRequest(
        level=level,
        study_uid=require_uid(study, "StudyInstanceUID") if study is not None else None,
        series_uid=require_uid(series, "SeriesInstanceUID") if series is not None else None,
    )
    for name, least in (("limit", 1), ("offset", 0)):
        if name in params:
            raw = params[name]
            if not _DIGITS.fullmatch(raw) or int(raw) < least:
                raise InvalidQuery(f"{name}={raw!r}: give a whole number of at least {least}")
            setattr(query, name, int(raw))
    fuzzy = params.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise InvalidQuery("fuzzymatching must be true or false")
    query.fuzzy = fuzzy == "true"
    for raw in params.getlist("includefield"):
        for name in filter(None, (n.strip() for n in raw.split(","))):
            if name == "all":
                query.include_all = True
            else:
                query.include.add(resolve_attribute(name))
    for name, value in params.multi_items():
        if name in _CONTROL:
            continue
        tag = resolve_attribute(name)
        if tag in query.filters:
            raise InvalidQuery(f"{name} is given twice")
        query.filters[tag] = value
    return query


def _check_accept(request: Request) -> None:
    for media in parse_accept(request.headers.get("accept")):
        if media.type in ("application/dicom+json", "application/json") or media.matches(
            "application/dicom+json"
        ):
            return
    raise NotAcceptable("QIDO-RS answers in application/dicom+json")


async def _search(
    request: Request, level: Level, study: str | None = None, series: str | None = None
) -> Response:
    _check_accept(request)
    archive: Archive = request.app.state.archive
    query = _request(request, level, study, series)
    context: AccessContext = request.state.access
    query.sites = context.sites
    result = await in_thread(
        search,
        archive.db,
        query,
        max_results=archive.settings.qido_max_results,
        retrieve_base=root_url(request),
    )
    warnings = [f'299 dicomvault "{w}"' for w in result.warnings]
    if result.more:
        warnings.append(
            '299 dicomvault "The number of results exceeded the limit; additional results '
            'can be requested with offset"'
        )
    response = dicom_json_response(result.matches, request)
    if warnings:
        response.headers["Warning"] = ", ".join(warnings)
    return response


@router.get("/studies")
async def search_studies(request: Request) -> Response:
    return await _search(request, Level.STUDY)


@router.get("/series")
async def search_all_series(request: Request) -> Response:
    return await _search(request, Level.SERIES)


@router.get("/instances")
async def search_all_instances(request: Request) -> Response:
    return await _search(request, Level.INSTANCE)


@router.get("/studies/{study}/series")
async def search_series(request: Request, study: str) -> Response:
    return await _search(request, Level.SERIES, study)


@router.get("/studies/{study}/instances")
async def search_study_instances(request: Request, study: str) -> Response:
    return await _search(request, Level.INSTANCE, study)


@router.get("/studies/{study}/series/{series}/instances")
async def search_instances(request: Request, study: str, series: str) -> Response:
    return await _search(request, Level.INSTANCE, study, series)
