"""study stable and ready: study_readiness

Revision ID: 0003c
Revises: 0003b
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003c"
down_revision = "0003b"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_readiness",
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_change_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("told_seq", sa.BigInteger(), nullable=True),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("study_uid", name=op.f("pk_study_readiness")),
    )
    op.create_index("ix_study_readiness_due_at", "study_readiness", ["due_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_study_readiness_due_at", table_name="study_readiness")
    op.drop_table("study_readiness")
