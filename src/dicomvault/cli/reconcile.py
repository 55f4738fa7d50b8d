"""`dicomvault reconcile`: compare the object store with the index, now."""

from __future__ import annotations

from typing import Annotated

import typer

from dicomvault.archive import Archive
from dicomvault.cli.common import ConfigOption, DataDirOption, console, settings_from
from dicomvault.pipeline.reconcile import reconcile

__all__ = ["reconcile_cmd"]


def reconcile_cmd(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    grace: Annotated[
        float | None,
        typer.Option(
            "--grace",
            min=0,
            help="Seconds an orphan object must have been seen before it is adopted or "
            "removed (DICOMVAULT_RECONCILE_GRACE_SECONDS).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report; change nothing.")
    ] = False,
) -> None:
    """Adopt or remove objects without index rows; report rows whose object is missing.

    Exits 1 when objects are missing, so monitoring can alert on it.
    """
    settings = settings_from(config, data_dir=data_dir)
    archive = Archive.open(settings)
    try:
        report = reconcile(
            archive,
            grace=settings.reconcile_grace_seconds if grace is None else grace,
            dry_run=dry_run,
        )
    finally:
        archive.close()
    verb = "would adopt" if dry_run else "adopted"
    for key in report.adopted:
        console.print(f"{verb} orphan object {key}", markup=False)
    for key in report.removed:
        console.print(f"removed orphan object {key} (not a valid instance)", markup=False)
    for key in report.waiting:
        console.print(f"orphan object {key}: inside the grace period, left alone", markup=False)
    for sop, key in report.missing:
        console.print(f"MISSING object {key} of instance {sop}", markup=False)
    console.print(
        f"{len(report.adopted)} adopted, {len(report.removed)} removed, "
        f"{len(report.waiting)} waiting, {len(report.missing)} missing"
    )
    if report.missing:
        raise typer.Exit(1)
