"""The index schema: patient / study / series / instance, objects, and the event log.

Each level keeps its QIDO-RS / C-FIND attributes as columns (indexed where queries
filter on them); every instance also keeps its full header as DICOM JSON
(PS3.18 Annex F, bulk data replaced by BulkDataURIs), JSONB on PostgreSQL.
Person names have an upper-cased twin column so matching is case-insensitive
and still uses an index. Alembic migrations in `migrations/` must match this
module; a test compares them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "event_cursors",
    "events",
    "include_for",
    "instances",
    "jobs",
    "metadata",
    "objects",
    "orphan_objects",
    "patients",
    "series",
    "studies",
    "study_readiness",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

HeaderJSON = JSON().with_variant(JSONB(), "postgresql")
Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite's rowid alias must be INTEGER


def _created() -> Column[object]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


patients = Table(
    "patients",
    metadata,
    Column("id", Id, primary_key=True),
    Column("patient_id", String(64), nullable=False, server_default=""),
    Column("issuer", String(64), nullable=False, server_default=""),
    Column("patient_name", String(324)),
    Column("patient_name_norm", String(324)),
    Column("birth_date", String(8)),
    Column("sex", String(16)),
    _created(),
    UniqueConstraint("patient_id", "issuer"),
    Index(None, "patient_name_norm"),
)

studies = Table(
    "studies",
    metadata,
    Column("id", Id, primary_key=True),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("patient_fk", ForeignKey("patients.id"), nullable=False, index=True),
    Column("study_date", String(8), index=True),
    Column("study_time", String(16)),
    Column("accession_number", String(16), index=True),
    Column("study_id", String(16)),
    Column("referring_physician", String(324)),
    Column("referring_physician_norm", String(324)),
    Column("description", String(64)),
    # The site the study belongs to (set by its first instance's origin; see model/origin.py).
    Column("site", String(64), index=True),
    Column("num_series", Integer, nullable=False, server_default="0"),
    Column("num_instances", Integer, nullable=False, server_default="0"),
    _created(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

series = Table(
    "series",
    metadata,
    Column("id", Id, primary_key=True),
    Column("series_uid", String(64), nullable=False, unique=True),
    Column("study_fk", ForeignKey("studies.id"), nullable=False, index=True),
    Column("modality", String(16), index=True),
    Column("series_number", Integer),
    Column("description", String(64)),
    Column("body_part", String(16)),
    Column("series_date", String(8)),
    Column("series_time", String(16)),
    Column("performed_start_date", String(8)),
    Column("performed_start_time", String(16)),
    Column("num_instances", Integer, nullable=False, server_default="0"),
    _created(),
)

instances = Table(
    "instances",
    metadata,
    Column("id", Id, primary_key=True),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("series_fk", ForeignKey("series.id"), nullable=False, index=True),
    Column("study_fk", ForeignKey("studies.id"), nullable=False, index=True),
    Column("sop_class_uid", String(64), nullable=False, index=True),
    Column("instance_number", Integer),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("bits_allocated", Integer),
    Column("number_of_frames", Integer),
    Column("transfer_syntax", String(64), nullable=False),
    # Where the Pixel Data value starts in the stored object, and its length
    # (None when undefined, i.e. encapsulated): frames are served by ranged reads.
    Column("pixel_offset", BigInteger),
    Column("pixel_length", BigInteger),
    Column("header", HeaderJSON, nullable=False),
    Column("object_fk", ForeignKey("objects.id"), nullable=False),
    # Provenance: the door it came through, the sending AE (DIMSE) and its site.
    Column("origin_door", String(16), nullable=False, server_default="api"),
    Column("calling_aet", String(16)),
    Column("site", String(64), index=True),
    _created(),
)
# Any-attribute query (index/header_match.py): JSONB containment answered by a GIN index.
# PostgreSQL only: SQLite matches with JSON functions, and a B-tree copy of every header
# there would only double the file.
Index(
    "ix_instances_header",
    instances.c.header,
    postgresql_using="gin",
    postgresql_ops={"header": "jsonb_path_ops"},
).ddl_if(dialect="postgresql")

objects = Table(
    "objects",
    metadata,
    Column("id", Id, primary_key=True),
    Column("sop_uid", String(64), nullable=False, index=True),
    Column("store", Text, nullable=False),
    Column("key", Text, nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    # The digest of each 1 MiB block, concatenated (storage/base.py): ranges are
    # checked by reading only their blocks, and streams block by block. BLAKE3 for
    # objects written now; SHA-256 for objects written before BLAKE3 (block_blake3
    # NULL); both NULL for objects written before block digests.
    Column("block_blake3", LargeBinary),
    Column("block_sha256", LargeBinary),
    Column("tier", String(16), nullable=False, server_default="hot"),
    # current: served for its instance; superseded: an older version kept by policy.
    Column("state", String(16), nullable=False, server_default="current"),
    _created(),
)

# The outbox: one row per change, written in the transaction of the change itself.
# Its sequence numbers are the order in which consumers see changes: they are given
# by `index.eventlog.append_event` under a lock, so they are gap-free and in commit order.
events = Table(
    "events",
    metadata,
    Column("seq", Id, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("series_uid", String(64)),
    Column("sop_uid", String(64)),
    Column("payload", HeaderJSON),
    _created(),
)

# The durable job queue. `active_key` holds the job's dedupe key while it is pending or
# running and is cleared when it ends, so a unique constraint on it makes "enqueue a key
# that is already queued" a no-op without a partial index. A running job is leased:
# `locked_by` names the worker and `locked_until` is when another worker may take it
# back (the first one died: SIGKILL, power loss).
jobs = Table(
    "jobs",
    metadata,
    Column("id", Id, primary_key=True),
    Column("kind", String(64), nullable=False, index=True),
    Column("key", String(255)),
    Column("active_key", String(255), unique=True),
    Column("payload", HeaderJSON, nullable=False),
    # pending -> running -> done | pending (retry with backoff) | dead (dead letter)
    Column("state", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    Column("run_after", DateTime(timezone=True), nullable=False),
    Column("locked_by", String(128)),
    Column("locked_until", DateTime(timezone=True)),
    Column("last_error", Text),
    _created(),
    Column("finished_at", DateTime(timezone=True)),
    Index(None, "state", "run_after"),
)

# One row per event subscriber (`jobs.on_event`): the last event seq it has handled,
# leased like a job so that one worker at a time feeds it, in seq order.
event_cursors = Table(
    "event_cursors",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("seq", BigInteger, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("run_after", DateTime(timezone=True)),
    Column("locked_by", String(128)),
    Column("locked_until", DateTime(timezone=True)),
    Column("last_error", Text),
)

# Study stable and ready (pipeline/study_ready.py): the seq of the newest instance event
# of each study, when it arrived, the seq `study.ready` / `study.updated` was last told
# for, and when to check next (`due_at`, cleared once told: the index finds the few due).
study_readiness = Table(
    "study_readiness",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("last_change_at", DateTime(timezone=True), nullable=False),
    Column("told_seq", BigInteger),
    Column("ready_at", DateTime(timezone=True)),
    Column("due_at", DateTime(timezone=True), index=True),
)

# The reconciler (pipeline/reconcile.py): objects found in the store without an index
# row, and when first seen; they are adopted or removed once older than the grace period.
orphan_objects = Table(
    "orphan_objects",
    metadata,
    Column("key", String(1024), primary_key=True),
    Column("first_seen", DateTime(timezone=True), nullable=False),
)


def include_for(dialect: str) -> Callable[..., bool]:
    """An Alembic `include_object` that leaves out what `ddl_if` reserves to other
    dialects (the GIN index on SQLite), which autogenerate would otherwise report."""

    def include(obj: Any, _name: str | None, _type: str, reflected: bool, _other: Any) -> bool:
        condition = getattr(obj, "_ddl_if", None)
        if reflected or condition is None or condition.dialect is None:
            return True
        return bool(condition.dialect == dialect)

    return include


# Access control and audit tables live with their component, on this same metadata;
# imported last because they use `metadata` and `Id` from above.
from dicomvault.access import tables as _access_tables  # noqa: E402, F401
from dicomvault.dimse import tables as _dimse_tables  # noqa: E402, F401
