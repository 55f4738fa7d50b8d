"""Alembic environment: runs on the connection handed over by `dicomvault.index.migrate`."""

from __future__ import annotations

from alembic import context

from dicomvault.index.schema import include_for, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_object=include_for(connection.dialect.name),
)
with context.begin_transaction():
    context.run_migrations()
