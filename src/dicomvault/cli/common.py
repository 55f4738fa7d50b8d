"""What every command shares: building the settings from flags, and the console."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from dicomvault.config import Settings, load_settings

__all__ = ["ConfigOption", "DataDirOption", "console", "err_console", "settings_from"]

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
    try:
        return load_settings(config, **overrides)
    except (ValidationError, ValueError) as exc:
        err_console.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from exc
