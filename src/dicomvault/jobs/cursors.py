"""Event subscribers' cursors: how far each `@on_event` subscriber has read the event log.

Like a job, a cursor is leased by one worker at a time, so one subscriber sees
its events one after another in `seq` order (the event log numbers them in
commit order, see `index.eventlog`). The cursor moves past an event only after
its reaction returned: a worker killed mid-reaction leaves the event to be
handled again once the lease expires (at least once).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update

from dicomvault.index.db import Database
from dicomvault.index.schema import event_cursors, events
from dicomvault.index.upsert import insert_ignore
from dicomvault.jobs.queue import now

__all__ = [
    "advance",
    "claim_cursor",
    "dead_letter",
    "ensure_cursors",
    "record_failure",
    "release",
    "renew_cursor",
]


def ensure_cursors(db: Database, names: list[str]) -> None:
    """Create the cursor of each subscriber that has none yet (starting at the beginning)."""
    if not names:
        return
    with db.write() as conn:
        for name in names:
            conn.execute(insert_ignore(conn, event_cursors, ["name"]).values(name=name, seq=0))


def claim_cursor(db: Database, name: str, worker: str, lease: float) -> tuple[int, int] | None:
    """Lease the cursor `name` if it is free, due and behind the log: (seq, attempts)."""
    at = now()
    with db.read() as conn:
        last = conn.execute(select(func.max(events.c.seq))).scalar()
        mine = conn.execute(select(event_cursors.c.seq).where(event_cursors.c.name == name))
        seq = mine.scalar()
    if last is None or seq is None or int(seq) >= int(last):
        return None
    with db.write() as conn:
        row = conn.execute(
            update(event_cursors)
            .where(
                event_cursors.c.name == name,
                or_(event_cursors.c.locked_until.is_(None), event_cursors.c.locked_until < at),
                or_(event_cursors.c.run_after.is_(None), event_cursors.c.run_after <= at),
            )
            .values(locked_by=worker, locked_until=at + timedelta(seconds=lease))
            .returning(event_cursors.c.seq, event_cursors.c.attempts)
        ).first()
    return None if row is None else (int(row.seq), int(row.attempts))


def _mine(name: str, worker: str) -> Any:
    return and_(event_cursors.c.name == name, event_cursors.c.locked_by == worker)


def renew_cursor(db: Database, name: str, worker: str, lease: float) -> bool:
    with db.write() as conn:
        changed = conn.execute(
            update(event_cursors)
            .where(_mine(name, worker))
            .values(locked_until=now() + timedelta(seconds=lease))
        ).rowcount
    return changed == 1


def advance(db: Database, name: str, worker: str, seq: int) -> bool:
    """Move the cursor to `seq` (handled) and clear its failures; False if the lease was lost."""
    with db.write() as conn:
        changed = conn.execute(
            update(event_cursors)
            .where(_mine(name, worker))
            .values(seq=seq, attempts=0, last_error=None, run_after=None)
        ).rowcount
    return changed == 1


def record_failure(
    db: Database, name: str, worker: str, attempts: int, error: str, retry_at: datetime
) -> None:
    with db.write() as conn:
        conn.execute(
            update(event_cursors)
            .where(_mine(name, worker))
            .values(attempts=attempts, last_error=error[-4000:], run_after=retry_at)
        )


def release(db: Database, name: str, worker: str) -> None:
    with db.write() as conn:
        conn.execute(
            update(event_cursors)
            .where(_mine(name, worker))
            .values(locked_by=None, locked_until=None)
        )


def dead_letter(
    db: Database, name: str, worker: str, event: dict[str, Any], error: str, attempts: int
) -> bool:
    """Give up on one event: keep it as a dead job `event:<name>` and move past it, atomically."""
    from dicomvault.jobs.queue import enqueue
    from dicomvault.jobs.registry import EVENT_JOB_PREFIX

    with db.write() as conn:
        changed = conn.execute(
            update(event_cursors)
            .where(_mine(name, worker))
            .values(seq=event["seq"], attempts=0, last_error=None, run_after=None)
        ).rowcount
        if changed != 1:
            return False
        enqueue(
            conn,
            EVENT_JOB_PREFIX + name,
            {"event": event},
            key=f"{EVENT_JOB_PREFIX}{name}:{event['seq']}",
            max_attempts=attempts,
            state="dead",
            last_error=error,
        )
    return True
