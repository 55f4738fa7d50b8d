"""Entry point of the `dicomvault` command."""

from __future__ import annotations

import typer

from dicomvault import __version__
from dicomvault.cli.access_cmd import audit_app, sites_app, users_app
from dicomvault.cli.admin import config_app, db_app
from dicomvault.cli.aets import aets_app, routes_app, send
from dicomvault.cli.changes import changes, export_metadata_cmd
from dicomvault.cli.import_cmd import import_files
from dicomvault.cli.integrity_cmd import keys_app, verify
from dicomvault.cli.jobs import jobs_app, worker
from dicomvault.cli.reconcile import reconcile_cmd
from dicomvault.cli.serve import serve

__all__ = ["app", "main"]

app = typer.Typer(
    name="dicomvault",
    help="A DICOM archive: DICOMweb over object storage (local directory or S3) and an index "
    "(SQLite or PostgreSQL).",
    no_args_is_help=True,
    add_completion=False,
)
app.command("serve")(serve)
app.command("import")(import_files)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.command("worker")(worker)
app.add_typer(jobs_app, name="jobs")
app.add_typer(sites_app, name="sites")
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(aets_app, name="aets")
app.add_typer(routes_app, name="routes")
app.command("send")(send)
app.command("verify")(verify)
app.command("changes")(changes)
app.command("export-metadata")(export_metadata_cmd)
app.command("reconcile")(reconcile_cmd)


@app.command("version")
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()
