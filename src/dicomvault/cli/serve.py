"""`dicomvault serve`: the HTTP server (DICOMweb) and the DICOM node on the archive."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from dicomvault.cli.common import (
    ConfigOption,
    DataDirOption,
    console,
    err_console,
    settings_from,
)
from dicomvault.config import Settings

__all__ = ["serve"]


def prepare_to_serve(settings: Settings, *, dicom: bool = False) -> None:
    """What is done once, before any server process starts: the index schema brought up
    to date, the secure-defaults check (exit 2 with the reason instead of serving patient
    data openly), a store on disk prepared."""
    from dicomvault.access.startup import InsecureConfiguration, check_secure_defaults
    from dicomvault.index import migrate
    from dicomvault.index.db import Database
    from dicomvault.storage import LocalStore, open_store

    db = Database(settings.effective_database_url)
    try:
        migrate.upgrade(db)
        check_secure_defaults(settings, db, dicom=dicom)
        store = open_store(settings)
        if isinstance(store, LocalStore):
            store.prepare()
    except InsecureConfiguration as exc:
        err_console.print(f"dicomvault: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    finally:
        db.dispose()


def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to bind (DICOMVAULT_HOST).")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option("--http-port", help="HTTP port (DICOMVAULT_HTTP_PORT).")
    ] = None,
    dicom_port: Annotated[
        int | None,
        typer.Option("--dicom-port", help="DIMSE port (DICOMVAULT_DICOM_PORT); 0 turns it off."),
    ] = None,
    no_dicom: Annotated[
        bool, typer.Option("--no-dicom", help="Serve DICOMweb only, no DIMSE port.")
    ] = False,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            min=1,
            max=64,
            help="Server processes on the same ports (DICOMVAULT_SERVE_PROCESSES); one per "
            "CPU core to use them all.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the archive: DICOMweb at http://HOST:PORT/dicom-web and a DICOM node (DIMSE)."""
    from dicomvault.serving import Plan, dicom_listeners, http_listener, run

    overrides = {"host": host, "http_port": http_port, "dicom_port": dicom_port}
    overrides["serve_processes"] = processes
    settings = settings_from(config, data_dir=data_dir, **overrides)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if log_level != "debug":  # pynetdicom logs every DIMSE message at info level
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    dicom = bool(settings.dicom_port or settings.dicom_tls_port) and not no_dicom
    if settings.serve_processes > 1 and settings.http_port == 0:
        err_console.print("dicomvault: several processes need a fixed HTTP port, not 0")
        raise typer.Exit(2)
    prepare_to_serve(settings, dicom=dicom)
    masked = settings.masked()
    console.print(f"dicomvault: index {masked['database_url']}, objects {masked['storage_url']}")
    scheme = "https" if settings.tls_cert_file else "http"
    console.print(f"DICOMweb at {scheme}://{settings.host}:{settings.http_port}/dicom-web")
    if dicom and settings.dicom_port:
        console.print(f"DIMSE AE {settings.ae_title} at {settings.host}:{settings.dicom_port}")
    if dicom and settings.dicom_tls_port:
        console.print(
            f"DICOM TLS AE {settings.ae_title} at {settings.host}:{settings.dicom_tls_port}"
        )
    if settings.serve_processes > 1:
        console.print(f"{settings.serve_processes} server processes")
    try:
        listener = http_listener(settings)
        shared = dicom_listeners(settings) if dicom else {}
    except OSError as exc:
        err_console.print(f"dicomvault: {exc.strerror}")
        raise typer.Exit(1) from exc
    status = run(Plan(settings, dicom, log_level), listener, shared)
    if status:
        raise typer.Exit(status)
