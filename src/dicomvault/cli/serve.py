"""`dicomvault serve`: the HTTP server (DICOMweb) and the DICOM node on the archive."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from dicomvault.archive import Archive
from dicomvault.cli.common import (
    ConfigOption,
    DataDirOption,
    console,
    err_console,
    settings_from,
)
from dicomvault.config import Settings
from dicomvault.jobs.worker import start_serve_workers

__all__ = ["serve"]


def refuse_if_insecure(settings: Settings, archive: Archive, *, dicom: bool = False) -> None:
    """Secure defaults: exit 2 with the reason instead of serving patient data openly."""
    from dicomvault.access.startup import InsecureConfiguration, check_secure_defaults

    try:
        check_secure_defaults(settings, archive.db, dicom=dicom)
    except InsecureConfiguration as exc:
        archive.close()
        err_console.print(f"dicomvault: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(2) from exc


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
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the archive: DICOMweb at http://HOST:PORT/dicom-web and a DICOM node (DIMSE)."""
    # Imported here: the web stack is most of the CLI's start-up time, and
    # `config show`, `db` and `import` do not need it.
    import uvicorn

    from dicomvault.dicomweb.app import create_app
    from dicomvault.tls import uvicorn_config

    settings = settings_from(
        config, data_dir=data_dir, host=host, http_port=http_port, dicom_port=dicom_port
    )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    archive = Archive.open(settings)
    dicom = bool(settings.dicom_port or settings.dicom_tls_port) and not no_dicom
    refuse_if_insecure(settings, archive, dicom=dicom)
    console.print(
        f"dicomvault: index {settings.masked()['database_url']}, objects {archive.store.url}"
    )
    scheme = "https" if settings.tls_cert_file else "http"
    console.print(f"DICOMweb at {scheme}://{settings.host}:{settings.http_port}/dicom-web")
    workers = start_serve_workers(archive)
    dimse = None
    if dicom:
        from dicomvault.dimse import DimseServer

        if log_level != "debug":  # pynetdicom logs every DIMSE message at info level
            logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        dimse = DimseServer(
            archive, settings.host, settings.dicom_port or None, tls_port=settings.dicom_tls_port
        )
        dimse.start()
        if dimse.port is not None:
            console.print(f"DIMSE AE {settings.ae_title} at {settings.host}:{dimse.port}")
        if dimse.tls_port is not None:
            console.print(f"DICOM TLS AE {settings.ae_title} at {settings.host}:{dimse.tls_port}")
    try:
        uvicorn.Server(
            uvicorn_config(
                create_app(archive),
                settings,
                host=settings.host,
                port=settings.http_port,
                log_level=log_level,
                access_log=log_level == "debug",
            )
        ).run()
    finally:
        if workers is not None:
            workers.stop(timeout=30)
        if dimse is not None:
            dimse.stop()
        archive.close()
