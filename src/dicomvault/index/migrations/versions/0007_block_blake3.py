"""block digests in BLAKE3: objects written from now on record block_blake3

Objects written before keep their SHA-256 block digests (block_sha256) and are still
checked with them; nothing is rehashed.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("objects") as batch:
        batch.add_column(sa.Column("block_blake3", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("objects") as batch:
        batch.drop_column("block_blake3")
