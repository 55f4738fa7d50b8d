"""`INSERT ... ON CONFLICT DO NOTHING` for both SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

__all__ = ["insert_ignore"]


def insert_ignore(conn: Connection | str, table: Table, conflict_columns: list[str]) -> Any:
    """An insert that does nothing when a row with the same `conflict_columns` exists,
    for the dialect of `conn` (or the dialect named)."""
    name = conn if isinstance(conn, str) else conn.dialect.name
    dialect = postgresql if name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=conflict_columns)
