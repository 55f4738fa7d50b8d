"""provenance: the site of a study; the door, calling AE and site of an instance

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("site", sa.String(length=64), nullable=True))
        batch.create_index("ix_studies_site", ["site"], unique=False)
    with op.batch_alter_table("instances") as batch:
        batch.add_column(
            sa.Column("origin_door", sa.String(length=16), server_default="api", nullable=False)
        )
        batch.add_column(sa.Column("calling_aet", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("site", sa.String(length=64), nullable=True))
        batch.create_index("ix_instances_site", ["site"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_index("ix_instances_site")
        batch.drop_column("site")
        batch.drop_column("calling_aet")
        batch.drop_column("origin_door")
    with op.batch_alter_table("studies") as batch:
        batch.drop_index("ix_studies_site")
        batch.drop_column("site")
