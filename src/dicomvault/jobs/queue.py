"""The durable queue: jobs are rows of `jobs` in the index database.

A worker claims a job by moving it from `pending` to `running` with a lease
(`locked_by`, `locked_until`) in one short transaction. On PostgreSQL the claim
selects with `FOR UPDATE SKIP LOCKED`, so any number of workers on any number of
machines take different jobs without waiting on each other; on SQLite every
write is serialized by `Database.write`, which gives the same guarantee for the
workers of one machine. A running job whose lease expires (its worker was
killed) is claimed again like a pending one. Every later change to a job is
fenced by `locked_by`, so a worker that lost its lease cannot overwrite the
outcome of the one that took it over.

States: pending -> running -> done | pending (retry after backoff) | dead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from dicomvault.index.db import Database
from dicomvault.index.schema import jobs
from dicomvault.index.upsert import insert_ignore

__all__ = [
    "ACTIVE_STATES",
    "DEFAULT_MAX_ATTEMPTS",
    "STATES",
    "Job",
    "backoff",
    "claim",
    "complete",
    "counts",
    "enqueue",
    "fail",
    "get_job",
    "list_jobs",
    "now",
    "postpone",
    "purge",
    "renew",
    "retry",
]

STATES = ("pending", "running", "done", "dead")
ACTIVE_STATES = ("pending", "running")
DEFAULT_MAX_ATTEMPTS = 8
_ERROR_CHARS = 4000


def now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    kind: str
    key: str | None
    payload: dict[str, Any]
    state: str
    attempts: int
    max_attempts: int
    run_after: datetime
    locked_by: str | None
    locked_until: datetime | None
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        m = row._mapping
        return cls(
            id=int(m["id"]),
            kind=m["kind"],
            key=m["key"],
            payload=dict(m["payload"] or {}),
            state=m["state"],
            attempts=int(m["attempts"]),
            max_attempts=int(m["max_attempts"]),
            run_after=_aware(m["run_after"]) or now(),
            locked_by=m["locked_by"],
            locked_until=_aware(m["locked_until"]),
            last_error=m["last_error"],
            created_at=_aware(m["created_at"]) or now(),
            finished_at=_aware(m["finished_at"]),
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def enqueue(
    conn: Connection,
    kind: str,
    payload: dict[str, Any],
    *,
    key: str | None = None,
    run_after: datetime | None = None,
    max_attempts: int | None = None,
    state: str = "pending",
    last_error: str | None = None,
) -> int:
    """Queue a job inside the caller's transaction; returns its id.

    With `key`, a job of that key that is still pending or running is kept and its
    id returned: nothing new is queued.
    """
    if max_attempts is not None and max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    values = {
        "kind": kind,
        "key": key,
        "active_key": key if state in ACTIVE_STATES else None,
        "payload": payload,
        "state": state,
        "max_attempts": max_attempts or DEFAULT_MAX_ATTEMPTS,
        "run_after": run_after or now(),
        "last_error": last_error,
        "finished_at": None if state in ACTIVE_STATES else now(),
    }
    if key is None:
        return int(conn.execute(jobs.insert().values(values).returning(jobs.c.id)).scalar_one())
    new_id = conn.execute(
        insert_ignore(conn, jobs, ["active_key"]).values(values).returning(jobs.c.id)
    ).scalar()
    if new_id is not None:
        return int(new_id)
    return int(conn.execute(select(jobs.c.id).where(jobs.c.active_key == key)).scalar_one())


def claim(db: Database, worker: str, lease: float, kinds: list[str] | None = None) -> Job | None:
    """Take the next due job (pending, or running with an expired lease), or None."""
    at = now()
    due = or_(
        and_(jobs.c.state == "pending", jobs.c.run_after <= at),
        and_(jobs.c.state == "running", jobs.c.locked_until < at),
    )
    pick = select(jobs.c.id).where(due).order_by(jobs.c.run_after, jobs.c.id).limit(1)
    if kinds is not None:
        pick = pick.where(jobs.c.kind.in_(kinds))
    # Look before taking the write lock: a worker polling an empty queue then costs a
    # read, not a write transaction that queues behind (and delays) ingestion's.
    with db.read() as conn:
        if conn.execute(pick).first() is None:
            return None
    pick = pick.with_for_update(skip_locked=True)
    with db.write() as conn:
        row = conn.execute(
            update(jobs)
            .where(jobs.c.id == pick.scalar_subquery())
            .values(
                state="running",
                attempts=jobs.c.attempts + 1,
                locked_by=worker,
                locked_until=at + timedelta(seconds=lease),
            )
            .returning(*jobs.c)
        ).first()
    return None if row is None else Job.from_row(row)


def _fenced(job_id: int, worker: str) -> Any:
    return and_(jobs.c.id == job_id, jobs.c.state == "running", jobs.c.locked_by == worker)


def renew(db: Database, job_id: int, worker: str, lease: float) -> bool:
    """Extend a running job's lease; False if this worker no longer holds it."""
    with db.write() as conn:
        changed = conn.execute(
            update(jobs)
            .where(_fenced(job_id, worker))
            .values(locked_until=now() + timedelta(seconds=lease))
        ).rowcount
    return changed == 1


def complete(db: Database, job_id: int, worker: str, *, forget: bool = False) -> bool:
    """Record a job as done (`forget`: delete it instead, for periodic ticks)."""
    with db.write() as conn:
        if forget:
            return conn.execute(jobs.delete().where(_fenced(job_id, worker))).rowcount == 1
        changed = conn.execute(
            update(jobs)
            .where(_fenced(job_id, worker))
            .values(
                state="done",
                active_key=None,
                locked_by=None,
                locked_until=None,
                finished_at=now(),
            )
        ).rowcount
    return changed == 1


def backoff(attempts: int, base: float, ceiling: float) -> float:
    """Seconds before attempt `attempts` + 1: base * 2^(attempts-1), capped, +-10% jitter."""
    delay = min(base * 2 ** max(0, attempts - 1), ceiling)
    return float(delay * random.uniform(0.9, 1.1))  # noqa: S311 (spreading retries, not security)


def fail(
    db: Database,
    job: Job,
    worker: str,
    error: str,
    *,
    permanent: bool,
    base: float,
    ceiling: float,
) -> str:
    """Record a failed attempt: back to pending after a backoff, or dead. Returns the state."""
    dead = permanent or job.attempts >= job.max_attempts
    values: dict[str, Any] = {
        "last_error": error[-_ERROR_CHARS:],
        "locked_by": None,
        "locked_until": None,
    }
    if dead:
        values.update(state="dead", active_key=None, finished_at=now())
    else:
        delay = backoff(job.attempts, base, ceiling)
        values.update(state="pending", run_after=now() + timedelta(seconds=delay))
    with db.write() as conn:
        conn.execute(update(jobs).where(_fenced(job.id, worker)).values(values))
    return "dead" if dead else "pending"


def postpone(db: Database, job: Job, worker: str, at: datetime) -> None:
    """Put a running job back to pending until `at`; the attempt does not count."""
    with db.write() as conn:
        conn.execute(
            update(jobs)
            .where(_fenced(job.id, worker))
            .values(
                state="pending",
                run_after=at,
                attempts=jobs.c.attempts - 1,
                locked_by=None,
                locked_until=None,
            )
        )


def get_job(db: Database, job_id: int) -> Job | None:
    with db.read() as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    return None if row is None else Job.from_row(row)


def list_jobs(
    db: Database, *, state: str | None = None, kind: str | None = None, limit: int = 100
) -> list[Job]:
    query = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
    if state is not None:
        query = query.where(jobs.c.state == state)
    if kind is not None:
        query = query.where(jobs.c.kind == kind)
    with db.read() as conn:
        return [Job.from_row(row) for row in conn.execute(query).all()]


def counts(db: Database) -> dict[str, int]:
    with db.read() as conn:
        rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
    return {str(state): int(n) for state, n in rows}


def retry(db: Database, job_id: int) -> None:
    """Queue a dead (or done) job again, now, with a fresh count of attempts.

    ValueError if it is pending or running, or another job of its key is.
    """
    with db.write() as conn:
        row = conn.execute(select(jobs.c.state, jobs.c.key).where(jobs.c.id == job_id)).first()
        if row is None:
            raise LookupError(f"no job {job_id}")
        if row.state in ACTIVE_STATES:
            raise ValueError(f"job {job_id} is {row.state}: only dead or done jobs are retried")
        try:
            with conn.begin_nested():
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        state="pending",
                        active_key=row.key,
                        attempts=0,
                        run_after=now(),
                        finished_at=None,
                    )
                )
        except IntegrityError as exc:
            raise ValueError(
                f"job {job_id}: another job with key {row.key!r} is already queued"
            ) from exc


def purge(db: Database, states: list[str], older_than: timedelta) -> int:
    """Delete finished jobs (done / dead) that ended more than `older_than` ago."""
    bad = [s for s in states if s in ACTIVE_STATES or s not in STATES]
    if bad:
        raise ValueError(f"only done and dead jobs can be purged, not {', '.join(bad)}")
    with db.write() as conn:
        return int(
            conn.execute(
                jobs.delete().where(
                    jobs.c.state.in_(states), jobs.c.finished_at <= now() - older_than
                )
            ).rowcount
        )
