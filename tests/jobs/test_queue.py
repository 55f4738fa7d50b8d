"""The durable queue on both backends: dedupe, backoff, dead letter, retry, concurrency."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from dicomvault import jobs
from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.index.schema import event_cursors, events
from dicomvault.jobs import queue
from dicomvault.jobs import worker as worker_module
from dicomvault.jobs.worker import Worker
from dicomvault.synthetic import instance_bytes, uid
from tests.jobs import sample_handlers


def _enqueue(archive: Archive, kind: str, payload: dict[str, Any], **kwargs: Any) -> int:
    with archive.db.write() as conn:
        return jobs.enqueue(conn, kind, payload, **kwargs)


def _drain(worker: Worker, timeout: float = 30) -> None:
    """Run the worker in this thread until it finds nothing due for a while."""
    deadline = time.monotonic() + timeout
    idle_since: float | None = None
    while time.monotonic() < deadline:
        if worker.run_once():
            idle_since = None
        else:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 0.3:
                return
            time.sleep(0.01)
    raise AssertionError("the worker did not settle")


def test_a_key_already_queued_is_not_queued_twice(job_archive: Archive) -> None:
    first = _enqueue(job_archive, "test.record", {"n": 1}, key="k1")
    again = _enqueue(job_archive, "test.record", {"n": 2}, key="k1")
    other = _enqueue(job_archive, "test.record", {"n": 3}, key="k2")
    assert again == first
    assert other != first
    _drain(Worker(job_archive))
    assert sorted(n for n, *_ in sample_handlers.runs) == [1, 3]
    # Once it has run, the key can be queued again.
    assert _enqueue(job_archive, "test.record", {"n": 4}, key="k1") not in (first, other)


def test_a_failing_job_is_retried_with_backoff_until_it_succeeds(job_archive: Archive) -> None:
    job_id = _enqueue(job_archive, "test.flaky", {"name": "a", "fail_times": 2})
    _drain(Worker(job_archive))
    job = queue.get_job(job_archive.db, job_id)
    assert job is not None
    assert (job.state, job.attempts) == ("done", 3)
    assert "failure number 2" in (job.last_error or "")
    assert job.run_after > job.created_at  # it waited before its retries


def test_a_job_out_of_attempts_is_dead_and_can_be_retried(job_archive: Archive) -> None:
    job_id = _enqueue(
        job_archive, "test.flaky", {"name": "b", "fail_times": 3}, key="b", max_attempts=3
    )
    _drain(Worker(job_archive))
    job = queue.get_job(job_archive.db, job_id)
    assert job is not None
    assert (job.state, job.attempts) == ("dead", 3)
    assert "failure number 3" in (job.last_error or "")
    assert sample_handlers.failures["b"] == 3  # nothing ran it after it died

    queue.retry(job_archive.db, job_id)
    _drain(Worker(job_archive))
    job = queue.get_job(job_archive.db, job_id)
    assert job is not None
    assert (job.state, job.attempts) == ("done", 1)


def test_a_permanent_failure_is_dead_at_once(job_archive: Archive) -> None:
    job_id = _enqueue(job_archive, "test.hopeless", {"why": "bad input"})
    _drain(Worker(job_archive))
    job = queue.get_job(job_archive.db, job_id)
    assert job is not None
    assert (job.state, job.attempts) == ("dead", 1)
    assert "cannot ever work: bad input" in (job.last_error or "")


def test_retry_refuses_a_job_that_is_still_queued(job_archive: Archive) -> None:
    job_id = _enqueue(job_archive, "test.record", {"n": 1})
    with pytest.raises(ValueError, match="is pending"):
        queue.retry(job_archive.db, job_id)


def test_two_workers_never_run_the_same_job_at_once(
    job_archive: Archive, job_settings: Settings
) -> None:
    """Two workers (own engines, as on two machines), three threads each, share 40 jobs."""
    count = 40
    for n in range(count):
        _enqueue(job_archive, "test.record", {"n": n, "sleep": 0.02})
    other = Archive.open(job_settings, upgrade=False)
    workers = [
        Worker(job_archive, concurrency=3, name="one"),
        Worker(other, concurrency=3, name="two"),
    ]
    try:
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 60
        while len(queue.list_jobs(job_archive.db, state="done", kind="test.record")) < count:
            assert time.monotonic() < deadline, queue.counts(job_archive.db)
            time.sleep(0.05)
    finally:
        for worker in workers:
            worker.stop(timeout=10)
        other.close()
    numbers = sorted(n for n, *_ in sample_handlers.runs)
    assert numbers == list(range(count))  # each job ran exactly once
    assert len({thread for _, thread, *_ in sample_handlers.runs}) > 1  # shared out
    ran = queue.list_jobs(job_archive.db, kind="test.record", limit=count)
    assert all(j.attempts == 1 for j in ran)


def _ingest(archive: Archive, sop: str, n: int) -> None:
    data = instance_bytes(
        study_uid=uid("events/study"),
        series_uid=uid("events/series"),
        sop_uid=sop,
        size=8,
        instance_number=n,
    )
    archive.ingestor.ingest(io.BytesIO(data))


def test_subscribers_see_events_in_order_and_a_failing_one_goes_dead(
    job_archive: Archive,
) -> None:
    sops = [uid(f"events/{n}") for n in range(5)]
    sops[2] = uid("events/bad")[:50] + ".666"
    for n, sop in enumerate(sops):
        _ingest(job_archive, sop, n + 1)
    _drain(Worker(job_archive))

    seen = [e["sop_uid"] for e in sample_handlers.seen_events]
    assert seen == [s for s in sops if not s.endswith(".666")]
    seqs = [e["seq"] for e in sample_handlers.seen_events]
    assert seqs == sorted(seqs)
    dead = queue.list_jobs(job_archive.db, state="dead", kind="event:test.collector")
    assert [j.payload["event"]["sop_uid"] for j in dead] == [sops[2]]
    assert "refusing" in (dead[0].last_error or "")

    # Nothing runs again: each event was handled once.
    sample_handlers.seen_events.clear()
    _drain(Worker(job_archive))
    assert sample_handlers.seen_events == []


def test_a_batch_subscriber_takes_events_together_and_one_by_one_around_a_bad_one(
    job_archive: Archive,
) -> None:
    sample_handlers.batches.clear()
    sample_handlers.singles.clear()
    good = [uid(f"batch/{n}") for n in range(4)]
    for n, sop in enumerate(good[:2]):
        _ingest(job_archive, sop, n + 1)
    _drain(Worker(job_archive))
    assert sample_handlers.batches == [good[:2]]  # one call for both
    bad = uid("batch/bad")[:50] + ".666"
    for n, sop in enumerate([good[2], bad, good[3]]):
        _ingest(job_archive, sop, n + 3)
    _drain(Worker(job_archive))
    handled = [s for b in sample_handlers.batches for s in b] + sample_handlers.singles
    assert sorted(handled) == sorted(good)  # each good event exactly once
    assert good[2] in sample_handlers.singles  # its batch failed: taken one by one
    dead = queue.list_jobs(job_archive.db, state="dead", kind="event:test.batcher")
    assert [j.payload["event"]["sop_uid"] for j in dead] == [bad]


def test_a_round_that_takes_the_last_events_says_caught_up(
    job_archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's loop lets events gather after a "caught-up" round, and goes on at
    once after a "busy" one (a full batch: more may be waiting)."""
    monkeypatch.setattr(worker_module, "_EVENT_BATCH", 3)
    for n in range(5):
        _ingest(job_archive, uid(f"rounds/{n}"), n + 1)
    worker = Worker(job_archive)
    subscribers = len(worker._subscribers)
    # Each subscriber takes a full batch ("busy"); the rest of its events it takes
    # in the round in which the next one takes its full batch; the last one's rest
    # ends the work.
    rounds = [worker._round(0) for _ in range(subscribers + 2)]
    assert rounds == ["busy"] * subscribers + ["caught-up", "idle"]
    assert worker.batch_wait == pytest.approx(0.02)  # bounded by job_poll_seconds


def test_one_round_feeds_every_subscriber_that_is_behind(job_archive: Archive) -> None:
    """Under steady ingestion, a subscriber that is fed first in each round must not
    keep the others waiting: each round takes every subscriber up to the log's end."""
    worker = Worker(job_archive)
    for n in range(3):
        _ingest(job_archive, uid(f"steady/{n}"), n + 1)
        assert worker._round(0) == "caught-up"
        with job_archive.db.read() as conn:
            last = conn.execute(select(func.max(events.c.seq))).scalar_one()
            behind = (
                conn.execute(select(event_cursors.c.name).where(event_cursors.c.seq < last))
                .scalars()
                .all()
            )
        assert behind == []


def test_an_idle_queue_is_looked_at_without_a_write(job_archive: Archive) -> None:
    writes: list[int] = []
    real_write = job_archive.db.write

    def counting_write() -> Any:
        writes.append(1)
        return real_write()

    job_archive.db.write = counting_write  # type: ignore[method-assign]
    assert queue.claim(job_archive.db, "w", 5.0, ["test.record"]) is None
    assert writes == []
    job_archive.db.write = real_write  # type: ignore[method-assign]
    _enqueue(job_archive, "test.record", {"n": 1})
    job_archive.db.write = counting_write  # type: ignore[method-assign]
    claimed = queue.claim(job_archive.db, "w", 5.0, ["test.record"])
    assert claimed is not None
    assert claimed.payload == {"n": 1}
    assert writes == [1]
