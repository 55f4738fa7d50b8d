"""any-attribute query: GIN index (jsonb_path_ops) on instances.header, PostgreSQL only

Revision ID: 0003b
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0003b"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_instances_header",
            "instances",
            ["header"],
            unique=False,
            postgresql_using="gin",
            postgresql_ops={"header": "jsonb_path_ops"},
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_instances_header", table_name="instances")
