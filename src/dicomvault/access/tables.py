"""The tables of access control and audit, on the index's one `metadata`.

`index/schema.py` imports this module, so migrations and the schema comparison
test see these tables like every other.

- `sites`: a site code (`RAJ`), its name, its organization, and whether it shares
  its studies with the other sites of its organization (`org_shared`).
- `users`: local accounts (argon2 password hash), one role, a home site (none: every
  site, for an organization-wide admin), disabled flag.
- `tokens`: long-lived API tokens and login sessions; only a SHA-256 of the secret is
  kept (the secret is 32 random bytes, so a slow hash adds nothing but latency).
- `audit`: append-only, each record carrying the hash of the one before it.
- `audit_head`: the last sequence number and hash, written in the same transaction as
  the record, so that deleting the newest records is detected too.
- `object_keys`: data keys of encrypted objects re-wrapped by a newer master key (key
  rotation): the object keeps its original header, this row wins over it.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    false,
    func,
)

from dicomvault.index.schema import Id, metadata

__all__ = ["audit", "audit_head", "object_keys", "sites", "tokens", "users"]

sites = Table(
    "sites",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("name", String(200), nullable=False, server_default=""),
    Column("organization", String(64), nullable=False, server_default=""),
    Column("org_shared", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("password_hash", Text),
    Column("role", String(32), nullable=False),
    Column("site", ForeignKey("sites.code")),
    Column("disabled", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Id, primary_key=True),
    Column("user_fk", ForeignKey("users.id"), nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("secret_sha256", String(64), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

audit = Table(
    "audit",
    metadata,
    Column("seq", Id, primary_key=True, autoincrement=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("actor_kind", String(16), nullable=False),
    Column("address", String(64)),
    Column("door", String(16), nullable=False),
    Column("action", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("patient_id", String(64)),
    Column("study_uid", String(64)),
    Column("detail", JSON),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index(None, "actor"),
    Index(None, "patient_id"),
    Index(None, "study_uid"),
    Index(None, "at"),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Id, nullable=False),
    Column("hash", String(64), nullable=False),
)

object_keys = Table(
    "object_keys",
    metadata,
    Column("key", Text, primary_key=True),
    Column("key_id", String(200), nullable=False, index=True),
    Column("wrapped", Text, nullable=False),  # base64
    Column("rotated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
