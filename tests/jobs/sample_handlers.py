"""Job handlers and an event subscriber used by the queue tests (loaded via `job_modules`)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from dicomvault import jobs
from dicomvault.archive import Archive

runs: list[tuple[int, str, float, float]] = []  # (job number, thread, start, end)
seen_events: list[dict[str, Any]] = []
failures: dict[str, int] = {}
_lock = threading.Lock()


@jobs.handler("test.record")
def record(_archive: Archive, payload: dict[str, Any]) -> None:
    start = time.monotonic()
    time.sleep(float(payload.get("sleep", 0)))
    with _lock:
        runs.append((int(payload["n"]), threading.current_thread().name, start, time.monotonic()))


@jobs.handler("test.flaky")
def flaky(_archive: Archive, payload: dict[str, Any]) -> None:
    """Fails `fail_times` times, then succeeds."""
    name = str(payload["name"])
    with _lock:
        failures[name] = failures.get(name, 0) + 1
        count = failures[name]
    if count <= int(payload["fail_times"]):
        raise RuntimeError(f"{name}: failure number {count}")


@jobs.handler("test.hopeless")
def hopeless(_archive: Archive, payload: dict[str, Any]) -> None:
    raise jobs.PermanentFailure(f"cannot ever work: {payload['why']}")


@jobs.handler("test.slow_marker")
def slow_marker(_archive: Archive, payload: dict[str, Any]) -> None:
    """First run: mark `started` and hang (the test kills the worker). Later runs: finish."""
    folder = Path(payload["dir"])
    started = folder / "started"
    if started.exists():
        (folder / "finished").write_text("ok")
        return
    started.write_text("ok")
    time.sleep(300)


@jobs.on_event("instance.*", name="test.collector")
def collect(_archive: Archive, event: dict[str, Any]) -> None:
    sop = event["sop_uid"] or ""
    if sop.endswith(".666"):
        raise jobs.PermanentFailure(f"refusing {sop}")
    with _lock:
        seen_events.append(event)


batches: list[list[str]] = []  # SOP UIDs of each successful batch of test.batcher
singles: list[str] = []  # SOP UIDs test.batcher handled one by one


def _take_many(_archive: Archive, events: list[dict[str, Any]]) -> None:
    sops = [e["sop_uid"] or "" for e in events]
    if any(sop.endswith(".666") for sop in sops):
        raise RuntimeError("a bad event in the batch")
    with _lock:
        batches.append(sops)


@jobs.on_event("instance.*", name="test.batcher", batch=_take_many)
def take_one(_archive: Archive, event: dict[str, Any]) -> None:
    sop = event["sop_uid"] or ""
    if sop.endswith(".666"):
        raise jobs.PermanentFailure(f"refusing {sop}")
    with _lock:
        singles.append(sop)
