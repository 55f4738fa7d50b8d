"""reconciler: orphan_objects

Revision ID: 0003d
Revises: 0003c
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003d"
down_revision = "0003c"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orphan_objects",
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_orphan_objects")),
    )


def downgrade() -> None:
    op.drop_table("orphan_objects")
