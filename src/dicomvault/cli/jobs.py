"""`dicomvault worker` and `dicomvault jobs list|show|retry|purge`."""

from __future__ import annotations

import json
import re
import signal
from datetime import timedelta
from types import FrameType
from typing import Annotated

import typer
from rich.table import Table

from dicomvault.archive import Archive
from dicomvault.cli.common import ConfigOption, DataDirOption, console, err_console, settings_from
from dicomvault.jobs import queue
from dicomvault.jobs.worker import Worker

__all__ = ["jobs_app", "worker"]

jobs_app = typer.Typer(
    help="Inspect and manage the durable job queue (pending, running, done, dead jobs).",
    no_args_is_help=True,
)


def worker(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", "-c", min=1, help="Jobs run at once (DICOMVAULT_WORKER_CONCURRENCY)."
        ),
    ] = None,
) -> None:
    """Run queued jobs and event subscribers until stopped (Ctrl-C or SIGTERM).

    Start as many workers as you like, on any machine that reaches the index
    database and the object store: they share the queue.
    """
    import logging

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(config, data_dir=data_dir, worker_concurrency=concurrency)
    archive = Archive.open(settings)
    running = Worker(archive, concurrency=settings.worker_concurrency)

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        running.stop(timeout=0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    console.print(f"worker {running.name}: {settings.worker_concurrency} at once")
    running.start()
    try:
        running.wait()
    finally:
        running.stop()
        archive.close()


def _open(config: ConfigOption, data_dir: DataDirOption) -> Archive:
    return Archive.open(settings_from(config, data_dir=data_dir))


StateOption = Annotated[str | None, typer.Option("--state", help="pending, running, done or dead.")]


@jobs_app.command("list")
def list_cmd(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    state: StateOption = None,
    kind: Annotated[str | None, typer.Option("--kind", help="Only jobs of this kind.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest N jobs.")] = 50,
) -> None:
    """List the newest jobs, with a count of jobs in each state."""
    if state is not None and state not in queue.STATES:
        err_console.print(f"--state {state!r}: use one of {', '.join(queue.STATES)}")
        raise typer.Exit(2)
    archive = _open(config, data_dir)
    try:
        found = queue.list_jobs(archive.db, state=state, kind=kind, limit=limit)
        totals = queue.counts(archive.db)
    finally:
        archive.close()
    table = Table("id", "kind", "state", "attempts", "run after", "last error")
    for job in found:
        error = (job.last_error or "").strip().splitlines()
        table.add_row(
            str(job.id),
            job.kind,
            job.state,
            f"{job.attempts}/{job.max_attempts}",
            job.run_after.strftime("%Y-%m-%d %H:%M:%S"),
            error[-1][:80] if error else "",
        )
    console.print(table)
    console.print(", ".join(f"{s}: {totals.get(s, 0)}" for s in queue.STATES))


@jobs_app.command("show")
def show(
    job_id: Annotated[int, typer.Argument(help="The job's id.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print one job as JSON, its payload and full last error included."""
    archive = _open(config, data_dir)
    try:
        job = queue.get_job(archive.db, job_id)
    finally:
        archive.close()
    if job is None:
        err_console.print(f"no job {job_id}")
        raise typer.Exit(1)
    console.print_json(json.dumps(job.as_dict()))


@jobs_app.command("retry")
def retry(
    job_ids: Annotated[list[int] | None, typer.Argument(help="Ids of dead or done jobs.")] = None,
    all_dead: Annotated[bool, typer.Option("--all-dead", help="Every dead job.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Queue dead (or done) jobs again now, with their attempts counted afresh."""
    if not job_ids and not all_dead:
        err_console.print("name job ids, or --all-dead")
        raise typer.Exit(2)
    archive = _open(config, data_dir)
    failed = False
    try:
        ids = list(job_ids or [])
        if all_dead:
            ids += [j.id for j in queue.list_jobs(archive.db, state="dead", limit=1_000_000)]
        for job_id in ids:
            try:
                queue.retry(archive.db, job_id)
                console.print(f"job {job_id}: queued again")
            except (LookupError, ValueError) as exc:
                err_console.print(str(exc).strip("'\""))
                failed = True
    finally:
        archive.close()
    if failed:
        raise typer.Exit(1)


_AGE = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _age(value: str) -> timedelta:
    match = _AGE.fullmatch(value.strip())
    if match is None:
        raise typer.BadParameter(f"{value!r}: use a number and s, m, h or d, e.g. 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@jobs_app.command("purge")
def purge(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    state: Annotated[
        list[str] | None, typer.Option("--state", help="done and/or dead (default: done).")
    ] = None,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Only jobs that ended longer ago: 30m, 12h, 7d.")
    ] = "7d",
) -> None:
    """Delete finished jobs (done, or dead with --state dead) that ended long enough ago."""
    age = _age(older_than)
    archive = _open(config, data_dir)
    try:
        removed = queue.purge(archive.db, state or ["done"], age)
    except ValueError as exc:
        err_console.print(str(exc))
        raise typer.Exit(2) from exc
    finally:
        archive.close()
    console.print(f"purged {removed} jobs")
