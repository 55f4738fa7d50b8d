"""`export-metadata`: every stored header, flattened by tag, as Parquet or NDJSON.

One row per instance: `StudyInstanceUID`, `SeriesInstanceUID` and
`SOPInstanceUID` first, then one column per tag found in any header (named by
its 8-digit tag, private tags included). Values are text: a multi-valued
attribute is joined with `\\` as in DICOM, a person name is its alphabetic
form, a sequence is its items as DICOM JSON, bulk data is left out. Text keeps
every value exact whatever its VR and gives one schema for all rows, which
Parquet requires; analytics tools cast the columns they use.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select, text

from dicomvault.index.db import Database
from dicomvault.index.schema import instances, series, studies

__all__ = ["FORMATS", "count_instances", "export_metadata", "flatten", "header_tags"]

FORMATS = ("parquet", "ndjson")
_BATCH = 1000
_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def flatten(header: dict[str, Any]) -> dict[str, str]:
    """A DICOM JSON header as {tag: text}; bulk data and empty values are left out."""
    out: dict[str, str] = {}
    for tag, element in header.items():
        values = element.get("Value")
        if not values:
            continue
        if element.get("vr") == "SQ":
            out[tag] = json.dumps(values, separators=(",", ":"))
        elif element.get("vr") == "PN":
            out[tag] = "\\".join(str(v.get("Alphabetic", "")) for v in values)
        else:
            out[tag] = "\\".join(_text(v) for v in values)
    return out


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _where(study_uid: str | None) -> Any:
    return None if study_uid is None else studies.c.study_uid == study_uid


def count_instances(db: Database, study_uid: str | None = None) -> int:
    query = select(func.count()).select_from(
        instances.join(studies, studies.c.id == instances.c.study_fk)
    )
    if study_uid is not None:
        query = query.where(_where(study_uid))
    with db.read() as conn:
        return int(conn.execute(query).scalar_one())


def header_tags(db: Database) -> list[str]:
    """Every top-level tag of every stored header, in tag order (one pass, in the database)."""
    if db.is_sqlite:
        sql = "SELECT DISTINCT key FROM instances, json_each(instances.header)"
    else:
        sql = "SELECT DISTINCT jsonb_object_keys(header) FROM instances"
    with db.read() as conn:
        return sorted(str(tag) for (tag,) in conn.execute(text(sql)))


def _rows(db: Database, study_uid: str | None) -> Iterator[dict[str, str]]:
    after = 0
    while True:
        query = (
            select(
                instances.c.id,
                studies.c.study_uid,
                series.c.series_uid,
                instances.c.sop_uid,
                instances.c.header,
            )
            .join(series, series.c.id == instances.c.series_fk)
            .join(studies, studies.c.id == instances.c.study_fk)
            .where(instances.c.id > after)
            .order_by(instances.c.id)
            .limit(_BATCH)
        )
        if study_uid is not None:
            query = query.where(_where(study_uid))
        with db.read() as conn:
            batch = conn.execute(query).all()
        if not batch:
            return
        for row in batch:
            flat = flatten(row.header)
            yield {
                "StudyInstanceUID": row.study_uid,
                "SeriesInstanceUID": row.series_uid,
                "SOPInstanceUID": row.sop_uid,
                **flat,
            }
        after = int(batch[-1].id)


def export_metadata(
    db: Database, out: Path, fmt: str, *, study_uid: str | None = None, progress: Any = None
) -> int:
    """Write the export to `out`; returns the number of instances. `progress(n)` per row."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    rows = _rows(db, study_uid)
    if fmt == "ndjson":
        with out.open("w", encoding="utf-8") as fp:
            return _ndjson(rows, fp, progress)
    return _parquet(rows, out, [*_UIDS, *header_tags(db)], progress)


def _ndjson(rows: Iterator[dict[str, str]], fp: IO[str], progress: Any) -> int:
    count = 0
    for row in rows:
        fp.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
        if progress is not None:
            progress(1)
    return count


def _parquet(rows: Iterator[dict[str, str]], out: Path, columns: list[str], progress: Any) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([pa.field(name, pa.string()) for name in columns])
    count = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        batch: list[dict[str, str]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == _BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
                if progress is not None:
                    progress(len(batch))
                batch = []
        if batch or count == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
            if progress is not None:
                progress(len(batch))
    return count
