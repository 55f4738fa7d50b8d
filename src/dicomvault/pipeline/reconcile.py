"""The reconciler: the object store and the index must describe the same instances.

- An object under `instances/` with no `objects` row is an orphan: a crash between
  writing the object and committing its rows (DESIGN principle 2), or an ingest
  still in flight. It is noted when first seen; once older than
  `reconcile_grace_seconds` it is adopted through the one ingest function (which
  indexes it under a fresh key, or finds it already stored) and then removed; one
  that is not a valid instance is removed.
- An `objects` row whose object is missing is reported (logged, and returned to
  `dicomvault reconcile`): the index is not changed, an operator decides.

Runs as a periodic job (`reconcile_seconds`) and as `dicomvault reconcile`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from dicomvault import jobs
from dicomvault.errors import DicomVaultError, ObjectNotFound
from dicomvault.index.schema import objects, orphan_objects
from dicomvault.index.upsert import insert_ignore
from dicomvault.jobs.queue import now
from dicomvault.model.origin import Door, Origin
from dicomvault.pipeline.inbox import spooled

if TYPE_CHECKING:
    from dicomvault.archive import Archive
    from dicomvault.config import Settings

__all__ = ["RECONCILE", "Report", "reconcile"]

log = logging.getLogger(__name__)

RECONCILE = "reconcile"
_INSTANCES = "instances/"


@dataclass
class Report:
    waiting: list[str] = field(default_factory=list)  # orphans inside the grace period
    adopted: list[str] = field(default_factory=list)  # orphan keys ingested, then removed
    removed: list[str] = field(default_factory=list)  # orphan keys that were not instances
    missing: list[tuple[str, str]] = field(default_factory=list)  # (sop uid, key) rows


def reconcile(archive: Archive, *, grace: float, dry_run: bool = False) -> Report:
    store = archive.store
    listed = {info.key for info in store.list(_INSTANCES)}
    with archive.db.read() as conn:
        indexed = dict(
            conn.execute(
                select(objects.c.key, objects.c.sop_uid).where(objects.c.store == store.url)
            ).all()
        )
        seen = dict(conn.execute(select(orphan_objects.c.key, orphan_objects.c.first_seen)).all())
    report = Report(missing=sorted((sop, key) for key, sop in indexed.items() if key not in listed))
    for sop, key in report.missing:
        log.error("reconcile: object %s of instance %s is missing from the store", key, sop)
    orphans = sorted(listed - set(indexed))
    if not dry_run:
        _note(archive, orphans, seen)
    cutoff = now() - timedelta(seconds=grace)
    for key in orphans:
        first = seen.get(key)
        if first is not None and first.tzinfo is None:
            first = first.replace(tzinfo=cutoff.tzinfo)
        if grace > 0 and (first is None or first > cutoff):
            report.waiting.append(key)
        elif dry_run:
            report.adopted.append(key)
        else:
            _settle(archive, key, report)
    return report


def _note(archive: Archive, orphans: list[str], seen: dict[str, Any]) -> None:
    """Remember when each orphan was first seen; forget the ones that are gone."""
    with archive.db.write() as conn:
        for key in orphans:
            if key not in seen:
                conn.execute(
                    insert_ignore(conn, orphan_objects, ["key"]).values(key=key, first_seen=now())
                )
        gone = [key for key in seen if key not in set(orphans)]
        if gone:
            conn.execute(orphan_objects.delete().where(orphan_objects.c.key.in_(gone)))


def _settle(archive: Archive, key: str, report: Report) -> None:
    store = archive.store
    with archive.db.read() as conn:  # indexed since it was listed: not an orphan after all
        if conn.execute(select(objects.c.id).where(objects.c.key == key)).first() is not None:
            return
    try:
        fp = spooled(store.iter_bytes(key))  # the archive's own object: its normal read
    except ObjectNotFound:
        return
    with fp:
        try:
            result = archive.ingestor.ingest(fp, origin=Origin(door=Door.API))
        except DicomVaultError as exc:
            log.warning("reconcile: orphan %s is not a storable instance (%s): removed", key, exc)
            report.removed.append(key)
        else:
            log.warning("reconcile: orphan %s adopted as %s", key, result.sop_uid)
            report.adopted.append(key)
    store.delete(key)
    with archive.db.write() as conn:
        conn.execute(orphan_objects.delete().where(orphan_objects.c.key == key))


def _every(settings: Settings) -> float | None:
    return settings.reconcile_seconds


@jobs.periodic(RECONCILE, every=_every)
def run(archive: Archive, _payload: dict[str, Any]) -> None:
    report = reconcile(archive, grace=archive.settings.reconcile_grace_seconds)
    if report.adopted or report.removed or report.missing:
        log.warning(
            "reconcile: %d adopted, %d removed, %d missing objects",
            len(report.adopted),
            len(report.removed),
            len(report.missing),
        )
