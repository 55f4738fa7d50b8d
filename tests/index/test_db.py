"""The index's write transactions: how writers of several processes queue on SQLite, and
how writers arriving together share one."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from dicomvault.archive import Archive
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


def test_a_write_transaction_is_immediate_and_a_read_one_a_snapshot(tmp_path: Path) -> None:
    """The BEGIN each transaction starts with reaches SQLite: a write transaction holds
    the write lock from its first moment (another connection cannot start one), and a
    read transaction keeps seeing what it saw first while another connection commits."""
    path = tmp_path / "index.sqlite3"
    db = Database(f"sqlite:///{path}")
    with db.write() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    with db.write() as conn:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        conn.execute(text("INSERT INTO t VALUES (1)"))
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 1
        other.execute("INSERT INTO t VALUES (2)")
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 1
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 2
    other.close()
    db.dispose()


def _grouped_table(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")  # groups are SQLite's
    with db.write() as conn:
        conn.execute(text("CREATE TABLE grouped (n INTEGER PRIMARY KEY)"))
    return db


def _write_queued_together(
    db: Database, works: dict[int, Callable[[Connection], int]]
) -> dict[int, object]:
    """Each work from its own thread, all queued behind a turn held until every one
    waits (as behind a transaction under way); what each writer got back or raised."""
    outcomes: dict[int, object] = {}

    def write(n: int) -> None:
        try:
            outcomes[n] = db.group_write(works[n])
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcomes[n] = exc

    db._group.turn.acquire()
    writers = [threading.Thread(target=write, args=(n,)) for n in works]
    for writer in writers:
        writer.start()
    while len(db._group.queue) < len(works):
        time.sleep(0.01)
    db._group.turn.release()
    for writer in writers:
        writer.join(10)
    return outcomes


def _insert(
    n: int, then: Callable[[Connection], None] | None = None
) -> Callable[[Connection], int]:
    def work(conn: Connection) -> int:
        conn.execute(text("INSERT INTO grouped VALUES (:n)"), {"n": n})
        if then is not None:
            then(conn)
        return n

    return work


def _duplicate_key(conn: Connection) -> None:
    conn.execute(text("INSERT INTO grouped VALUES (1)"))


def _exit(_conn: Connection) -> None:
    raise SystemExit


def test_writes_queued_together_share_a_transaction_and_a_failure_undoes_only_itself(
    tmp_path: Path,
) -> None:
    db = _grouped_table(tmp_path)
    outcomes = _write_queued_together(
        db, {1: _insert(1), 2: _insert(2, then=_duplicate_key), 3: _insert(3)}
    )
    assert outcomes[1] == 1
    assert outcomes[3] == 3
    assert isinstance(outcomes[2], IntegrityError)
    with db.read() as conn:
        assert conn.execute(text("SELECT n FROM grouped ORDER BY n")).scalars().all() == [1, 3]


def test_a_group_broken_off_leaves_no_writer_with_a_result(tmp_path: Path) -> None:
    # A write that raises past `Exception` (SystemExit here) ends the group's
    # transaction: no writer of the group may come back as if its write were kept.
    db = _grouped_table(tmp_path)
    outcomes = _write_queued_together(db, {1: _insert(1), 2: _insert(2, then=_exit)})
    assert len(outcomes) == 2
    assert all(isinstance(outcome, BaseException) for outcome in outcomes.values())
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM grouped")).scalar_one() == 0


def test_a_process_writes_through_one_connection_and_a_forked_child_through_its_own(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    with db.write() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    used: list[int] = []

    def write(n: int) -> None:
        with db.write() as conn:
            used.append(id(conn.connection.driver_connection))
            conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def fail_half_way() -> None:
        with db.write() as conn:
            used.append(id(conn.connection.driver_connection))
            conn.execute(text("INSERT INTO t VALUES (100)"))
            raise ValueError("bad input half-way through")

    with pytest.raises(ValueError, match="half-way"):
        fail_half_way()
    write(9)  # the connection goes on after a write that failed
    assert len(set(used)) == 1
    assert len(used) == 10
    with db.read() as conn:  # the pool's connections read what the writer committed
        assert conn.execute(text("SELECT count(*), max(n) FROM t")).one() == (9, 9)

    pid = os.fork()
    if pid == 0:  # the child must not use the connection its parent has open
        status = 1
        try:
            with db.write() as conn:
                mine = id(conn.connection.driver_connection)
                conn.execute(text("INSERT INTO t VALUES (50)"))
            status = 0 if mine != used[0] else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    write(10)
    assert set(used) == {used[0]}
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM t WHERE n IN (50, 10)")).scalar() == 2
    db.dispose()


@pytest.fixture
def all_table(archive: Archive) -> Iterator[Database]:
    """The archive's index with a scratch table `written_all` (both backends)."""
    db = archive.db
    with db.write() as conn:
        conn.execute(text("DROP TABLE IF EXISTS written_all"))
        conn.execute(text("CREATE TABLE written_all (n INTEGER PRIMARY KEY)"))
    yield db
    with db.write() as conn:
        conn.execute(text("DROP TABLE written_all"))


def _add(n: int, *, twice: bool = False) -> Callable[[Connection], int]:
    def work(conn: Connection) -> int:
        conn.execute(text("INSERT INTO written_all VALUES (:n)"), {"n": n})
        if twice:
            conn.execute(text("INSERT INTO written_all VALUES (:n)"), {"n": n})
        return n

    return work


def _note(conn: Connection, values: list[int]) -> None:
    """`after`: what it was given, as rows n + 100."""
    for n in values:
        conn.execute(text("INSERT INTO written_all VALUES (:n)"), {"n": n + 100})


def _rows(db: Database) -> list[int]:
    with db.read() as conn:
        return list(conn.execute(text("SELECT n FROM written_all ORDER BY n")).scalars())


def test_write_all_undoes_only_the_work_that_fails_and_after_sees_the_others(
    all_table: Database,
) -> None:
    outcomes = all_table.write_all([_add(1), _add(2, twice=True), _add(3)], _note)
    assert outcomes[0] == 1
    assert isinstance(outcomes[1], IntegrityError)
    assert outcomes[2] == 3
    assert _rows(all_table) == [1, 3, 101, 103]


def test_write_all_failing_as_a_whole_writes_each_work_alone(all_table: Database) -> None:
    def after(conn: Connection, values: list[int]) -> None:
        if len(values) > 1:
            raise RuntimeError("a deadlock, say")
        _note(conn, values)

    assert all_table.write_all([_add(1), _add(2)], after) == [1, 2]
    assert _rows(all_table) == [1, 2, 101, 102]
    (failed,) = all_table.write_all([_add(3, twice=True)], _note)
    assert isinstance(failed, IntegrityError)
    assert _rows(all_table) == [1, 2, 101, 102]
    assert all_table.write_all([], _note) == []
