"""The Alembic migration builds exactly the schema of index/schema.py, on SQLite and PostgreSQL.

`dicomvault db upgrade` runs (as the real command) on an empty database of the
backend under test, twice; the result is compared with the metadata by
Alembic's autogenerate comparison: tables, columns, types, nullability, server
defaults, indexes, unique constraints and foreign keys.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, create_engine, inspect, text
from sqlalchemy.engine import make_url

from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.index import migrate
from dicomvault.index.db import Database, normalize_url
from dicomvault.index.schema import include_for, metadata
from tests.support.cli import command_env, dicomvault


def _same_default(
    _context: MigrationContext,
    _inspected_column: Any,
    _metadata_column: Column[Any],
    inspected_default: str | None,
    _metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    """Defaults equal but for their spelling are the same: '' is reported as ('') by
    SQLite and as ''::character varying by PostgreSQL. Anything else: Alembic decides."""
    if inspected_default is None or rendered_metadata_default is None:
        return None
    if _bare(inspected_default) == _bare(rendered_metadata_default):
        return False
    return None


def _bare(default: str) -> str:
    value = default.split("::", 1)[0].strip()
    while value.startswith("(") and value.endswith(")"):
        value = value[1:-1].strip()
    return value.strip("'")


def differences(url: str) -> list[Any]:
    """What Alembic would change to make the database at `url` match the metadata."""
    db = Database(url)
    try:
        with db.read() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "compare_server_default": _same_default,
                    "include_object": include_for(conn.dialect.name),
                },
            )
            return list(compare_metadata(context, metadata))
    finally:
        db.dispose()


@pytest.fixture
def empty_database(settings: Settings, backend: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings naming a database with no tables at all, on the backend under test."""
    if backend == "sqlite":
        yield Settings(data_dir=tmp_path / "fresh")
        return
    assert settings.database_url is not None
    name = f"migrate_{secrets.token_hex(4)}"
    admin = create_engine(normalize_url(settings.database_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(settings.database_url).set(database=name)
    try:
        yield settings.model_copy(
            update={"database_url": url.render_as_string(hide_password=False)}
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def test_db_upgrade_builds_the_schema_and_is_idempotent(empty_database: Settings) -> None:
    url = empty_database.effective_database_url
    env = command_env(empty_database)

    first = dicomvault("db", "upgrade", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    head = migrate.head_revision(Database(url))
    assert f"(empty) -> {head}" in first.stdout
    assert differences(url) == []

    second = dicomvault("db", "upgrade", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{head} -> {head}" in second.stdout
    assert differences(url) == []

    current = dicomvault("db", "current", env=env)
    assert current.returncode == 0
    assert f"current {head}, newest {head}" in current.stdout


def test_the_comparison_sees_a_drifted_schema(empty_database: Settings) -> None:
    """The check above can fail: a column dropped behind Alembic's back is reported."""
    url = empty_database.effective_database_url
    db = Database(url)
    try:
        migrate.upgrade(db)
        with db.write() as conn:
            conn.execute(text("DROP INDEX ix_series_modality"))
            conn.execute(text("ALTER TABLE events DROP COLUMN payload"))
    finally:
        db.dispose()
    found = {(d[0], getattr(d[-1], "name", None)) for d in differences(url)}
    assert ("add_index", "ix_series_modality") in found
    assert ("add_column", "payload") in found


def test_the_archive_opens_on_the_migrated_schema_unchanged(archive: Archive) -> None:
    """Archive.open migrates at start; the result has no differences and the tables it needs."""
    assert differences(archive.db.url) == []
    with archive.db.read() as conn:
        tables = set(inspect(conn).get_table_names())
    assert {t.name for t in metadata.sorted_tables} | {"alembic_version"} == tables
