"""Sending studies to DICOM peers as durable jobs: `dicomvault send` and auto-routing.

A `dimse.send` job names a destination AE and what to send (a study, a series, or
SOP Instance UIDs); the worker sends them over one association (`outbound.send`)
and raises when any failed, so the queue retries it with backoff and, after its
attempts, keeps it in the dead letter for `dicomvault jobs retry`. Peers take a
C-STORE of an instance they hold again as a success, so a retry of a partly sent
job is harmless.

Auto-routing: for each `instance.stored` event whose calling AE has routes in the
registry (`dicomvault routes add RAJ_MR1 HSR_PACS`), one `dimse.send` job per route
and instance, keyed so that an event seen twice queues nothing twice.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dicomvault import jobs
from dicomvault.dimse import registry
from dicomvault.errors import NotFound
from dicomvault.retrieve import find_instances, match_instances

if TYPE_CHECKING:
    from dicomvault.archive import Archive

__all__ = ["SEND_JOB", "autoroute", "autoroute_many", "send_job"]

log = logging.getLogger(__name__)

SEND_JOB = "dimse.send"


@jobs.handler(SEND_JOB)
def send_job(archive: Archive, payload: dict[str, Any]) -> None:
    """Send what the payload names to `payload["to"]`; raise (retry) on any failure."""
    from dicomvault.dimse.outbound import send

    known = registry.find(archive.db, payload["to"])
    if known is None or known.host is None or known.port is None:
        raise jobs.PermanentFailure(f"{payload['to']} is not a known AE with host and port")
    if payload.get("sop_uids"):
        instances = match_instances(archive.db, sop_uids=payload["sop_uids"])
    else:
        try:
            instances = find_instances(archive.db, payload["study_uid"], payload.get("series_uid"))
        except NotFound as exc:
            raise jobs.PermanentFailure(str(exc)) from exc
    if not instances:
        raise jobs.PermanentFailure("nothing to send: the instances are no longer stored")
    report = send(archive, known, instances)
    if not report.ok:
        raise RuntimeError(
            f"{len(report.failed)} of {len(instances)} instances not taken by {known.ae_title}"
        )
    log.info("sent %d instances to %s", len(instances), known.ae_title)


def autoroute_many(archive: Archive, events: list[dict[str, Any]]) -> None:
    """Queue the forwarding of the instances of `events` received from AEs with routes.

    The routes of each calling AE are read once per batch, and the jobs of the whole
    batch are queued in one transaction: during a busy C-STORE session every event
    comes from a few AEs, and reading the routes per instance was a read transaction
    per instance stored."""
    routes: dict[str, list[registry.Route]] = {}
    queued = []
    for event in events:
        calling = (event.get("payload") or {}).get("calling_aet")
        if not calling:
            continue
        if calling not in routes:
            routes[calling] = registry.routes_from(archive.db, calling)
        queued += [(route, event) for route in routes[calling]]
    if not queued:
        return
    with archive.db.write() as conn:
        for route, event in queued:
            jobs.enqueue(
                conn,
                SEND_JOB,
                {"to": route.to_aet, "sop_uids": [event["sop_uid"]], "route": route.id},
                key=f"route:{route.id}:{event['sop_uid']}",
            )


@jobs.on_event("instance.stored", name="autoroute", batch=autoroute_many)
def autoroute(archive: Archive, event: dict[str, Any]) -> None:
    """Queue the forwarding of an instance received from an AE that has routes."""
    autoroute_many(archive, [event])
