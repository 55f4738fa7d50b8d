"""`dicomvault verify` (re-read objects against their checksums) and `dicomvault keys`
(master keys of encryption at rest: make one, rotate to it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dicomvault import integrity
from dicomvault.archive import Archive
from dicomvault.cli.common import ConfigOption, DataDirOption, console, err_console, settings_from
from dicomvault.storage.keys import new_key_file

__all__ = ["keys_app", "verify"]

keys_app = typer.Typer(help="Master keys of encryption at rest.", no_args_is_help=True)


def _progress(label: str) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )


def verify(
    study: Annotated[str | None, typer.Option(help="Only this Study Instance UID.")] = None,
    sample: Annotated[
        int | None, typer.Option(min=1, help="Only this many objects, chosen at random.")
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Re-read stored objects and compare them with the SHA-256 recorded at ingest.

    Reports missing objects and objects that read back different (or, encrypted, fail
    authentication). Exit status 1 if any is found.
    """
    settings = settings_from(config, data_dir=data_dir)
    archive = Archive.open(settings)
    try:
        total = integrity.count_objects(archive.db, study, sample)
        with _progress("verifying objects") as progress:
            task = progress.add_task("verify", total=total)
            report = integrity.verify(
                archive.db,
                archive.store,
                study_uid=study,
                sample=sample,
                progress=lambda n: progress.advance(task, n),
            )
    finally:
        archive.close()
    for problem in report.problems:
        console.print(
            f"{problem.kind.upper()} {problem.key} (instance {problem.sop_uid}): {problem.detail}",
            markup=False,
            highlight=False,
        )
    console.print(
        f"checked {report.checked} objects, {report.bytes} bytes: "
        f"{sum(p.kind == 'missing' for p in report.problems)} missing, "
        f"{sum(p.kind != 'missing' for p in report.problems)} damaged"
    )
    if report.problems:
        raise typer.Exit(1)


@keys_app.command("new")
def keys_new(
    path: Annotated[Path, typer.Argument(help="Where to write the key (must not exist).")],
) -> None:
    """Write a new random master key file (owner-readable only)."""
    try:
        new_key_file(path)
    except FileExistsError as exc:
        err_console.print(f"error: {path} exists; a key file is never overwritten", markup=False)
        raise typer.Exit(1) from exc
    console.print(f"new master key in {path}")


@keys_app.command("rotate")
def keys_rotate(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Re-wrap every object's data key with the current master key.

    Set the new key as encryption_key_file (or encryption_kms_key_id) and the old one in
    encryption_old_key_files, run this, then drop the old key. Objects are not rewritten.
    """
    settings = settings_from(config, data_dir=data_dir)
    archive = Archive.open(settings)
    try:
        total = integrity.count_objects(archive.db)
        with _progress("re-wrapping data keys") as progress:
            task = progress.add_task("rotate", total=total)
            report = integrity.rotate_keys(
                archive.db, archive.store, lambda n: progress.advance(task, n)
            )
    except ValueError as exc:
        err_console.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from exc
    finally:
        archive.close()
    console.print(
        f"{report.rewrapped} data keys re-wrapped, {report.current} already current, "
        f"{report.missing} objects missing"
    )
