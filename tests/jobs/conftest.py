"""An archive whose workers load the sample handlers and retry quickly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dicomvault.archive import Archive
from dicomvault.config import Settings
from tests.jobs import sample_handlers

FAST = {
    "job_modules": ["tests.jobs.sample_handlers"],
    "job_backoff_seconds": 0.01,
    "job_backoff_max_seconds": 0.05,
    "job_poll_seconds": 0.02,
    "job_lease_seconds": 2.0,
}


@pytest.fixture
def job_settings(settings: Settings) -> Settings:
    return settings.model_copy(update=FAST)


@pytest.fixture
def job_archive(job_settings: Settings) -> Iterator[Archive]:
    sample_handlers.runs.clear()
    sample_handlers.seen_events.clear()
    sample_handlers.failures.clear()
    opened = Archive.open(job_settings)
    try:
        yield opened
    finally:
        opened.close()
