"""Engines and transactions for SQLite and PostgreSQL.

`Database.write()` is the one way to change the index. On SQLite it takes a
process-wide lock, then a POSIX lock on a file beside the database, then starts
`BEGIN IMMEDIATE`, so concurrent writers queue instead of failing with "database
is locked" half-way through; WAL mode lets readers go on meanwhile. The file lock
is what serializes the processes of `serve --processes N`: a waiter blocked on it
wakes the moment the holder commits, where SQLite's own busy handler sleeps and
polls (1, 2, 5, 10 ... ms), so under steady writes from two processes one of them
kept losing the race. On PostgreSQL it is a plain transaction from a pool.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

__all__ = ["Database", "normalize_url"]


def normalize_url(url: str) -> str:
    """Pick the drivers this project ships with (psycopg 3) for plain URLs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


class Database:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._lock_path: Path | None = None
        self._lock_fd: int | None = None
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                self._lock_path = Path(parsed.database + "-writelock")
            self.engine = create_engine(
                self.url, connect_args={"check_same_thread": False, "timeout": 60}
            )
            _configure_sqlite(self.engine)
        else:
            self.engine = create_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that commits on success and rolls back on any exception."""
        if self._write_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._write_lock:
            fd = self._process_lock_fd()
            if fd is not None:
                fcntl.lockf(fd, fcntl.LOCK_EX)
            try:
                with self.engine.connect() as conn:
                    conn.execution_options(sqlite_begin="IMMEDIATE")
                    with conn.begin():
                        yield conn
            finally:
                if fd is not None:
                    fcntl.lockf(fd, fcntl.LOCK_UN)

    def _process_lock_fd(self) -> int | None:
        """The lock file, opened on first write (called under the thread lock).

        POSIX record locks belong to the process, so threads of one process do not
        block each other on it (the thread lock does that) and a forked child, which
        inherits the descriptor but not the lock, takes its own."""
        if self._lock_path is None:
            return None
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._lock_fd

    def dispose(self) -> None:
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


_BEGIN = {mode: f"BEGIN {mode}" for mode in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")}


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (the pysqlite recipe).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives an application crash; an OS crash can lose the
        # last commits, whose objects the reconciler then adopts (DESIGN principle 2).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        # DICOM matching is case-sensitive except for person names (which have
        # upper-cased columns); this also lets prefix LIKE use the indexes.
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        # Straight to the driver: through `exec_driver_sql`, SQLAlchemy's execution
        # path (events, an execution context, a result) cost more than the BEGIN itself,
        # once per transaction.
        driver = conn.connection.driver_connection
        assert driver is not None  # a connection being begun is checked out
        driver.execute(_BEGIN[mode])
