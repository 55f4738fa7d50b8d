"""`dicomvault changes [--follow]` and `dicomvault export-metadata`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from dicomvault.archive import Archive
from dicomvault.changes import MAX_LIMIT, read_changes
from dicomvault.cli.common import ConfigOption, DataDirOption, console, err_console, settings_from
from dicomvault.export import FORMATS, count_instances, export_metadata

__all__ = ["changes", "export_metadata_cmd"]


def changes(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    offset: Annotated[
        int, typer.Option("--offset", min=0, help="Print the changes after this sequence number.")
    ] = 0,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Stop after this many changes.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep waiting for new changes (Ctrl-C stops).")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, help="Seconds between polls with --follow.")
    ] = 1.0,
) -> None:
    """Print the archive's changes as JSON lines, oldest first, from --offset on.

    Each line has a gap-free `seq`: resume later with --offset set to the last
    `seq` you handled. Instance stored / updated and study ready / updated.
    """
    archive = Archive.open(settings_from(config, data_dir=data_dir))
    printed = 0
    try:
        while limit is None or printed < limit:
            want = MAX_LIMIT if limit is None else min(MAX_LIMIT, limit - printed)
            page = read_changes(archive.db, offset, want)
            for change in page.changes:
                typer.echo(json.dumps(change, separators=(",", ":")))
            printed += len(page.changes)
            offset = page.next_offset
            if not page.changes:
                if not follow:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        archive.close()


def export_metadata_cmd(
    out: Annotated[Path, typer.Argument(help="The file to write.", dir_okay=False)],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    fmt: Annotated[
        str, typer.Option("--format", help="parquet or ndjson (default: from the file name).")
    ] = "",
    study: Annotated[str | None, typer.Option("--study", help="Only this study.")] = None,
) -> None:
    """Export every instance's header, flattened by tag, to Parquet or NDJSON.

    One row per instance, one text column per tag (private tags included);
    multi-valued attributes joined with a backslash, sequences as DICOM JSON.
    """
    chosen = fmt or ("parquet" if out.suffix.lower() == ".parquet" else "ndjson")
    if chosen not in FORMATS:
        err_console.print(f"--format {chosen!r}: use one of {', '.join(FORMATS)}")
        raise typer.Exit(2)
    archive = Archive.open(settings_from(config, data_dir=data_dir))
    try:
        total = count_instances(archive.db, study)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
        ) as progress:
            task = progress.add_task("exporting", total=total)
            written = export_metadata(
                archive.db,
                out,
                chosen,
                study_uid=study,
                progress=lambda n: progress.advance(task, n),
            )
    finally:
        archive.close()
    console.print(f"exported {written} instances to {out} ({chosen})")
