"""Finding stored instances and reading them back: for WADO-RS, C-MOVE/C-GET and sending.

Reads are checked against the SHA-256 recorded at ingest. Small objects are read
whole and checked before a byte is returned; large ones stream and fail at the
end on a mismatch (the transfer aborts, no silent corruption).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import Connection, Text, cast, select

from dicomvault.errors import NotAcceptable, NotFound
from dicomvault.index.db import Database
from dicomvault.index.schema import instances, objects, patients, series, studies
from dicomvault.model.transfer_syntax import TRANSCODE_TARGETS, is_native
from dicomvault.storage import BlockDigests, ObjectStore, read_verified, verified

__all__ = [
    "StoredInstance",
    "element_value",
    "find_instances",
    "find_with_headers",
    "headers_json",
    "instance_bytes",
    "instance_header",
    "instance_with_header",
    "load_dataset",
    "match_instances",
    "transcode",
]

WHOLE_READ_LIMIT = 16 * 1024 * 1024
_BULK_URI = re.compile(r'("BulkDataURI":\s*")')
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
# The value representations DICOM JSON carries as InlineBinary / BulkDataURI (PS3.18 F.2.7).
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})


@dataclass(frozen=True, slots=True)
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    key: str
    size: int
    sha256: str
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    number_of_frames: int | None
    pixel_offset: int | None
    pixel_length: int | None
    block_blake3: bytes | None  # per-block digests of the object (storage/base.py)
    block_sha256: bytes | None  # ... of objects written before BLAKE3

    @property
    def blocks(self) -> BlockDigests | None:
        """The object's block digests, if it was written with any."""
        if self.block_blake3:
            return BlockDigests(self.block_blake3, "blake3")
        if self.block_sha256:
            return BlockDigests(self.block_sha256, "sha256")
        return None


def _where_uids(query: Any, study_uid: str, series_uid: str | None, sop_uid: str | None) -> Any:
    query = query.where(studies.c.study_uid == study_uid)
    if series_uid is not None:
        query = query.where(series.c.series_uid == series_uid)
    if sop_uid is not None:
        query = query.where(instances.c.sop_uid == sop_uid)
    return query


def _joined() -> Any:
    return instances.join(series, series.c.id == instances.c.series_fk).join(
        studies, studies.c.id == instances.c.study_fk
    )


@dataclass(frozen=True, slots=True)
class _Scope:
    """The study and series rows a retrieval covers, each read once.

    Joining the series and study rows to every instance row looks each of them up
    once per instance. On PostgreSQL, right after a series is stored, its row carries
    a version for every instance (the counts are updated with each one) until vacuum
    runs; those lookups then cost 0.3 ms each, 330 ms for a 1,000-instance study.
    """

    study_id: int
    series_id: int | None  # when one series was asked for
    series: dict[int, tuple[int, str]]  # series row id: (position in series order, uid)

    def where(self, query: Any, sop_uid: str | None) -> Any:
        """`query` over instances limited to this scope, in instance order within a series."""
        query = query.where(instances.c.study_fk == self.study_id)
        if self.series_id is not None:
            query = query.where(instances.c.series_fk == self.series_id)
        if sop_uid is not None:
            query = query.where(instances.c.sop_uid == sop_uid)
        return query.order_by(
            instances.c.series_fk, instances.c.instance_number.nulls_last(), instances.c.id
        )

    def in_series_order(self, rows: Sequence[Any]) -> list[Any]:
        """`rows` (series row id first) of known series, by series then instance order.

        A series stored after the scope was read is left out, as if read a moment earlier.
        """
        known = [row for row in rows if row[0] in self.series]
        return sorted(known, key=lambda row: self.series[row[0]][0])  # stable: keeps instance order


def _read_scope(conn: Connection, study_uid: str, series_uid: str | None) -> _Scope | None:
    query = (
        select(series.c.id, series.c.series_uid, studies.c.id)
        .join(studies, studies.c.id == series.c.study_fk)
        .where(studies.c.study_uid == study_uid)
        .order_by(series.c.series_number.nulls_last(), series.c.id)
    )
    if series_uid is not None:
        query = query.where(series.c.series_uid == series_uid)
    rows = conn.execute(query).all()
    if not rows:
        return None
    return _Scope(
        study_id=rows[0][2],
        series_id=rows[0][0] if series_uid is not None else None,
        series={row[0]: (position, row[1]) for position, row in enumerate(rows)},
    )


def _what(series_uid: str | None, sop_uid: str | None) -> str:
    return "instance" if sop_uid else "series" if series_uid else "study"


def _scoped_rows(
    db: Database, query: Any, study_uid: str, series_uid: str | None, sop_uid: str | None
) -> tuple[_Scope, list[Any]]:
    """The rows of `query` (over instances, series row id first) in the scope, in order.

    Raises NotFound when the scope holds no instance.
    """
    with db.read() as conn:
        scope = _read_scope(conn, study_uid, series_uid)
        rows = [] if scope is None else conn.execute(scope.where(query, sop_uid)).all()
    if scope is None or not rows:
        raise NotFound(f"no such {_what(series_uid, sop_uid)}")
    return scope, scope.in_series_order(rows)


_STORED_COLUMNS = (
    instances.c.sop_uid,
    instances.c.sop_class_uid,
    instances.c.transfer_syntax,
    objects.c.key,
    objects.c.size,
    objects.c.sha256,
    instances.c.rows,
    instances.c.columns,
    instances.c.bits_allocated,
    instances.c.number_of_frames,
    instances.c.pixel_offset,
    instances.c.pixel_length,
    objects.c.block_blake3,
    objects.c.block_sha256,
)
_INSTANCE_COLUMNS = (studies.c.study_uid, series.c.series_uid, *_STORED_COLUMNS)
_ORDER = (
    series.c.series_number.nulls_last(),
    series.c.id,
    instances.c.instance_number.nulls_last(),
    instances.c.id,
)


def _instance_select() -> Any:
    return select(*_INSTANCE_COLUMNS).select_from(
        _joined().join(objects, objects.c.id == instances.c.object_fk)
    )


def find_instances(
    db: Database, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[StoredInstance]:
    """The stored instances of a study, series or instance, in series/instance order."""
    query = select(instances.c.series_fk, *_STORED_COLUMNS).join(
        objects, objects.c.id == instances.c.object_fk
    )
    scope, rows = _scoped_rows(db, query, study_uid, series_uid, sop_uid)
    return [StoredInstance(study_uid, scope.series[row[0]][1], *row[1:]) for row in rows]


def find_with_headers(
    db: Database, study_uid: str, series_uid: str | None = None
) -> list[tuple[StoredInstance, dict[str, Any]]]:
    """`find_instances` of a study or series, each with its indexed DICOM JSON header
    (BulkDataURIs still relative), read in the same query rather than one per instance."""
    query = select(instances.c.series_fk, *_STORED_COLUMNS, instances.c.header).join(
        objects, objects.c.id == instances.c.object_fk
    )
    scope, rows = _scoped_rows(db, query, study_uid, series_uid, None)
    return [
        (StoredInstance(study_uid, scope.series[row[0]][1], *row[1:-1]), dict(row[-1]))
        for row in rows
    ]


def instance_with_header(
    db: Database, study_uid: str, series_uid: str, sop_uid: str
) -> tuple[StoredInstance, dict[str, Any]]:
    """One instance at a WADO-RS instance URL and its indexed header, in one query.

    The pixel resources of an instance (frames, rendered, bulk data) need both; read
    apart they cost three statements, each a round trip on PostgreSQL.
    """
    query = _where_uids(
        _instance_select().add_columns(instances.c.header), study_uid, series_uid, sop_uid
    )
    with db.read() as conn:
        row = conn.execute(query).first()
    if row is None:
        raise NotFound("no such instance")
    return StoredInstance(*row[:-1]), dict(row[-1])


def match_instances(
    db: Database,
    *,
    patient_ids: Sequence[str] = (),
    study_uids: Sequence[str] = (),
    series_uids: Sequence[str] = (),
    sop_uids: Sequence[str] = (),
    limit: int | None = None,
) -> list[StoredInstance]:
    """The stored instances matching every non-empty list of unique keys (C-MOVE, C-GET,
    `dicomvault send`), in study/series/instance order; at most `limit`."""
    query = _instance_select()
    if patient_ids:
        query = query.join(patients, patients.c.id == studies.c.patient_fk).where(
            patients.c.patient_id.in_(list(patient_ids))
        )
    for column, values in (
        (studies.c.study_uid, study_uids),
        (series.c.series_uid, series_uids),
        (instances.c.sop_uid, sop_uids),
    ):
        if values:
            query = query.where(column.in_(list(values)))
    query = query.order_by(studies.c.id, *_ORDER)
    if limit is not None:
        query = query.limit(limit)
    with db.read() as conn:
        return [StoredInstance(*row) for row in conn.execute(query).all()]


def headers_json(
    db: Database,
    base_url: str,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> str:
    """The DICOM JSON metadata of the matching instances as one JSON array, from the index.

    Headers are passed through as the database's JSON text (no per-instance parse);
    only their relative BulkDataURIs are made absolute under `base_url`.
    """
    query = select(instances.c.series_fk, cast(instances.c.header, Text))
    _, rows = _scoped_rows(db, query, study_uid, series_uid, sop_uid)
    texts = [row[1] for row in rows]
    body = "[" + ",".join(texts) + "]"
    return _BULK_URI.sub(lambda m: m.group(1) + base_url.rstrip("/") + "/", body)


def instance_header(db: Database, study_uid: str, series_uid: str, sop_uid: str) -> dict[str, Any]:
    """One instance's DICOM JSON header as indexed at ingest (BulkDataURIs still relative)."""
    query = _where_uids(
        select(instances.c.header).select_from(_joined()), study_uid, series_uid, sop_uid
    )
    with db.read() as conn:
        header = conn.execute(query).scalar_one_or_none()
    if header is None:
        raise NotFound("no such instance")
    return dict(header)


def element_value(store: ObjectStore, instance: StoredInstance, path: str) -> bytes:
    """The value bytes of the element a BulkDataURI path names (`tag` or `tag/item/tag/...`).

    The path is the one `parsing.header.dataset_to_json` wrote; the value is read
    from the checksum-verified object, undecoded (as encoded in the stored syntax).
    """
    steps = path.strip("/").split("/")
    tags, items = steps[0::2], steps[1::2]
    well_formed = len(steps) % 2 == 1 and all(i.isdigit() for i in items)
    if not well_formed or not all(_TAG.fullmatch(tag) for tag in tags):
        raise NotFound(f"no bulk data at {path!r}: paths are tag[/item/tag...]")
    ds = load_dataset(store, instance)
    for tag, item in zip(tags, items, strict=False):
        sequence = ds.get(int(tag, 16))
        index = int(item)
        if sequence is None or sequence.VR != "SQ" or index >= len(sequence.value):
            raise NotFound(f"no bulk data at {path!r}: no item {index} of ({tag.upper()})")
        ds = sequence.value[index]
    leaf = int(tags[-1], 16)
    if leaf not in ds:
        raise NotFound(f"no bulk data at {path!r}: the element is absent")
    value = ds.get_item(leaf).value  # raw bytes while the element is still undecoded
    if ds[leaf].VR not in _BINARY_VRS or not isinstance(value, bytes | bytearray):
        raise NotFound(f"no bulk data at {path!r}: ({tags[-1].upper()}) is not a binary value")
    return bytes(value)


def instance_bytes(store: ObjectStore, instance: StoredInstance) -> Iterator[bytes]:
    """The stored Part 10 bytes, checked against their recorded block digests (or SHA-256)."""
    if instance.size <= WHOLE_READ_LIMIT:
        return iter((read_verified(store, instance.key, instance.sha256, instance.blocks),))
    return verified(store, instance.key, instance.sha256, instance.blocks)


def load_dataset(store: ObjectStore, instance: StoredInstance) -> Dataset:
    """The whole instance parsed by pydicom, after its SHA-256 has been checked."""
    data = read_verified(store, instance.key, instance.sha256, instance.blocks)
    return pydicom.dcmread(BytesIO(data))


def transcode(store: ObjectStore, instance: StoredInstance, target: str) -> bytes:
    """The instance re-encoded in transfer syntax `target` (decoding pixels when needed)."""
    if target not in TRANSCODE_TARGETS:
        raise NotAcceptable(f"cannot transcode to transfer syntax {target}")
    ds = load_dataset(store, instance)
    try:
        if "PixelData" in ds and not is_native(instance.transfer_syntax):
            # Lossless transcoding keeps the SOP Instance UID (pydicom makes a new one by default).
            ds.decompress(generate_instance_uid=False)
        if target in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            ds.file_meta.TransferSyntaxUID = UID(target)
        else:
            ds.compress(UID(target), generate_instance_uid=False)
    except NotAcceptable:
        raise
    except Exception as exc:
        raise NotAcceptable(
            f"instance {instance.sop_uid} cannot be transcoded from "
            f"{instance.transfer_syntax} to {target}: {exc}"
        ) from exc
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
