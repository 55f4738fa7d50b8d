"""`dicomvault config show` and `dicomvault db upgrade|current`."""

from __future__ import annotations

import json

import typer

from dicomvault.cli.common import ConfigOption, DataDirOption, console, settings_from
from dicomvault.index import migrate
from dicomvault.index.db import Database

__all__ = ["config_app", "db_app"]

config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the index database schema.", no_args_is_help=True)


@config_app.command("show")
def show(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Print the effective settings (passwords and secrets masked) as JSON."""
    settings = settings_from(config, data_dir=data_dir)
    console.print_json(json.dumps(settings.masked()))


@db_app.command("upgrade")
def upgrade(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Create or migrate the index schema to the newest revision."""
    settings = settings_from(config, data_dir=data_dir)
    db = Database(settings.effective_database_url)
    try:
        before = migrate.current_revision(db)
        migrate.upgrade(db)
        after = migrate.current_revision(db)
    finally:
        db.dispose()
    console.print(f"schema revision {before or '(empty)'} -> {after}")


@db_app.command("current")
def current(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Print the schema revision of the index and the newest one this version knows."""
    settings = settings_from(config, data_dir=data_dir)
    db = Database(settings.effective_database_url)
    try:
        console.print(f"current {migrate.current_revision(db)}, newest {migrate.head_revision(db)}")
    finally:
        db.dispose()
