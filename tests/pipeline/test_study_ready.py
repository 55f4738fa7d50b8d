"""study.ready once a study has been quiet for the configured period; study.updated after."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.index.schema import events
from dicomvault.jobs.worker import Worker
from dicomvault.synthetic import instance_bytes, uid

QUIET = 1.0


@pytest.fixture
def quick(settings: Settings) -> Iterator[Archive]:
    opened = Archive.open(
        settings.model_copy(
            update={
                "study_quiet_seconds": QUIET,
                "study_ready_check_seconds": 0.2,
                "job_poll_seconds": 0.02,
            }
        )
    )
    try:
        yield opened
    finally:
        opened.close()


def _store(archive: Archive, study: str, n: int) -> None:
    archive.ingestor.ingest(
        io.BytesIO(
            instance_bytes(
                study_uid=uid(f"{study}/st"),
                series_uid=uid(f"{study}/se"),
                sop_uid=uid(f"{study}/{n}"),
                size=8,
                instance_number=n,
            )
        )
    )


def _study_events(archive: Archive) -> list[tuple[str, str, int]]:
    with archive.db.read() as conn:
        rows = conn.execute(
            select(events.c.kind, events.c.study_uid, events.c.payload)
            .where(events.c.kind.like("study.%"))
            .order_by(events.c.seq)
        ).all()
    return [(kind, study, payload["num_instances"]) for kind, study, payload in rows]


def _run_for(worker: Worker, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not worker.run_once():
            time.sleep(0.02)


def test_ready_once_after_the_quiet_period_then_updated(quick: Archive) -> None:
    worker = Worker(quick)
    _store(quick, "a", 1)
    _store(quick, "a", 2)
    _run_for(worker, 0.5)
    assert _study_events(quick) == []  # not quiet long enough yet

    _run_for(worker, QUIET + 1.5)
    a = uid("a/st")
    assert _study_events(quick) == [("study.ready", a, 2)]

    _run_for(worker, 1.0)  # nothing new: told once
    assert _study_events(quick) == [("study.ready", a, 2)]

    _store(quick, "a", 3)
    _store(quick, "b", 1)
    _run_for(worker, QUIET + 1.5)
    assert sorted(_study_events(quick)) == sorted(
        [("study.ready", a, 2), ("study.updated", a, 3), ("study.ready", uid("b/st"), 1)]
    )


def test_a_study_still_receiving_is_not_ready(quick: Archive) -> None:
    worker = Worker(quick)
    for n in range(1, 5):
        _store(quick, "c", n)
        _run_for(worker, QUIET / 2)
    assert _study_events(quick) == []
    _run_for(worker, QUIET + 1.5)
    assert _study_events(quick) == [("study.ready", uid("c/st"), 4)]
