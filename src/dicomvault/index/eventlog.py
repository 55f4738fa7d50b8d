"""Appending to the event log (`events`) with gap-free sequence numbers in commit order.

An autoincrement column is not enough for consumers that read "everything after
seq N": on PostgreSQL two transactions can take seq 4 and 5, and 5 can commit
first; a reader that saw 5 and moved its cursor past it would never see 4. And a
rolled-back transaction burns its number, leaving a gap. So every append takes a
transaction-scoped lock first (an advisory lock on PostgreSQL; SQLite's writes are
already serialized by `Database.write`) and numbers the event max(seq) + 1: the
numbers are given in the order the transactions commit, and a rollback gives its
number back. The lock is taken as the last step of a writing transaction and held
only until its commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, text

from dicomvault.index.db import Database
from dicomvault.index.prepared import Prepared
from dicomvault.index.schema import events

__all__ = ["append_event", "event_dict", "events_after", "last_seq"]

# pg_advisory_xact_lock key of the event log: any constant, the same in every process.
_EVENT_LOCK = 0x44564556  # "DVEV"


def append_event(
    conn: Connection,
    kind: str,
    study_uid: str,
    *,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    payload: dict[str, Any] | None = None,
) -> int:
    """Add one event inside the caller's transaction; returns its sequence number."""
    if conn.dialect.name == "postgresql":
        _LOCK.execute(conn, {"key": _EVENT_LOCK})
    values = {
        "kind": kind,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "sop_uid": sop_uid,
        "payload": payload,
    }
    return int(_APPEND.scalar(conn, values))


# Built once and run on the driver's cursor (`index.prepared`): numbering and inserting
# in one statement, which runs for every instance stored.
_LOCK = Prepared(text("SELECT pg_advisory_xact_lock(:key)"))
_COLUMNS = ("kind", "study_uid", "series_uid", "sop_uid", "payload")
_APPEND = Prepared(
    events.insert()
    .from_select(
        ["seq", *_COLUMNS],
        select(
            func.coalesce(func.max(events.c.seq), 0) + 1,
            *(bindparam(name, type_=events.c[name].type) for name in _COLUMNS),
        ),
    )
    .returning(events.c.seq)
)


def event_dict(row: Any) -> dict[str, Any]:
    """An event as subscribers and the change feed see it."""
    m = row._mapping
    created = m["created_at"]
    return {
        "seq": int(m["seq"]),
        "kind": m["kind"],
        "study_uid": m["study_uid"],
        "series_uid": m["series_uid"],
        "sop_uid": m["sop_uid"],
        "payload": m["payload"] or {},
        "created_at": created.isoformat() if isinstance(created, datetime) else created,
    }


def events_after(db: Database, seq: int, limit: int) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(
            select(events).where(events.c.seq > seq).order_by(events.c.seq).limit(limit)
        ).all()
    return [event_dict(row) for row in rows]


def last_seq(db: Database) -> int:
    """The newest event's sequence number (0: none yet)."""
    with db.read() as conn:
        return int(conn.execute(select(func.coalesce(func.max(events.c.seq), 0))).scalar_one())
