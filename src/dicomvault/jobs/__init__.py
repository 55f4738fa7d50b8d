"""The durable job queue: `enqueue` work, register `@handler`s and `@on_event` subscribers.

    from dicomvault import jobs

    @jobs.handler("route.send")
    def send(archive: Archive, payload: dict) -> None: ...      # raise to retry

    @jobs.on_event("instance.stored", name="autoroute")
    def react(archive: Archive, event: dict) -> None: ...       # once per event, in order

    with archive.db.write() as conn:
        jobs.enqueue(conn, "route.send", {"sop_uid": uid}, key=f"send:{uid}")

Jobs live in the index database (see `queue`), so they survive restarts and are
shared by every worker (`worker.Worker`, `dicomvault worker`, `dicomvault serve`).
"""

from __future__ import annotations

from dicomvault.jobs.queue import Job, enqueue
from dicomvault.jobs.registry import PermanentFailure, RunLater, handler, on_event, periodic

__all__ = ["Job", "PermanentFailure", "RunLater", "enqueue", "handler", "on_event", "periodic"]
