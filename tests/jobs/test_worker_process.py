"""`dicomvault worker` and `dicomvault jobs` as real processes on both backends.

A worker killed with SIGKILL mid-job loses nothing: once its lease runs out,
another worker runs the job again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from dicomvault import jobs
from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.jobs import queue
from tests.support.cli import command_env, dicomvault

ROOT = Path(__file__).resolve().parents[2]


def _env(settings: Settings) -> dict[str, str]:
    env = command_env(
        settings,
        DICOMVAULT_JOB_MODULES='["tests.jobs.sample_handlers"]',
        DICOMVAULT_JOB_LEASE_SECONDS="2",
        DICOMVAULT_JOB_POLL_SECONDS="0.1",
    )
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    exe = shutil.which("dicomvault")
    assert exe
    return subprocess.Popen(
        [exe, "worker", "--concurrency", "1"],
        env=_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_worker_killed_mid_job_leaves_the_job_to_run_again(
    job_archive: Archive, job_settings: Settings, tmp_path: Path
) -> None:
    with job_archive.db.write() as conn:
        job_id = jobs.enqueue(conn, "test.slow_marker", {"dir": str(tmp_path)})
    first = _start_worker(job_settings)
    try:
        _wait_for((tmp_path / "started").exists, 60, "the first worker to start the job")
        running = queue.get_job(job_archive.db, job_id)
        assert running is not None
        assert running.state == "running"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
        first.wait()
    second = _start_worker(job_settings)
    try:
        _wait_for((tmp_path / "finished").exists, 60, "the job to run again")
        _wait_for(
            lambda: (j := queue.get_job(job_archive.db, job_id)) is not None and j.state == "done",
            30,
            "the job to be recorded as done",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    job = queue.get_job(job_archive.db, job_id)
    assert job is not None
    assert job.attempts == 2
    assert job.locked_by is None


def test_jobs_commands_list_show_retry_and_purge(
    job_archive: Archive, job_settings: Settings
) -> None:
    with job_archive.db.write() as conn:
        dead_id = jobs.enqueue(
            conn, "test.hopeless", {"why": "x"}, state="dead", last_error="boom: it broke"
        )
        pending_id = jobs.enqueue(conn, "test.record", {"n": 1})
    env = _env(job_settings)

    listed = dicomvault("jobs", "list", "--state", "dead", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "test.hopeless" in listed.stdout
    assert "boom: it broke" in listed.stdout
    assert "test.record" not in listed.stdout
    assert "pending: 1" in listed.stdout
    assert "dead: 1" in listed.stdout

    shown = dicomvault("jobs", "show", str(dead_id), env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["payload"] == {"why": "x"}
    assert dicomvault("jobs", "show", "999999", env=env).returncode == 1

    refused = dicomvault("jobs", "retry", str(pending_id), env=env)
    assert refused.returncode == 1
    assert "is pending" in refused.stderr
    retried = dicomvault("jobs", "retry", str(dead_id), env=env)
    assert retried.returncode == 0, retried.stderr
    job = queue.get_job(job_archive.db, dead_id)
    assert job is not None
    assert (job.state, job.attempts) == ("pending", 0)

    bad = dicomvault("jobs", "purge", "--state", "pending", env=env)
    assert bad.returncode == 2
    assert "only done and dead" in bad.stderr
    assert queue.get_job(job_archive.db, pending_id) is not None
    with job_archive.db.write() as conn:
        jobs.enqueue(conn, "test.record", {"n": 2}, state="done")
    purged = dicomvault("jobs", "purge", "--older-than", "0s", env=env)
    assert purged.returncode == 0, purged.stderr
    assert "purged 1 jobs" in purged.stdout
    assert queue.counts(job_archive.db).get("done", 0) == 0
