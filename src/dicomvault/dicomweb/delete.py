"""Deleting a study over HTTP: `DELETE /dicom-web/studies/{study}` (admins only, by the
policy; audited like every route). Not part of PS3.18; the form dcm4chee and Orthanc
also use."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from dicomvault.archive import Archive
from dicomvault.delete import delete_study
from dicomvault.dicomweb.threads import in_thread
from dicomvault.model.uids import require_uid

__all__ = ["router"]

router = APIRouter()


@router.delete("/studies/{study}", status_code=204)
async def remove_study(request: Request, study: str) -> Response:
    archive: Archive = request.app.state.archive
    await in_thread(delete_study, archive.db, archive.store, require_uid(study, "StudyInstanceUID"))
    return Response(status_code=204)
