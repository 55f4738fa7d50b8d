"""The index's write transactions: how writers of several processes queue on SQLite."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from dicomvault.index.db import Database


def _hold_the_write_lock(database: str, held: object, release: object) -> None:
    """In another process: write, and hold the lock file as a writer between its
    statements would, until told to let go. Holding the file alone (no SQLite lock)
    shows that writers queue on it rather than on SQLite's polling busy handler."""
    db = Database(f"sqlite:///{database}")
    with db.write() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    fd = os.open(database + "-writelock", os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    held.set()  # type: ignore[attr-defined]
    release.wait(30)  # type: ignore[attr-defined]
    fcntl.lockf(fd, fcntl.LOCK_UN)
    os.close(fd)
    db.dispose()


def test_a_writer_waits_for_another_process_and_goes_on_when_it_commits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "index.sqlite3"
    db = Database(f"sqlite:///{path}")
    with db.write() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    spawn = multiprocessing.get_context("spawn")
    held, release = spawn.Event(), spawn.Event()
    holder = spawn.Process(target=_hold_the_write_lock, args=(str(path), held, release))
    holder.start()
    try:
        assert held.wait(60)
        done = threading.Event()

        def write() -> None:
            with db.write() as conn:
                conn.execute(text("INSERT INTO t VALUES (2)"))
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert not done.wait(0.5)  # queued behind the other process
        release.set()
        assert done.wait(10)  # and through as soon as it commits
        writer.join()
    finally:
        release.set()
        holder.join(30)
    with db.read() as conn:
        assert [r[0] for r in conn.execute(text("SELECT n FROM t ORDER BY n"))] == [1, 2]
    db.dispose()


def _other_process_can_lock(lock_file: Path) -> bool:
    probe = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(lock_file)!r}, os.O_RDWR)\n"
        "try:\n"
        "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", probe], timeout=60).returncode == 0


def test_a_write_that_fails_lets_other_processes_write(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    db = Database(f"sqlite:///{path}")
    with db.write() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    lock_file = tmp_path / "index.sqlite3-writelock"
    with db.write():
        assert not _other_process_can_lock(lock_file)  # held while the write runs

    def fail_half_way() -> None:
        with db.write() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
            raise ValueError("bad input half-way through")

    with pytest.raises(ValueError, match="half-way"):
        fail_half_way()
    assert _other_process_can_lock(lock_file)
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 0  # rolled back
    db.dispose()
