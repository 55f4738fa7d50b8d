"""The audit trail: one append-only, hash-chained record per access to or change of
patient data, and per login, failed login and refusal.

Each record carries the SHA-256 of its own content and of the record before it; the
newest sequence number and hash are also kept in `audit_head`, written in the same
transaction. `verify` walks the chain: an edited record no longer matches its hash,
a deleted one breaks the link of the next (or, for the newest, the head). Appends
are serialized so the chain stays one line with several servers writing: by
SQLite's write lock; on PostgreSQL by the lock on the head's row (`SELECT ... FOR
UPDATE`, which after waiting reads the head as the append before left it), and, while
there is no head yet, by a transaction-scoped advisory lock. There a record whose
head exists is one statement run on its own (no BEGIN, no COMMIT): it locks the head,
computes the record's hash in SQL (`sha256` of the same canonical text, the sequence
number spliced in), inserts the record and moves the head. Every request writes a
record, and each statement is a round trip to the server during which the head stays
locked.

Records also carry the DICOM audit event id (DCM 110100-110114, PS3.15 A.5) and
event action code where one applies, for SIEMs that speak the DICOM audit profile.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, bindparam, select, text

from dicomvault.access.tables import audit, audit_head
from dicomvault.index.db import Database
from dicomvault.index.prepared import Prepared

__all__ = [
    "AuditAction",
    "AuditEvent",
    "AuditProblem",
    "Outcome",
    "append",
    "event_code",
    "search",
    "verify",
]

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_HEAD_ID = 1
_PG_LOCK_KEY = 0x6476_6175  # "dvau": one advisory lock id for audit appends


class AuditAction(StrEnum):
    QUERY = "query"
    RETRIEVE = "retrieve"
    STORE = "store"
    DELETE = "delete"
    EXPORT = "export"
    LOGIN = "login"
    LOGIN_FAILED = "login-failed"
    PERMISSION_DENIED = "permission-denied"
    AUDIT_USED = "audit-used"
    ACCESS = "access"  # a route without a more specific action (admins only)


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


# DICOM audit message event id (DCM code, meaning) and EventActionCode (PS3.15 A.5.3).
_CODES: dict[AuditAction, tuple[str, str, str]] = {
    AuditAction.QUERY: ("110112", "Query", "E"),
    AuditAction.RETRIEVE: ("110104", "DICOM Instances Transferred", "R"),
    AuditAction.STORE: ("110104", "DICOM Instances Transferred", "C"),
    AuditAction.DELETE: ("110105", "DICOM Study Deleted", "D"),
    AuditAction.EXPORT: ("110106", "Export", "R"),
    AuditAction.LOGIN: ("110114", "User Authentication", "E"),
    AuditAction.LOGIN_FAILED: ("110114", "User Authentication", "E"),
    AuditAction.PERMISSION_DENIED: ("110113", "Security Alert", "E"),
    AuditAction.AUDIT_USED: ("110101", "Audit Log Used", "R"),
    AuditAction.ACCESS: ("110103", "DICOM Instances Accessed", "R"),
}
# EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure.
_OUTCOME_CODES = {Outcome.SUCCESS: 0, Outcome.FAILURE: 4, Outcome.DENIED: 4}


def event_code(action: AuditAction) -> dict[str, str]:
    code, meaning, action_code = _CODES[action]
    return {"code": code, "scheme": "DCM", "meaning": meaning, "action_code": action_code}


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, before it gets its place (seq, time, hashes) in the chain."""

    actor: str
    actor_kind: str  # user | token | oidc | ae | local | anonymous
    door: str
    action: AuditAction
    outcome: Outcome
    address: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditProblem:
    seq: int | None
    reason: str


def _moment(value: datetime) -> str:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds")


def _content(row: dict[str, Any]) -> dict[str, Any]:
    """The hashed fields of a record, as plain JSON values."""
    return {
        "seq": int(row["seq"]),
        "at": _moment(row["at"]),
        "actor": row["actor"],
        "actor_kind": row["actor_kind"],
        "address": row["address"],
        "door": row["door"],
        "action": row["action"],
        "outcome": row["outcome"],
        "patient_id": row["patient_id"],
        "study_uid": row["study_uid"],
        "detail": row["detail"] or {},
    }


def _canonical(content: dict[str, Any]) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _hash(prev_hash: str, content: dict[str, Any]) -> str:
    return hashlib.sha256(f"{prev_hash}\n{_canonical(content)}".encode()).hexdigest()


def _around_seq(content: dict[str, Any]) -> tuple[str, str]:
    """The canonical text of `content` before and after its sequence number's digits.

    Keys are sorted, so `seq` is the top-level key before `study_uid`, the last; a
    `"seq":` within `detail` comes earlier in the text, and one inside a string value
    would have its quotes escaped. Hence the last occurrence is the one to split at."""
    text = _canonical({**content, "seq": 0})
    before, found, after = text.rpartition('"seq":0')
    if not found:  # pragma: no cover - the key is always there
        raise AssertionError("no seq in an audit record's content")
    return before + '"seq":', after


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    """A record as the JSON line sinks and `audit search` print."""
    action = AuditAction(row["action"])
    return {
        **_content(row),
        "event": event_code(action),
        "outcome_code": _OUTCOME_CODES[Outcome(row["outcome"])],
        "hash": row["hash"],
    }


def append(db: Database, event: AuditEvent) -> dict[str, Any]:
    """Add one record at the end of the chain; return it."""
    row: dict[str, Any] = {
        "at": datetime.now(UTC),
        "actor": event.actor[:200],
        "actor_kind": event.actor_kind,
        "address": event.address[:64] if event.address else None,
        "door": event.door,
        "action": event.action.value,
        "outcome": event.outcome.value,
        "patient_id": event.patient_id[:64] if event.patient_id else None,
        "study_uid": event.study_uid,
        "detail": event.detail,
    }
    if not db.is_sqlite and _append_alone(db, row):
        return row
    with db.write() as conn:
        if db.is_sqlite:
            head = _HEAD.first(conn, {})
        else:
            head = _HEAD_LOCKED.first(conn, {})
            if head is None:  # no head yet: first ones queue on the key, then look again
                _LOCK.execute(conn, {"key": _PG_LOCK_KEY})
                head = _HEAD_LOCKED.first(conn, {})
        seq, prev = (int(head[0]) + 1, head[1]) if head is not None else (1, GENESIS)
        row["seq"] = seq
        row["prev_hash"] = prev
        row["hash"] = _hash(prev, _content(row))
        if head is None:
            _INSERT.execute(conn, row)
            _INSERT_HEAD.execute(conn, {"id": _HEAD_ID, "seq": seq, "hash": row["hash"]})
        elif db.is_sqlite:
            _INSERT.execute(conn, row)
            _MOVE_HEAD.execute(conn, {"new_seq": seq, "new_hash": row["hash"]})
        else:
            _INSERT_MOVING_HEAD.execute(conn, {**row, "new_seq": seq, "new_hash": row["hash"]})
    return row


def _append_alone(db: Database, row: dict[str, Any]) -> bool:
    """PostgreSQL: append `row` (filled in: seq and hashes) with one statement committed
    on its own; False, nothing written, when there is no head yet."""
    before, after = _around_seq(_content({**row, "seq": 0}))
    found = _APPEND_ALONE.lookup(db, {**row, "before": before, "after": after, "id": _HEAD_ID})
    if found is None:
        return False
    row["seq"], row["prev_hash"], row["hash"] = int(found[0]), found[1], found[2]
    text = f"{row['prev_hash']}\n{before}{row['seq']}{after}"  # what `_hash` would hash
    if row["hash"] != hashlib.sha256(text.encode()).hexdigest():
        # The database hashed other text than Python would (a server encoding other
        # than UTF-8, say): the record is in, and `verify` will name it.
        log.error("audit record %s: the hash PostgreSQL computed does not verify", row["seq"])
    return True


# The statements of `append`, built once and run on the driver's cursor
# (`index.prepared`): every access and change writes a record.
_LOCK = Prepared(text("SELECT pg_advisory_xact_lock(:key)"))
_HEAD = Prepared(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == _HEAD_ID))
_INSERT = Prepared(audit.insert())
_INSERT_HEAD = Prepared(audit_head.insert())
_MOVE_HEAD = Prepared(
    audit_head.update()
    .where(audit_head.c.id == _HEAD_ID)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
# PostgreSQL only: the head's row locked (see the module doc), and the record and the
# head's move in one statement (a data-modifying WITH, which SQLite lacks).
_HEAD_LOCKED = Prepared(
    select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == _HEAD_ID).with_for_update()
)
# PostgreSQL: a record appended by one statement on its own (see the module doc). The
# hash is SHA-256 of "<previous hash>\n<canonical content>", the content's text spliced
# around the new sequence number as `_hash` would make it.
_APPEND_ALONE = Prepared(
    text(
        """
        WITH head AS (
            SELECT seq, hash FROM audit_head WHERE id = :id FOR UPDATE
        ), record AS (
            SELECT seq + 1 AS seq, hash AS prev_hash,
                encode(sha256(convert_to(
                    hash || chr(10) || :before || CAST(seq + 1 AS text) || :after, 'UTF8'
                )), 'hex') AS hash
            FROM head
        ), inserted AS (
            INSERT INTO audit (seq, at, actor, actor_kind, address, door, action, outcome,
                patient_id, study_uid, detail, prev_hash, hash)
            SELECT seq, :at, :actor, :actor_kind, :address, :door, :action, :outcome,
                :patient_id, :study_uid, CAST(:detail AS json), prev_hash, hash
            FROM record
            RETURNING seq, prev_hash, hash
        ), moved AS (
            UPDATE audit_head SET seq = inserted.seq, hash = inserted.hash
            FROM inserted WHERE audit_head.id = :id
        )
        SELECT seq, prev_hash, hash FROM inserted
        """
    ).bindparams(
        bindparam("at", type_=audit.c.at.type),
        bindparam("detail", type_=audit.c.detail.type),
    )
)
_INSERT_MOVING_HEAD = Prepared(
    audit.insert().add_cte(
        audit_head.update()
        .where(audit_head.c.id == _HEAD_ID)
        .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
        .cte("moved_head")
    )
)


def _rows(conn: Connection, batch: int = 1000) -> Iterator[dict[str, Any]]:
    last = 0
    while True:
        rows = (
            conn.execute(select(audit).where(audit.c.seq > last).order_by(audit.c.seq).limit(batch))
            .mappings()
            .all()
        )
        if not rows:
            return
        for row in rows:
            yield dict(row)
        last = int(rows[-1]["seq"])


def verify(
    db: Database, progress: Callable[[int], None] | None = None
) -> tuple[int, list[AuditProblem]]:
    """Walk the whole chain; return how many records were checked and what is wrong."""
    problems: list[AuditProblem] = []
    checked = 0
    prev = GENESIS
    expected_seq = 1
    with db.read() as conn:
        head = conn.execute(
            select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == _HEAD_ID)
        ).first()
        for row in _rows(conn):
            seq = int(row["seq"])
            if seq != expected_seq:
                problems.append(AuditProblem(seq, f"records {expected_seq}..{seq - 1} are missing"))
            if row["prev_hash"] != prev:
                problems.append(AuditProblem(seq, "does not link to the record before it"))
            if _hash(row["prev_hash"], _content(row)) != row["hash"]:
                problems.append(AuditProblem(seq, "its content does not match its hash (edited)"))
            prev = row["hash"]
            expected_seq = seq + 1
            checked += 1
            if progress is not None:
                progress(1)
    if head is None and checked:
        problems.append(AuditProblem(None, "the chain head is missing"))
    elif head is not None and (int(head.seq) != expected_seq - 1 or head.hash != prev):
        problems.append(
            AuditProblem(
                int(head.seq),
                f"the newest record should be {head.seq}; the chain ends at {expected_seq - 1} "
                "(records at the end were deleted or the head was changed)",
            )
        )
    return checked, problems


def count(db: Database) -> int:
    with db.read() as conn:
        head = conn.execute(select(audit_head.c.seq).where(audit_head.c.id == _HEAD_ID)).first()
    return int(head.seq) if head is not None else 0


def search(
    db: Database,
    *,
    actor: str | None = None,
    patient_id: str | None = None,
    study_uid: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_seq: int = 0,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Records matching every given filter, oldest first. `actor` matches a user name
    with or without the token suffix (`ann` finds `ann (token 3)`)."""
    query = select(audit).where(audit.c.seq > after_seq)
    if actor is not None:
        query = query.where((audit.c.actor == actor) | audit.c.actor.like(f"{actor} (%"))
    if patient_id is not None:
        query = query.where(audit.c.patient_id == patient_id)
    if study_uid is not None:
        query = query.where(audit.c.study_uid == study_uid)
    if action is not None:
        query = query.where(audit.c.action == action)
    if since is not None:
        query = query.where(audit.c.at >= since)
    if until is not None:
        query = query.where(audit.c.at <= until)
    with db.read() as conn:
        rows = conn.execute(query.order_by(audit.c.seq).limit(limit)).mappings().all()
    return [dict(row) for row in rows]
