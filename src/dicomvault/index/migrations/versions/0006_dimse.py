"""the DIMSE door: known AEs (aets) and auto-routing rules (routes)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _now() -> sa.Column[object]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "aets",
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("tls", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=True),
        sa.Column("may_store", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("may_query", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("may_retrieve", sa.Boolean(), server_default=sa.true(), nullable=False),
        _now(),
        sa.PrimaryKeyConstraint("ae_title", name="pk_aets"),
    )
    op.create_table(
        "routes",
        sa.Column("id", _Id, nullable=False),
        sa.Column("from_aet", sa.String(length=16), nullable=False),
        sa.Column("to_aet", sa.String(length=16), nullable=False),
        _now(),
        sa.PrimaryKeyConstraint("id", name="pk_routes"),
    )
    op.create_index("ix_routes_from_aet", "routes", ["from_aet"])


def downgrade() -> None:
    op.drop_index("ix_routes_from_aet", table_name="routes")
    op.drop_table("routes")
    op.drop_table("aets")
