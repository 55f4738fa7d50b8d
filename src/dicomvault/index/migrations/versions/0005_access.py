"""access control, audit and key rotation: sites, users, tokens, audit, audit_head, object_keys

Revision ID: 0005
Revises: 0003d
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003d"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _now() -> sa.Column[object]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), server_default="", nullable=False),
        sa.Column("organization", sa.String(length=64), server_default="", nullable=False),
        sa.Column("org_shared", sa.Boolean(), server_default=sa.false(), nullable=False),
        _now(),
        sa.PrimaryKeyConstraint("code", name="pk_sites"),
    )
    op.create_table(
        "users",
        sa.Column("id", _Id, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=True),
        sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        _now(),
        sa.ForeignKeyConstraint(["site"], ["sites.code"], name="fk_users_site_sites"),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
    )
    op.create_table(
        "tokens",
        sa.Column("id", _Id, nullable=False),
        sa.Column("user_fk", _Id, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        _now(),
        sa.ForeignKeyConstraint(["user_fk"], ["users.id"], name="fk_tokens_user_fk_users"),
        sa.PrimaryKeyConstraint("id", name="pk_tokens"),
    )
    op.create_index("ix_tokens_user_fk", "tokens", ["user_fk"], unique=False)
    op.create_table(
        "audit",
        sa.Column("seq", _Id, autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("actor_kind", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("door", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit"),
    )
    for column in ("actor", "patient_id", "study_uid", "at"):
        op.create_index(f"ix_audit_{column}", "audit", [column], unique=False)
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", _Id, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
    )

    op.create_table(
        "object_keys",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(length=200), nullable=False),
        sa.Column("wrapped", sa.Text(), nullable=False),
        sa.Column(
            "rotated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("key", name="pk_object_keys"),
    )
    op.create_index("ix_object_keys_key_id", "object_keys", ["key_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_object_keys_key_id", table_name="object_keys")
    op.drop_table("object_keys")
    op.drop_table("audit_head")
    for column in ("actor", "patient_id", "study_uid", "at"):
        op.drop_index(f"ix_audit_{column}", table_name="audit")
    op.drop_table("audit")
    op.drop_index("ix_tokens_user_fk", table_name="tokens")
    op.drop_table("tokens")
    op.drop_table("users")
    op.drop_table("sites")
