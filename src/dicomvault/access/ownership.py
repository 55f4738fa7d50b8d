"""Whose studies these are: the site and patient of studies by UID, for every door.

The policy function decides on a study's site; the audit trail names its patient.
Both doors (DICOMweb's guard, the DIMSE handlers) read them here, in one query.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select

from dicomvault.index.db import Database
from dicomvault.index.prepared import Prepared
from dicomvault.index.schema import patients, studies

__all__ = ["StudyOwner", "study_owner", "study_owners"]

_BATCH = 500


@dataclass(frozen=True, slots=True)
class StudyOwner:
    site: str | None
    patient_id: str


def study_owners(db: Database, study_uids: Iterable[str]) -> dict[str, StudyOwner]:
    """Site and patient of each stored study among `study_uids` (absent ones are left out)."""
    wanted = sorted(set(study_uids))
    found: dict[str, StudyOwner] = {}
    with db.read() as conn:
        for start in range(0, len(wanted), _BATCH):
            rows = conn.execute(
                select(studies.c.study_uid, studies.c.site, patients.c.patient_id)
                .join(patients, patients.c.id == studies.c.patient_fk)
                .where(studies.c.study_uid.in_(wanted[start : start + _BATCH]))
            ).all()
            found.update((uid, StudyOwner(site, patient)) for uid, site, patient in rows)
    return found


def study_owner(db: Database, study_uid: str, conn: Connection | None = None) -> StudyOwner | None:
    """Site and patient of one study; None when it is not stored.

    Asked for every request on a study's URL, so a prepared statement (`index.prepared`),
    on `conn` when the caller is already reading.
    """
    if conn is None:
        row = _STUDY_OWNER.lookup(db, {"uid": study_uid})
    else:
        row = _STUDY_OWNER.first(conn, {"uid": study_uid})
    return None if row is None else StudyOwner(row[0], row[1])


_STUDY_OWNER = Prepared(
    select(studies.c.site, patients.c.patient_id)
    .join(patients, patients.c.id == studies.c.patient_fk)
    .where(studies.c.study_uid == bindparam("uid"))
)
