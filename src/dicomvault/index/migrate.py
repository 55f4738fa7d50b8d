"""Schema migrations (Alembic), run with `dicomvault db upgrade` or at start-up."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from dicomvault.index.db import Database

__all__ = ["current_revision", "head_revision", "upgrade"]

_SCRIPTS = Path(__file__).parent / "migrations"


def _config(db: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    return config


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema to `revision` (the newest by default); a no-op when it is there."""
    config = _config(db)
    with db.write() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def current_revision(db: Database) -> str | None:
    with db.read() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(db: Database) -> str | None:
    return ScriptDirectory.from_config(_config(db)).get_current_head()
