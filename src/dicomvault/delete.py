"""Deleting a study: its index rows, then its objects.

Index first, objects second (the reverse of ingest): once the transaction commits the
study is gone for every reader; an object left behind by a crash in between is an
orphan that no row points at, which the reconciler can remove, never a row pointing
at nothing. The patient row stays while other studies refer to it. A `study.deleted`
event records the deletion for consumers of the event log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, func, select

from dicomvault.errors import NotFound
from dicomvault.index.db import Database
from dicomvault.index.eventlog import append_event
from dicomvault.index.schema import instances, objects, patients, series, studies
from dicomvault.storage import ObjectStore

__all__ = ["DeletedStudy", "delete_study"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeletedStudy:
    study_uid: str
    instances: int
    objects: int


def delete_study(db: Database, store: ObjectStore, study_uid: str) -> DeletedStudy:
    """Remove a study and everything in it; NotFound if there is no such study."""
    with db.write() as conn:
        study = conn.execute(
            select(studies.c.id, studies.c.patient_fk, studies.c.site).where(
                studies.c.study_uid == study_uid
            )
        ).first()
        if study is None:
            raise NotFound("no such study")
        count = conn.execute(
            select(func.count()).select_from(instances).where(instances.c.study_fk == study.id)
        ).scalar_one()
        sop_uids = select(instances.c.sop_uid).where(instances.c.study_fk == study.id)
        # Every version of every instance (superseded ones too) goes with the study.
        doomed = conn.execute(
            select(objects.c.id, objects.c.key).where(objects.c.sop_uid.in_(sop_uids))
        ).all()
        keys = [row.key for row in doomed]
        conn.execute(delete(instances).where(instances.c.study_fk == study.id))
        for start in range(0, len(doomed), 500):  # bounded IN lists
            ids = [row.id for row in doomed[start : start + 500]]
            conn.execute(delete(objects).where(objects.c.id.in_(ids)))
        conn.execute(delete(series).where(series.c.study_fk == study.id))
        conn.execute(delete(studies).where(studies.c.id == study.id))
        others = conn.execute(
            select(func.count())
            .select_from(studies)
            .where(studies.c.patient_fk == study.patient_fk)
        ).scalar_one()
        if others == 0:
            conn.execute(delete(patients).where(patients.c.id == study.patient_fk))
        append_event(
            conn,
            "study.deleted",
            study_uid,
            payload={"instances": int(count), "site": study.site},
        )
    for key in keys:
        try:
            store.delete(key)
        except Exception:  # the rows are gone; a left-over object is an orphan, not an error
            log.exception("study %s deleted, but object %s could not be removed", study_uid, key)
    return DeletedStudy(study_uid, int(count), len(keys))
