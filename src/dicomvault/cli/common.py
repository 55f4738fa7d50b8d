"""What every command shares: building the settings from flags, and the console."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from rich.console import Console

from dicomvault.config import Settings, load_settings

if TYPE_CHECKING:
    from dicomvault.index.db import Database

ENV_PREFIX = "DICOMVAULT_"

__all__ = [
    "ConfigOption",
    "DataDirOption",
    "console",
    "err_console",
    "open_database",
    "settings_from",
]

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML settings file (also DICOMVAULT_CONFIG_FILE).",
        exists=True,
        dir_okay=False,
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory for the embedded defaults (DICOMVAULT_DATA_DIR)."
    ),
]


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    """The settings, or exit status 2 with one line per invalid setting."""
    try:
        return load_settings(config, **overrides)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
    except ValueError as exc:  # pydantic-settings' SettingsError, a missing config file
        problems = [str(exc)]
    # The messages quote user input (brackets included), so they are printed as text,
    # not rich markup, which would swallow "[...]" and with it the offending value.
    err_console.print("invalid configuration:", style="red", markup=False)
    for problem in problems:
        err_console.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _describe(error: ErrorDetails) -> str:
    """One error as `http_port = 'abc' (DICOMVAULT_HTTP_PORT): Input should be ...`."""
    location = "_".join(str(part) for part in error["loc"])
    if not location:
        return str(error["msg"])
    given = error.get("input")
    shown = f" = {given!r}" if isinstance(given, str | int | float) else ""
    return f"{location}{shown} ({ENV_PREFIX}{location.upper()}): {error['msg']}"


@contextmanager
def open_database(
    config: Path | None, data_dir: Path | None, *, errors: tuple[type[Exception], ...] = ()
) -> Iterator[Database]:
    """The index of the configured archive, migrated to the current schema; an exception
    of `errors` raised inside becomes `error: ...` and exit status 1."""
    from dicomvault.index import migrate
    from dicomvault.index.db import Database

    settings = settings_from(config, data_dir=data_dir)
    db = Database(settings.effective_database_url)
    try:
        migrate.upgrade(db)
        yield db
    except errors as exc:
        err_console.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from exc
    finally:
        db.dispose()
