"""The worker: threads that claim jobs and feed event subscribers until told to stop.

`dicomvault worker` runs one in the foreground; `dicomvault serve` runs one in
the background (`Settings.serve_workers` threads). Any number of workers, on any
number of machines, can share one index database. While a handler runs, a
heartbeat renews its lease; if the process dies the lease runs out and another
worker runs the job again, which is why handlers must be idempotent.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from dicomvault.index.eventlog import events_after
from dicomvault.jobs import cursors, queue
from dicomvault.jobs.registry import (
    EVENT_JOB_PREFIX,
    PermanentFailure,
    RunLater,
    Subscriber,
    handlers,
    load_modules,
    periodics,
    subscribers,
)

if TYPE_CHECKING:
    from dicomvault.archive import Archive

__all__ = ["Worker"]

log = logging.getLogger(__name__)

_EVENT_BATCH = 100
PERIODIC_KEY = "periodic:"


class _Heartbeat:
    """Calls `renew` every third of the lease until the block it guards ends."""

    def __init__(self, renew: Callable[[], bool], lease: float) -> None:
        self._renew = renew
        self._interval = max(lease / 3, 0.2)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="job-heartbeat")

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            try:
                if not self._renew():
                    log.warning("lease lost: another worker may run this work again")
                    return
            except Exception:  # a database hiccup: try again at the next beat
                log.exception("could not renew a lease")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._done.set()
        self._thread.join()


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).strip()


class Worker:
    """Runs jobs and event subscribers of one archive on `concurrency` threads."""

    def __init__(self, archive: Archive, *, concurrency: int = 1, name: str | None = None) -> None:
        settings = archive.settings
        load_modules(settings.job_modules)
        self.archive = archive
        self.concurrency = concurrency
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = settings.job_lease_seconds
        self.poll = settings.job_poll_seconds
        self.batch_wait = min(settings.job_batch_wait_seconds, self.poll)
        self._handlers = handlers()
        self._subscribers = subscribers()
        self._periodics = periodics()
        self._next_schedule = 0.0
        self._kinds = [*self._handlers, *(EVENT_JOB_PREFIX + n for n in self._subscribers)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        cursors.ensure_cursors(archive.db, list(self._subscribers))

    # -- running ---------------------------------------------------------------

    def start(self) -> None:
        from dicomvault.pipeline.inbox_watch import start_watcher

        watcher = start_watcher(self.archive, self._stop)
        if watcher is not None:
            self._threads.append(watcher)
        for number in range(self.concurrency):
            thread = threading.Thread(
                target=self._loop, args=(number,), daemon=True, name=f"worker-{number}"
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float | None = None) -> None:
        """Ask the threads to stop after their current job, and wait for them."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def wait(self) -> None:
        """Block until `stop` is called (from a signal handler, say)."""
        self._stop.wait()

    def _loop(self, number: int) -> None:
        while not self._stop.is_set():
            try:
                done = self._round(offset=number)
            except Exception:  # the database is away: keep the worker alive, try later
                log.exception("worker %s: could not reach the queue", self.name)
                done = "idle"
            if done == "idle":
                self._stop.wait(self.poll)
            elif done == "caught-up":
                # Let the events of a busy archive gather: one batch of many rather than
                # a round of cursor transactions per instance, competing with ingestion
                # for the index's write lock.
                self._stop.wait(self.batch_wait)

    def schedule_periodic(self) -> None:
        """Keep one job of each periodic task queued (a no-op while one is)."""
        at = time.monotonic()
        if at < self._next_schedule:
            return
        self._next_schedule = at + 1.0
        settings = self.archive.settings
        with self.archive.db.write() as conn:
            for task in self._periodics.values():
                every = task.every(settings)
                if every is None:
                    continue
                run_after = queue.now() + timedelta(seconds=every)
                queue.enqueue(
                    conn, task.name, {}, key=PERIODIC_KEY + task.name, run_after=run_after
                )

    def run_once(self, offset: int = 0) -> bool:
        """Run one due job, or feed subscribers their events (one full batch, or every
        subscriber the events it is behind by); False if idle."""
        return self._round(offset) != "idle"

    def _round(self, offset: int) -> Literal["idle", "caught-up", "busy"]:
        """`run_once`, telling apart a round that left work behind ("busy": a job ran,
        or a subscriber took a full batch) from one after which every subscriber has
        caught up with the log ("caught-up"). A subscriber that caught up lets the
        round go on to the next, so that none waits while another keeps being fed."""
        if self._periodics:
            self.schedule_periodic()
        if self._kinds and self.run_one_job():
            return "busy"
        names = list(self._subscribers)
        done: Literal["idle", "caught-up"] = "idle"
        for i in range(len(names)):
            taken = self._feed(self._subscribers[names[(i + offset) % len(names)]])
            if taken is None:
                continue
            if taken >= _EVENT_BATCH:
                return "busy"
            done = "caught-up"
        return done

    # -- jobs ------------------------------------------------------------------

    def run_one_job(self) -> bool:
        db = self.archive.db
        job = queue.claim(db, self.name, self.lease, self._kinds)
        if job is None:
            return False
        if job.attempts > job.max_attempts:  # its workers kept dying mid-job
            queue.fail(
                db,
                job,
                self.name,
                f"gave up after {job.max_attempts} attempts whose workers stopped mid-job",
                permanent=True,
                base=0,
                ceiling=0,
            )
            return True
        settings = self.archive.settings
        try:
            with _Heartbeat(lambda: queue.renew(db, job.id, self.name, self.lease), self.lease):
                self._dispatch(job)
        except RunLater as later:
            queue.postpone(db, job, self.name, later.at)
            return True
        except Exception as exc:  # noqa: BLE001 (any handler error is a failed attempt)
            permanent = isinstance(exc, PermanentFailure)
            state = queue.fail(
                db,
                job,
                self.name,
                _error_text(exc),
                permanent=permanent,
                base=settings.job_backoff_seconds,
                ceiling=settings.job_backoff_max_seconds,
            )
            log.warning("job %s (%s) failed, now %s: %s", job.id, job.kind, state, exc)
            return True
        periodic = job.key is not None and job.key.startswith(PERIODIC_KEY)
        if not queue.complete(db, job.id, self.name, forget=periodic):
            log.warning("job %s finished after its lease was lost", job.id)
        return True

    def _dispatch(self, job: queue.Job) -> None:
        if job.kind.startswith(EVENT_JOB_PREFIX):
            subscriber = self._subscribers[job.kind.removeprefix(EVENT_JOB_PREFIX)]
            subscriber.react(self.archive, job.payload["event"])
        else:
            self._handlers[job.kind](self.archive, job.payload)

    # -- event subscribers ------------------------------------------------------

    def feed(self, subscriber: Subscriber) -> bool:
        """Hand the subscriber its next events in order; False if it had none to take."""
        return self._feed(subscriber) is not None

    def _feed(self, subscriber: Subscriber) -> int | None:
        """`feed`: how many events of the log it took (None: it had none to take)."""
        db = self.archive.db
        claimed = cursors.claim_cursor(db, subscriber.name, self.name, self.lease)
        if claimed is None:
            return None
        seq, attempts = claimed
        try:
            with _Heartbeat(
                lambda: cursors.renew_cursor(db, subscriber.name, self.name, self.lease),
                self.lease,
            ):
                # The cursor moves once per batch (and before a failure is recorded), not
                # once per event: reactions are idempotent, so a batch cut short by a crash
                # is simply seen again, and a busy archive saves a write per event.
                done = seq
                batch = events_after(db, seq, _EVENT_BATCH)
                whole = subscriber.react_many is not None and attempts == 0
                if batch and whole and self._react_many(subscriber, batch):
                    cursors.advance(db, subscriber.name, self.name, int(batch[-1]["seq"]))
                    return len(batch)
                for event in batch:
                    if self._stop.is_set():
                        break
                    if subscriber.wants(event["kind"]):
                        try:
                            subscriber.react(self.archive, event)
                        except Exception as exc:  # noqa: BLE001 (a failed attempt)
                            if done == seq or cursors.advance(db, subscriber.name, self.name, done):
                                self._event_failed(subscriber, event, attempts + 1, exc)
                            return 0  # retried later: nothing to hurry for
                        attempts = 0
                    done = int(event["seq"])
                if done != seq:
                    cursors.advance(db, subscriber.name, self.name, done)
        finally:
            cursors.release(db, subscriber.name, self.name)
        return len(batch)

    def _react_many(self, subscriber: Subscriber, batch: list[dict[str, Any]]) -> bool:
        """The batch reaction of `subscriber` on the events it wants; False (the events
        are then taken one by one) when it fails."""
        assert subscriber.react_many is not None
        wanted = [event for event in batch if subscriber.wants(event["kind"])]
        if not wanted:
            return True
        try:
            subscriber.react_many(self.archive, wanted)
        except Exception as exc:  # noqa: BLE001 (retried event by event)
            log.info("%s: batch of %d events failed, one by one: %s", subscriber.name,
                     len(wanted), exc)  # fmt: skip
            return False
        return True

    def _event_failed(
        self, subscriber: Subscriber, event: dict[str, object], attempts: int, exc: Exception
    ) -> None:
        settings = self.archive.settings
        db = self.archive.db
        error = _error_text(exc)
        if isinstance(exc, PermanentFailure) or attempts >= settings.job_max_attempts:
            cursors.dead_letter(db, subscriber.name, self.name, dict(event), error, attempts)
            log.warning("%s: event %s dead-lettered: %s", subscriber.name, event["seq"], exc)
            return
        delay = queue.backoff(
            attempts, settings.job_backoff_seconds, settings.job_backoff_max_seconds
        )
        cursors.record_failure(
            db, subscriber.name, self.name, attempts, error, queue.now() + timedelta(seconds=delay)
        )
        log.warning(
            "%s: event %s failed (attempt %s): %s", subscriber.name, event["seq"], attempts, exc
        )


def start_serve_workers(archive: Archive) -> Worker | None:
    """The background worker of `dicomvault serve` (None when `serve_workers` is 0)."""
    if archive.settings.serve_workers == 0:
        return None
    running = Worker(archive, concurrency=archive.settings.serve_workers)
    running.start()
    log.info("%d job worker threads in this process", running.concurrency)
    return running
