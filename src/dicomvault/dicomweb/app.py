"""The HTTP application: DICOMweb under /dicom-web, plus health and service info.

Errors raised by services become JSON bodies with the matching status code here,
in one place, so every route answers bad input the same way.
"""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from dicomvault import __version__
from dicomvault.api import changefeed, manage
from dicomvault.archive import Archive
from dicomvault.dicomweb import delete, login, pixels, qido, stow, wado
from dicomvault.dicomweb.access import AuditMiddleware, guard
from dicomvault.dicomweb.responses import DICOMWEB_ROOT
from dicomvault.errors import (
    DicomVaultError,
    DuplicateConflict,
    InvalidInstance,
    InvalidQuery,
    NotAcceptable,
    NotFound,
    StorageError,
    StudyMismatch,
)

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[DicomVaultError], int], ...] = (
    (NotFound, 404),
    (InvalidQuery, 400),
    (InvalidInstance, 400),
    (NotAcceptable, 406),
    (DuplicateConflict, 409),
    (StudyMismatch, 409),
    (StorageError, 503),
)


def create_app(archive: Archive) -> FastAPI:
    # Every route passes `guard` (access control); the API docs are left out when
    # authentication is on, so that nothing at all is open but health and login.
    open_docs = not archive.settings.auth_required
    app = FastAPI(
        title="dicomvault",
        version=__version__,
        description="DICOMweb (STOW-RS, QIDO-RS, WADO-RS) over object storage.",
        dependencies=[Depends(guard)],
        docs_url="/docs" if open_docs else None,
        redoc_url="/redoc" if open_docs else None,
        openapi_url="/openapi.json" if open_docs else None,
    )
    app.add_middleware(AuditMiddleware)
    app.state.archive = archive
    if archive.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=archive.settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=[
                "Warning",
                "Content-Type",
                "Content-Length",
                "Content-Range",
                "Accept-Ranges",
            ],
        )

    @app.exception_handler(DicomVaultError)
    async def _service_error(_request: Request, exc: DicomVaultError) -> JSONResponse:
        for kind, status in _STATUS:
            if isinstance(exc, kind):
                if status >= 500:
                    log.error("%s: %s", type(exc).__name__, exc)
                return JSONResponse({"error": str(exc)}, status_code=status)
        return JSONResponse({"error": str(exc)}, status_code=500)

    @app.get(DICOMWEB_ROOT, name="dicomweb_root", include_in_schema=False)
    async def dicomweb_root() -> dict[str, str]:
        return {"service": "DICOMweb", "version": __version__}

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    # STOW-RS first: the router tries the routes in order, and a request of one
    # instance is the most frequent request an archive serves.
    stow.add_routes(app, DICOMWEB_ROOT)
    # STOW-RS naming the site the new studies belong to.
    stow.add_routes(app, DICOMWEB_ROOT + "/sites/{site}")
    for router in (qido.router, wado.router, pixels.router, delete.router):
        app.include_router(router, prefix=DICOMWEB_ROOT)
    app.include_router(login.router)
    app.include_router(changefeed.router)
    app.include_router(manage.router)
    return app
