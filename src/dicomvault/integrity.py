"""Re-reading stored objects against the index (`dicomvault verify`) and re-wrapping their
data keys under the current master key (`dicomvault keys rotate`).

Both walk the `objects` table in id order, in batches, so they run in bounded memory
on any archive size and can report progress. A verify reads every byte back through
the store (decrypting when encryption is on) and compares the SHA-256 recorded at
ingest; an object that is gone is reported as missing, one that reads back
different (or fails authentication) as a mismatch. It reads the store itself, never
a local cache in front of it (`storage.cache`): the copy that must be whole is the
durable one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, select

from dicomvault.errors import ChecksumMismatch, ObjectNotFound, StorageError
from dicomvault.index.db import Database
from dicomvault.index.schema import instances, objects, studies
from dicomvault.storage import ObjectStore, uncached, verified
from dicomvault.storage.crypto import EncryptedStore

__all__ = ["Problem", "RotationReport", "VerifyReport", "count_objects", "rotate_keys", "verify"]

_BATCH = 500


@dataclass(frozen=True, slots=True)
class Problem:
    key: str
    sop_uid: str
    kind: str  # missing | mismatch
    detail: str


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)


@dataclass
class RotationReport:
    rewrapped: int = 0
    current: int = 0  # already under the current key, or not encrypted
    missing: int = 0


@dataclass(frozen=True, slots=True)
class _Object:
    id: int
    key: str
    sop_uid: str
    sha256: str
    size: int


def _scope(study_uid: str | None) -> Select[Any]:
    query = select(objects.c.id, objects.c.key, objects.c.sop_uid, objects.c.sha256, objects.c.size)
    if study_uid is not None:
        query = query.where(
            objects.c.id.in_(
                select(instances.c.object_fk)
                .join(studies, studies.c.id == instances.c.study_fk)
                .where(studies.c.study_uid == study_uid)
            )
        )
    return query


def _objects(db: Database, study_uid: str | None, sample: int | None) -> Iterator[_Object]:
    base = _scope(study_uid)
    if sample is not None:
        with db.read() as conn:
            rows = conn.execute(base.order_by(func.random()).limit(sample)).all()
        yield from (_Object(*row) for row in rows)
        return
    last = 0
    while True:
        with db.read() as conn:
            rows = conn.execute(
                base.where(objects.c.id > last).order_by(objects.c.id).limit(_BATCH)
            ).all()
        if not rows:
            return
        yield from (_Object(*row) for row in rows)
        last = int(rows[-1][0])


def count_objects(db: Database, study_uid: str | None = None, sample: int | None = None) -> int:
    with db.read() as conn:
        total = int(
            conn.execute(
                select(func.count()).select_from(_scope(study_uid).subquery())
            ).scalar_one()
        )
    return min(total, sample) if sample is not None else total


def verify(
    db: Database,
    store: ObjectStore,
    *,
    study_uid: str | None = None,
    sample: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Read back every object in scope (all, one study, or a random sample)."""
    report = VerifyReport()
    store = uncached(store)
    for obj in _objects(db, study_uid, sample):
        try:
            for chunk in verified(store, obj.key, obj.sha256):
                report.bytes += len(chunk)
        except ObjectNotFound as exc:
            report.problems.append(Problem(obj.key, obj.sop_uid, "missing", str(exc)))
        except ChecksumMismatch as exc:
            report.problems.append(Problem(obj.key, obj.sop_uid, "mismatch", str(exc)))
        except StorageError as exc:
            report.problems.append(Problem(obj.key, obj.sop_uid, "unreadable", str(exc)))
        report.checked += 1
        if progress is not None:
            progress(1)
    return report


def rotate_keys(
    db: Database, store: ObjectStore, progress: Callable[[int], None] | None = None
) -> RotationReport:
    """Re-wrap every object's data key with the current master key; objects unchanged."""
    if not isinstance(store, EncryptedStore):
        raise ValueError(
            "encryption at rest is not configured (encryption_key_file or _kms_key_id)"
        )
    report = RotationReport()
    for obj in _objects(db, None, None):
        try:
            if store.rewrap(obj.key):
                report.rewrapped += 1
            else:
                report.current += 1
        except ObjectNotFound:
            report.missing += 1
        if progress is not None:
            progress(1)
    return report
