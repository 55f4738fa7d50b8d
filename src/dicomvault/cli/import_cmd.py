"""`dicomvault import`: bulk-load folders and zip files in parallel batches, with a progress bar."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from dicomvault.archive import Archive
from dicomvault.bulk_import import (
    ImportResult,
    ImportStatus,
    batches,
    find_sources,
    import_batch,
)
from dicomvault.cli.common import ConfigOption, DataDirOption, console, err_console, settings_from

__all__ = ["import_files"]

_PROBLEMS = (ImportStatus.INVALID, ImportStatus.CONFLICT, ImportStatus.FAILED)


def import_files(
    paths: Annotated[list[Path], typer.Argument(help="Files, folders or zip archives.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-j", help="Batches ingested at once.")
    ] = None,
    show_problems: Annotated[int, typer.Option(help="How many problem files to list.")] = 20,
) -> None:
    """Import DICOM files. Re-running is safe: stored instances are recognised and skipped.

    Exit status: 0 when every DICOM file is stored (non-DICOM files are only
    reported), 1 when some were invalid or could not be stored.
    """
    settings = settings_from(config, data_dir=data_dir, import_workers=workers)
    try:
        sources = list(find_sources(paths, max_member_bytes=settings.max_request_bytes))
    except FileNotFoundError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    archive = Archive.open(settings)
    counts: Counter[ImportStatus] = Counter()
    problems: list[ImportResult] = []
    columns = (
        TextColumn("[bold]importing"),
        TextColumn("{task.fields[gb]:.2f} GB"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    try:
        with (
            Progress(*columns, console=console, transient=False) as progress,
            ThreadPoolExecutor(settings.import_workers) as pool,
        ):
            task = progress.add_task("import", total=len(sources), gb=0.0)
            done_bytes = 0
            done = pool.map(lambda b: import_batch(archive.ingestor, b), batches(sources))
            for results in done:
                for result in results:
                    counts[result.status] += 1
                    if result.status in _PROBLEMS:
                        problems.append(result)
                    done_bytes += result.size
                progress.update(task, advance=len(results), gb=done_bytes / 1e9)
    finally:
        archive.close()

    table = Table(title="import summary")
    table.add_column("result")
    table.add_column("files", justify="right")
    for status in ImportStatus:
        if counts[status]:
            table.add_row(status.value, str(counts[status]))
    console.print(table)
    for problem in problems[:show_problems]:
        # File names and reasons are data, not rich markup: "scan[red].dcm" must print as is.
        console.print(
            f"[yellow]{problem.status.value}[/yellow] {escape(problem.source)}: "
            f"{escape(problem.detail)}"
        )
    if len(problems) > show_problems:
        console.print(f"... and {len(problems) - show_problems} more")
    if problems:
        raise typer.Exit(1)
