"""Matching on any attribute of the stored header JSON (DICOM JSON, PS3.18 Annex F).

A path is a list of tags: `["00180050"]` for Slice Thickness, `["00400275",
"00321060"]` for Requested Procedure Description inside Request Attributes
Sequence (any item), a private tag by its number. No attribute is declared in
advance: every tag of every stored header can be matched.

PostgreSQL: exact values (and UID lists) become JSONB containment
(`header @> {"00180050": {"Value": [5]}}`), answered by the GIN index on
`instances.header` (jsonb_path_ops); the value is tried as text and, when it is a
number, as a number, since DICOM JSON keeps IS/DS/US/... values as numbers.
Wildcards, ranges and person names (case-insensitive) become SQL/JSON path
predicates (`jsonb_path_exists`), which scan the rows the other conditions leave.

SQLite: `json_each` over the value arrays along the path, joined item by item.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import ColumnElement, bindparam, cast, func, or_, text, type_coerce
from sqlalchemy.dialects.postgresql import JSONB, JSONPATH

__all__ = ["header_condition", "is_indexed", "selective"]

_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_TAG = re.compile(r"[0-9A-F]{8}")
_counter = 0


def _numeric(value: str) -> int | float | None:
    stripped = value.strip()
    if not _NUMBER.fullmatch(stripped):
        return None
    number = float(stripped)
    return int(number) if number.is_integer() and "e" not in stripped.lower() else number


def _values(value: str, vr: str | None) -> list[str]:
    """Single value, or a UID list (`,` or `\\` separated)."""
    if vr == "UI":
        return [v for v in re.split(r"[\\,]", value) if v]
    return [value]


def _wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def header_condition(
    dialect: str, table: str, header: Any, path: list[str], value: str, vr: str | None
) -> ColumnElement[bool]:
    """The condition "some value at `path` in the header matches `value`".

    `table` is the SQL name of the instances table (or its alias) and `header` its
    header column; `vr` is the dictionary VR of the last tag (None: unknown, e.g.
    private), which decides person-name, range and UID-list matching.
    """
    bad = [tag for tag in path if not _TAG.fullmatch(tag)]
    if bad or not path:
        raise ValueError(f"not a path of 8-digit upper-case tags: {path!r}")
    if dialect == "postgresql":
        return _postgresql(header, path, value, vr)
    return _sqlite(table, path, value, vr)


def is_indexed(dialect: str, value: str, vr: str | None) -> bool:
    """True when the condition for `value` is answered by the GIN index (containment)."""
    if dialect != "postgresql" or vr == "PN" or _wildcard(value):
        return False
    return not (vr in _RANGE_VRS and "-" in value)


# Below this many matching instances, a query is planned to collect all matches through
# the GIN index and sort them; above it, to walk instances in id order until the page is
# full. PostgreSQL cannot tell the two apart: it estimates every containment at 0.1% of
# the rows, and with ORDER BY id LIMIT n picks the id walk, which for a rare value reads
# every header (seconds on a million instances).
SELECTIVE_BELOW = 1000


def selective(conn: Any, condition: ColumnElement[bool], instances_table: Any) -> bool:
    """Probe: does an indexed header condition match fewer than SELECTIVE_BELOW instances?

    Counting stops at the bound, so the probe costs at most that many index hits.
    """
    from sqlalchemy import select

    sample = select(instances_table.c.id).where(condition).limit(SELECTIVE_BELOW).subquery()
    found = conn.execute(select(func.count()).select_from(sample)).scalar_one()
    return int(found) < SELECTIVE_BELOW


# -- PostgreSQL -----------------------------------------------------------------


def _document(path: list[str], leaf: Any) -> dict[str, Any]:
    doc: Any = leaf
    for tag in reversed(path):
        doc = {tag: {"Value": [doc]}}
    return dict(doc)


def _jsonpath_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid SQL/JSON path string literal


def _regex(value: str) -> str:
    out = []
    for char in value:
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return "^" + "".join(out) + "$"


def _postgresql(header: Any, path: list[str], value: str, vr: str | None) -> ColumnElement[bool]:
    steps = "".join(f'."{tag}".Value[*]' for tag in path)
    if vr == "PN":
        predicate = f'@ like_regex {_jsonpath_string(_regex(value))} flag "i"'
        return _path_exists(header, f"$.{steps[1:]}.Alphabetic ? ({predicate})")
    if vr in _RANGE_VRS and "-" in value:
        low, _, high = value.partition("-")
        parts = []
        if low:
            parts.append(f"@ >= {_jsonpath_string(low)}")
        if high:
            parts.append(f"@ <= {_jsonpath_string(high + ('~' if vr != 'DA' else ''))}")
        return _path_exists(header, f"$.{steps[1:]} ? ({' && '.join(parts)})")
    if _wildcard(value):
        predicate = f"@ like_regex {_jsonpath_string(_regex(value))}"
        return _path_exists(header, f"$.{steps[1:]} ? ({predicate})")
    docs = []
    for single in _values(value, vr):
        docs.append(_document(path, single))
        number = _numeric(single)
        if number is not None and vr not in ("UI", "DA", "TM", "DT"):
            docs.append(_document(path, number))
    jsonb = type_coerce(header, JSONB)
    conditions = [jsonb.contains(doc) for doc in docs]
    return conditions[0] if len(conditions) == 1 else or_(*conditions)


def _path_exists(header: Any, jsonpath: str) -> ColumnElement[bool]:
    return func.jsonb_path_exists(header, cast(bindparam(None, jsonpath), JSONPATH)).is_(True)


# -- SQLite ---------------------------------------------------------------------


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _sqlite(table: str, path: list[str], value: str, vr: str | None) -> ColumnElement[bool]:
    global _counter  # unique bind and alias names when one query matches several paths
    _counter += 1
    n = _counter
    joins = []
    source = f"{table}.header"
    for depth, tag in enumerate(path):
        alias = f"hj{n}_{depth}"
        joins.append(f"json_each({source}, '$.\"{tag}\".Value') AS {alias}")
        source = f"{alias}.value"
    leaf = source
    binds: dict[str, Any] = {}
    if vr == "PN":
        binds[f"hv{n}"] = _like(value.upper())
        condition = f"upper(json_extract({leaf}, '$.Alphabetic')) LIKE :hv{n} ESCAPE '\\'"
    elif vr in _RANGE_VRS and "-" in value:
        low, _, high = value.partition("-")
        parts = []
        if low:
            binds[f"hl{n}"] = low
            parts.append(f"{leaf} >= :hl{n}")
        if high:
            binds[f"hh{n}"] = high + ("\uffff" if vr != "DA" else "")
            parts.append(f"{leaf} <= :hh{n}")
        condition = " AND ".join(parts)
    elif _wildcard(value):
        binds[f"hv{n}"] = _like(value)
        condition = f"{leaf} LIKE :hv{n} ESCAPE '\\'"
    else:
        options = []
        for i, single in enumerate(_values(value, vr)):
            binds[f"hv{n}_{i}"] = single
            options.append(f"{leaf} = :hv{n}_{i}")
            number = _numeric(single)
            if number is not None and vr not in ("UI", "DA", "TM", "DT"):
                binds[f"hn{n}_{i}"] = number
                options.append(f"{leaf} = :hn{n}_{i}")
        condition = " OR ".join(options)
    # Only validated tags and generated alias names are spliced in; values are bound.
    sql = f"EXISTS (SELECT 1 FROM {', '.join(joins)} WHERE {condition})"  # noqa: S608
    return text(sql).bindparams(**binds)  # type: ignore[return-value]
