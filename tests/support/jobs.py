"""Driving the job queue in tests: run a worker's jobs until something is true."""

from __future__ import annotations

import time
from collections.abc import Callable

from dicomvault.jobs.worker import Worker

__all__ = ["work_until"]


def work_until(worker: Worker, done: Callable[[], bool], timeout: float = 30) -> None:
    """Run `worker`'s due jobs and subscribers until `done()` holds; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        if not worker.run_once():
            time.sleep(0.05)
