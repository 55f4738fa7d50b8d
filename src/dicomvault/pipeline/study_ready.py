"""Study stable and ready: `study.ready` once a study has been quiet, `study.updated` after.

A subscriber to instance events records, per study, the seq of its newest
instance event and when it happened, and sets `due_at` to that time plus the
quiet period (`Settings.study_quiet_seconds`). A periodic job finds the studies
that are due and appends `study.ready` (first time) or `study.updated` (more
instances came after it was told), in the same transaction that records what
was told, so each change is told once even when jobs run twice. A study that
changes again while being told keeps its new `due_at` (the update is
conditional on the seq that was read).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from dicomvault import jobs
from dicomvault.index.eventlog import append_event
from dicomvault.index.schema import studies, study_readiness
from dicomvault.index.upsert import insert_ignore
from dicomvault.jobs.queue import now

if TYPE_CHECKING:
    from dicomvault.archive import Archive
    from dicomvault.config import Settings

__all__ = ["READY", "UPDATED", "record_change", "record_changes", "tell_ready"]

READY = "study.ready"
UPDATED = "study.updated"
_BATCH = 500


def record_changes(archive: Archive, events: list[dict[str, Any]]) -> None:
    """Note that the events' studies changed, in one transaction (a busy modality sends
    hundreds of instances of a study: one row to touch, not hundreds)."""
    newest: dict[str, int] = {}
    for event in events:
        newest[event["study_uid"]] = max(newest.get(event["study_uid"], 0), int(event["seq"]))
    # Measured from when the pipeline sees the instance (a poll after it was stored),
    # on the workers' clock, which also decides when it is due: never early, and
    # independent of the database's timestamp resolution (whole seconds on SQLite).
    at = now()
    due = at + timedelta(seconds=archive.settings.study_quiet_seconds)
    with archive.db.write() as conn:
        for study_uid, seq in newest.items():
            conn.execute(
                insert_ignore(conn, study_readiness, ["study_uid"]).values(
                    study_uid=study_uid, last_seq=seq, last_change_at=at, due_at=due
                )
            )
            conn.execute(
                update(study_readiness)
                .where(
                    study_readiness.c.study_uid == study_uid,
                    study_readiness.c.last_seq < seq,
                )
                .values(last_seq=seq, last_change_at=at, due_at=due)
            )


@jobs.on_event("instance.*", name="study-ready", batch=record_changes)
def record_change(archive: Archive, event: dict[str, Any]) -> None:
    """Note that the event's study changed; idempotent (a seq already seen changes nothing)."""
    record_changes(archive, [event])


def _every(settings: Settings) -> float:
    return settings.study_ready_check_seconds


@jobs.periodic("study.tell-ready", every=_every)
def tell_ready(archive: Archive, _payload: dict[str, Any]) -> None:
    """Append study.ready / study.updated for every study whose quiet period is over."""
    while _tell_batch(archive) == _BATCH:
        pass


def _tell_batch(archive: Archive) -> int:
    with archive.db.write() as conn:
        due = conn.execute(
            select(study_readiness)
            .where(study_readiness.c.due_at <= now())
            .order_by(study_readiness.c.due_at)
            .limit(_BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        for row in due:
            study = conn.execute(
                select(studies.c.num_series, studies.c.num_instances, studies.c.site).where(
                    studies.c.study_uid == row.study_uid
                )
            ).first()
            if study is not None:
                append_event(
                    conn,
                    READY if row.told_seq is None else UPDATED,
                    row.study_uid,
                    payload={
                        "num_series": study.num_series,
                        "num_instances": study.num_instances,
                        "site": study.site,
                        "last_instance_seq": row.last_seq,
                    },
                )
            conn.execute(
                update(study_readiness)
                .where(
                    study_readiness.c.study_uid == row.study_uid,
                    study_readiness.c.last_seq == row.last_seq,
                )
                .values(told_seq=row.last_seq, ready_at=now(), due_at=None)
            )
    return len(due)
