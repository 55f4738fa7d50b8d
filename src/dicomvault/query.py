"""The one query builder: QIDO-RS and C-FIND both describe a `QueryRequest` and call `search`.

Matching follows PS3.4 C.2.2.2: universal (empty value, or `*` alone, which
also matches empty values), single value, wildcard (`*`, `?`), range (dates and
times, `a-b`, `-b`, `a-`), UID list (`,` or `\\`).
Person names match case-insensitively (an upper-cased twin column keeps it
indexed); `fuzzy` makes a person name match any name component by prefix.
Results come back as DICOM JSON (PS3.18 Annex F) dictionaries.

Any other attribute, private tags and attributes inside sequences (a dotted
path of tags, `00400275.00321060`) included, is matched on the stored header
JSON of the instances (`index.header_match`): at the instance level on the
instance itself, at the other levels as "has an instance that matches".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from sqlalchemy import Select, and_, exists, func, or_, select, true

from dicomvault.errors import InvalidQuery
from dicomvault.index.attributes import ATTRIBUTES, Attribute, by_tag, rank, tag_of
from dicomvault.index.db import Database
from dicomvault.index.header_match import header_condition, is_indexed, selective
from dicomvault.index.schema import instances, patients, series, studies
from dicomvault.model.levels import Level

__all__ = ["QueryRequest", "QueryResult", "resolve_attribute", "search"]

_NUMERIC_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "UV", "SV"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_MODALITIES = tag_of("ModalitiesInStudy")
_PATIENT_STUDIES = tag_of("NumberOfPatientRelatedStudies")
_RETRIEVE_URL = tag_of("RetrieveURL")


@dataclass
class QueryRequest:
    level: Level
    filters: dict[str, str] = field(default_factory=dict)  # tag -> DICOM match value
    study_uid: str | None = None
    series_uid: str | None = None
    include: set[str] = field(default_factory=set)  # extra tags to return
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    # Access control: only studies of these sites (None: no restriction). Applied to
    # matches and to every count, so other sites' patients never show, not even as a number.
    sites: frozenset[str] | None = None


@dataclass
class QueryResult:
    matches: list[dict[str, Any]]
    more: bool  # results were cut at the limit
    warnings: list[str] = field(default_factory=list)


def resolve_attribute(name: str) -> str:
    """A keyword (`PatientName`), tag (`00100010`) or a dotted path of them into sequences
    (`RequestAttributesSequence.00321060`) as tags; InvalidQuery otherwise."""
    return ".".join(_resolve_one(part) for part in name.split("."))


def _resolve_one(name: str) -> str:
    if _TAG.fullmatch(name):
        return name.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise InvalidQuery(f"unknown attribute {name!r}: use a DICOM keyword or an 8-digit tag")
    return f"{tag:08X}"


def _path_vr(tag: str) -> tuple[list[str], str | None]:
    path = tag.split(".")
    vr = _vr(path[-1])
    return path, None if vr == "UN" else vr


def _probe(dialect: str, tag: str, value: str) -> Any:
    """The header condition on the instances table itself, when the GIN index answers it."""
    path, vr = _path_vr(tag)
    if not is_indexed(dialect, value, vr):
        return None
    return header_condition(dialect, "instances", instances.c.header, path, value, vr)


def _header_match(dialect: str, level: Level, n: int, tag: str, value: str) -> Any:
    """Condition: the match (or, above the instance level, one of its instances) has a
    header value at the dotted path `tag` that matches `value`."""
    path, vr = _path_vr(tag)
    if level is Level.INSTANCE:
        return header_condition(dialect, "instances", instances.c.header, path, value, vr)
    alias = instances.alias(f"hi{n}")
    condition = header_condition(dialect, alias.name, alias.c.header, path, value, vr)
    if level is Level.STUDY:
        return exists().where(alias.c.study_fk == studies.c.id, condition)
    if level is Level.SERIES:
        return exists().where(alias.c.series_fk == series.c.id, condition)
    owner = studies.alias(f"hs{n}")
    return exists().where(
        alias.c.study_fk == owner.c.id, owner.c.patient_fk == patients.c.id, condition
    )


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _check_range_value(vr: str, value: str) -> None:
    if not value:
        return
    pattern = _DATE if vr == "DA" else _TIME if vr == "TM" else None
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidQuery(f"{value!r} is not a valid {vr} value")


def _match(column: Any, value: str) -> Any:
    """Single value or wildcard matching of one value against `column`."""
    if "*" in value or "?" in value:
        return column.like(_like(value), escape="\\")
    return column == value


def _condition(attr: Attribute, value: str, fuzzy: bool) -> Any:
    """The SQL condition for one attribute's match value (None: universal match)."""
    if value.strip("*") == "":  # PS3.4 C.2.2.2.4: "*" alone is universal matching
        return None
    if attr.tag == _MODALITIES:
        wanted = [v for v in re.split(r"[\\,]", value) if v]
        if not wanted:
            return None
        return exists().where(
            series.c.study_fk == studies.c.id, or_(*(_match(series.c.modality, v) for v in wanted))
        )
    column = attr.norm_column if attr.norm_column is not None else attr.column
    if column is None:
        raise InvalidQuery(f"{attr.keyword} cannot be used as a matching key")
    if attr.vr == "UI":
        uids = [v for v in re.split(r"[\\,]", value) if v]
        return column.in_(uids)
    if attr.vr in _RANGE_VRS and "-" in value:
        low, _, high = value.partition("-")
        if not low and not high:
            raise InvalidQuery(f"{attr.keyword}={value!r}: a range needs at least one end")
        _check_range_value(attr.vr, low)
        _check_range_value(attr.vr, high)
        parts = []
        if low:
            parts.append(column >= low)
        if high:
            # "101500-1200" must include 12:00:59 and 12:00:00.5 too
            parts.append(column <= high + ("\uffff" if attr.vr != "DA" else ""))
        return and_(*parts)
    if attr.vr in _NUMERIC_VRS:
        try:
            return column == int(value)
        except ValueError as exc:
            raise InvalidQuery(f"{attr.keyword}={value!r} is not a number") from exc
    if attr.vr in _RANGE_VRS:
        _check_range_value(attr.vr, value)
    if attr.vr == "PN":
        value = value.upper()
        if fuzzy:
            word = _like(value.replace("*", "").replace("?", ""))
            return or_(
                column.like(f"{word}%", escape="\\"),
                column.like(f"%^{word}%", escape="\\"),
                column.like(f"% {word}%", escape="\\"),
            )
    return _match(column, value)


def _base(level: Level) -> Select[Any]:
    if level is Level.PATIENT:
        return select().select_from(patients)
    if level is Level.STUDY:
        return select().select_from(studies.join(patients, patients.c.id == studies.c.patient_fk))
    joined = series.join(studies, studies.c.id == series.c.study_fk).join(
        patients, patients.c.id == studies.c.patient_fk
    )
    if level is Level.SERIES:
        return select().select_from(joined)
    return select().select_from(instances.join(joined, series.c.id == instances.c.series_fk))


def _root_id(level: Level) -> Any:
    return {
        Level.PATIENT: patients.c.id,
        Level.STUDY: studies.c.id,
        Level.SERIES: series.c.id,
        Level.INSTANCE: instances.c.id,
    }[level]


def element(vr: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON attribute from an index value."""
    if value is None or value == "":
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": v} for v in str(value).split("\\")]}
    if vr in _NUMERIC_VRS:
        try:
            return {"vr": vr, "Value": [int(value)]}
        except (TypeError, ValueError):
            return {"vr": vr}
    if vr == "DS":
        return {"vr": vr, "Value": [float(v) for v in str(value).split("\\")]}
    return {"vr": vr, "Value": str(value).split("\\")}


def search(
    db: Database,
    request: QueryRequest,
    *,
    max_results: int,
    retrieve_base: str | None = None,
) -> QueryResult:
    """Run a query; `retrieve_base` (the DICOMweb root URL) adds RetrieveURL to each match."""
    level = request.level
    warnings: list[str] = []
    conditions: list[Any] = []
    returned: dict[str, Attribute] = {a.tag: a for a in ATTRIBUTES if rank(a.level) <= rank(level)}
    header_tags: set[str] = set()
    if request.study_uid is not None:
        conditions.append(studies.c.study_uid == request.study_uid)
    if request.series_uid is not None:
        conditions.append(series.c.series_uid == request.series_uid)
    dialect = db.engine.dialect.name
    if request.sites is not None:
        conditions.append(_site_condition(level, request.sites))
    probes: list[Any] = []
    for n, (tag, value) in enumerate(request.filters.items()):
        attr = by_tag(tag)
        if attr is None or (attr.column is not None and rank(attr.level) > rank(level)):
            if value.strip("*") != "":
                conditions.append(_header_match(dialect, level, n, tag, value))
                probe = _probe(dialect, tag, value)
                if probe is not None:
                    probes.append(probe)
            if "." not in tag:
                header_tags.add(tag)
            continue
        if rank(attr.level) > rank(level):
            warnings.append(f"matching on {tag} is not supported at the {level.value} level")
            continue
        condition = _condition(attr, value, request.fuzzy)
        if condition is not None:
            conditions.append(condition)
        returned[attr.tag] = attr
    for tag in request.include:
        attr = by_tag(tag)
        if attr is not None and rank(attr.level) <= rank(level):
            returned[attr.tag] = attr
        elif tag != _RETRIEVE_URL:
            header_tags.add(tag)

    columns = [a.column.label(a.tag) for a in returned.values() if a.column is not None]
    limit = min(request.limit or max_results, max_results)
    if request.limit and request.limit > max_results:
        warnings.append(f"limit lowered to the server's maximum of {max_results}")
    root = _root_id(level)
    query = (
        _base(level)
        .add_columns(root.label("_id"), *columns)
        .where(*conditions)
        .limit(limit + 1)
        .offset(max(0, request.offset))
    )
    with db.read() as conn:
        # A rare header value: collect its matches through the GIN index and sort them
        # (`id + 0` hides the id order from the planner); see header_match.SELECTIVE_BELOW.
        rare = any(selective(conn, probe, instances) for probe in probes)
        query = query.order_by(root + 0 if rare else root)
        rows = conn.execute(query).mappings().all()
        more = len(rows) > limit
        rows = rows[:limit]
        ids = [row["_id"] for row in rows]
        modalities = _modalities(conn, ids) if level is Level.STUDY else {}
        patient_studies = (
            _patient_studies(conn, ids, request.sites) if level is Level.PATIENT else {}
        )
        headers = (
            _headers(conn, level, ids, request.sites)
            if (header_tags or (request.include_all and level is Level.INSTANCE))
            else {}
        )

    matches = []
    for row in rows:
        match: dict[str, Any] = {}
        for tag, attr in returned.items():
            if attr.column is not None:
                match[tag] = element(attr.vr, row[tag])
        if level is Level.STUDY:
            match[_MODALITIES] = element("CS", "\\".join(modalities.get(row["_id"], [])))
        if level is Level.PATIENT:
            match[_PATIENT_STUDIES] = element("IS", patient_studies.get(row["_id"], 0))
        header = headers.get(row["_id"])
        if header is not None:
            wanted: Iterable[str] = header.keys() if request.include_all else header_tags
            for tag in wanted:
                item = header.get(tag)
                if item is not None and "BulkDataURI" not in item and "InlineBinary" not in item:
                    match.setdefault(tag, item)
        for tag in header_tags:
            if tag not in match:
                match[tag] = {"vr": _vr(tag)}
        if retrieve_base is not None and level is not Level.PATIENT:
            match[_RETRIEVE_URL] = {"vr": "UR", "Value": [retrieve_base + _path(level, match)]}
        matches.append(dict(sorted(match.items())))
    return QueryResult(matches=matches, more=more, warnings=warnings)


def _vr(tag: str) -> str:
    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return "UN"


def _path(level: Level, match: dict[str, Any]) -> str:
    def uid(keyword: str) -> str:
        return str(match[tag_of(keyword)]["Value"][0])

    path = f"/studies/{uid('StudyInstanceUID')}"
    if level in (Level.SERIES, Level.INSTANCE):
        path += f"/series/{uid('SeriesInstanceUID')}"
    if level is Level.INSTANCE:
        path += f"/instances/{uid('SOPInstanceUID')}"
    return path


def _modalities(conn: Any, study_ids: Sequence[int]) -> dict[int, list[str]]:
    if not study_ids:
        return {}
    rows = conn.execute(
        select(series.c.study_fk, series.c.modality)
        .where(series.c.study_fk.in_(study_ids), series.c.modality.is_not(None))
        .distinct()
    ).all()
    out: dict[int, list[str]] = {}
    for study_fk, modality in rows:
        out.setdefault(study_fk, []).append(modality)
    return {k: sorted(v) for k, v in out.items()}


def _site_condition(level: Level, sites: frozenset[str]) -> Any:
    if level is Level.PATIENT:
        return exists().where(studies.c.patient_fk == patients.c.id, studies.c.site.in_(sites))
    return studies.c.site.in_(sites)


def _patient_studies(
    conn: Any, patient_ids: Sequence[int], sites: frozenset[str] | None
) -> dict[int, int]:
    if not patient_ids:
        return {}
    query = select(studies.c.patient_fk, func.count()).where(studies.c.patient_fk.in_(patient_ids))
    if sites is not None:
        query = query.where(studies.c.site.in_(sites))
    rows = conn.execute(query.group_by(studies.c.patient_fk)).all()
    return {int(k): int(n) for k, n in rows}


def _headers(
    conn: Any, level: Level, ids: Sequence[int], sites: frozenset[str] | None
) -> dict[int, dict[str, Any]]:
    """The header of each match: its own at instance level, else a representative instance's."""
    if not ids:
        return {}
    if level is Level.INSTANCE:
        rows = conn.execute(
            select(instances.c.id, instances.c.header).where(instances.c.id.in_(ids))
        ).all()
        return {int(i): h for i, h in rows}
    owner = {
        Level.STUDY: instances.c.study_fk,
        Level.SERIES: instances.c.series_fk,
    }.get(level)
    if owner is None:
        owner_q = (
            select(studies.c.patient_fk.label("owner"), func.min(instances.c.id).label("first"))
            .join(instances, instances.c.study_fk == studies.c.id)
            .where(
                studies.c.patient_fk.in_(ids),
                studies.c.site.in_(sites) if sites is not None else true(),
            )
            .group_by(studies.c.patient_fk)
        )
    else:
        owner_q = (
            select(owner.label("owner"), func.min(instances.c.id).label("first"))
            .where(owner.in_(ids))
            .group_by(owner)
        )
    firsts = {int(first): int(o) for o, first in conn.execute(owner_q).all()}
    rows = conn.execute(
        select(instances.c.id, instances.c.header).where(instances.c.id.in_(list(firsts)))
    ).all()
    return {firsts[int(i)]: h for i, h in rows}
