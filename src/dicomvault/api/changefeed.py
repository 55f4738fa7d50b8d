"""`GET /changefeed?offset=&limit=`: a thin door onto `dicomvault.changes`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

from dicomvault.archive import Archive
from dicomvault.changes import MAX_LIMIT, read_changes
from dicomvault.dicomweb.threads import in_thread

__all__ = ["router"]

router = APIRouter()


@router.get("/changefeed")
async def changefeed(
    request: Request,
    offset: int = Query(0, description="The last sequence number already handled (0: none)."),
    limit: int = Query(100, description=f"Most changes to return (1 to {MAX_LIMIT})."),
) -> dict[str, Any]:
    """Changes after `offset` in order: instance stored / updated, study ready / updated.

    Sequence numbers have no gaps; resume with `offset=next_offset`.
    """
    archive: Archive = request.app.state.archive
    access = getattr(request.state, "access", None)
    if access is not None and access.sites is not None:
        # The feed is archive-wide: only a caller who may read every site reads it.
        raise HTTPException(403, "the change feed covers every site; it is for admins of all")
    page = await in_thread(read_changes, archive.db, offset, limit)
    return page.as_dict()
