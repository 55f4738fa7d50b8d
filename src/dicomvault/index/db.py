"""Engines and transactions for SQLite and PostgreSQL.

`Database.write()` is the one way to change the index. On SQLite it takes a
process-wide lock, then a POSIX lock on a file beside the database, then starts
`BEGIN IMMEDIATE`, so concurrent writers queue instead of failing with "database
is locked" half-way through; WAL mode lets readers go on meanwhile. The file lock
is what serializes the processes of `serve --processes N`: a waiter blocked on it
wakes the moment the holder commits, where SQLite's own busy handler sleeps and
polls (1, 2, 5, 10 ... ms), so under steady writes from two processes one of them
kept losing the race. On PostgreSQL it is a plain transaction from a pool.

On PostgreSQL, reads run without a transaction (autocommit) and a pooled connection
is pinged only after it has been idle (`PING_AFTER_IDLE_S`). Each is a round trip to
the server saved per use: psycopg sends BEGIN on its own before a transaction's first
statement, the pool sends ROLLBACK when a read's connection comes back, and
SQLAlchemy's `pool_pre_ping` sent a ping at every checkout. A read transaction gave
nothing for them: at PostgreSQL's default isolation (READ COMMITTED) each statement
sees its own snapshot inside a transaction or out of one. A connection the server
dropped while it was in use, or soon after, fails the one request that next uses it
and is then replaced.

On SQLite every write of a process goes through one connection, kept open (`_Writer`):
the writes are one at a time anyway, and SQLite keeps a connection's page cache
across its transactions only while no other connection has committed in between.
With writes spread over the pool, each began with an emptied cache and read the
index's pages again: under strace a single-instance STOW-RS request made 48 `pread`
calls, 9 with one writer. Such requests then took 1.57-1.69 ms of CPU at the median
instead of 1.78-1.81, and 1.83-1.98 ms instead of 2.06-2.09 to answer (two runs
each, alternated).

`Database.group_write(work)` is for many small writes from many threads at once (the
index rows of instances arriving together): on SQLite, the writes waiting when a
transaction starts share it, each in its own savepoint, so one failing undoes only
itself, and the queue pays for one transaction, one pass through the locks and one
commit instead of one each. On PostgreSQL each is its own transaction, as before.

`Database.write_all(works, after)` is for many writes from one thread (the parts of one
STOW-RS request): all in one transaction, each in its own savepoint, and `after` last
with what they returned. On PostgreSQL that is what lets the event log's lock be taken
once, at the end, for all of them (`index.eventlog`); on SQLite the transaction is a
group write's, shared with the writes of other threads.

JSON columns (every instance's header) are written by orjson, compact and UTF-8,
not by the standard library's encoder: the same values, at a tenth of the cost.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

from dicomvault.parsing.dicom_json import dicom_json_text

__all__ = ["GROUP_LIMIT", "PING_AFTER_IDLE_S", "Database", "normalize_url"]

T = TypeVar("T")
log = logging.getLogger(__name__)
GROUP_LIMIT = 64  # most writes one group transaction takes
PING_AFTER_IDLE_S = 30.0  # a PostgreSQL connection idle longer is pinged before use


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
        self._writer = _Writer()
        self._group = _Group()
        self._lock_path: Path | None = None
        self._lock_fd: int | None = None
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                self._lock_path = Path(parsed.database + "-writelock")
            self.engine = create_engine(
                self.url,
                connect_args={"check_same_thread": False, "timeout": 60},
                json_serializer=dicom_json_text,
            )
            _configure_sqlite(self.engine)
            self._reader: Engine = self.engine
        else:
            self.engine = create_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                json_serializer=dicom_json_text,
            )
            _ping_when_idle(self.engine, PING_AFTER_IDLE_S)
            self._reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reading; not for writes (on PostgreSQL each statement would
        commit by itself)."""
        with self._reader.connect() as conn:
            yield conn

    @contextmanager
    def raw_read(self) -> Iterator[Any]:
        """The driver's own connection of a pooled one, for reads outside any transaction
        (no SQLAlchemy `Connection` around it: see `index.prepared`). On PostgreSQL
        also for a write that is one statement committed by itself (the audit record);
        on SQLite writes go through `write`, which holds the write locks."""
        with closing(self.engine.raw_connection()) as raw:
            driver = raw.driver_connection
            assert driver is not None  # a connection just checked out
            if self.is_sqlite:
                yield driver
                return
            driver.autocommit = True
            try:
                yield driver
            finally:
                if not driver.closed:
                    driver.autocommit = False

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
                conn = self._writer.connection(self.engine)
                try:
                    with conn.begin():
                        yield conn
                except BaseException:
                    if conn.invalidated or conn.closed:
                        self._writer.drop()  # a broken connection: the next write opens another
                    raise
            finally:
                if fd is not None:
                    fcntl.lockf(fd, fcntl.LOCK_UN)

    def group_write(self, work: Callable[[Connection], T]) -> T:
        """`work(conn)` in a write transaction shared with the other group writes
        waiting when it begins; its result, or what it raised (undoing only its own
        statements). A write that finds no other waiting runs alone, as `write` would.

        The thread that takes the turn writes the queued ones as well as its own;
        the others, finding theirs done, return at once. Should a group fail as a
        whole, each of its writes is tried again alone."""
        pending = _Pending(work)
        if not self.is_sqlite:
            # On PostgreSQL the event log's advisory lock must be the last lock a
            # transaction takes (see `index.eventlog`); a group would take it with its
            # first write and then wait on rows, which deadlocks between processes.
            self._write_alone(pending)
            return pending.result()
        group = self._group
        with group.queue_lock:
            group.queue.append(pending)
        with group.turn:
            if not pending.done:
                with group.queue_lock:
                    batch = group.queue[:GROUP_LIMIT]
                    del group.queue[:GROUP_LIMIT]
                try:
                    if len(batch) == 1 or not self._write_group(batch):
                        for alone in batch:
                            self._write_alone(alone)
                finally:
                    for done in batch:
                        if not done.finished:  # interrupted before its outcome was known
                            done.fail(RuntimeError("the index write was interrupted"))
                        done.done = True
        return pending.result()

    def write_all(
        self,
        works: Sequence[Callable[[Connection], T]],
        after: Callable[[Connection, list[T]], Any],
    ) -> list[T | Exception]:
        """Each of `works` in its own savepoint of one transaction, then `after(conn,
        values)` with the values of those that succeeded, before the commit; for each
        work, its value or what it raised (its statements undone). Should the transaction
        fail as a whole (`after` raising, a deadlock, a lost connection), each work is
        written again alone, with its own `after`."""
        if not works:
            return []
        if len(works) == 1:
            work = works[0]

            def alone(conn: Connection) -> T:
                value = work(conn)
                after(conn, [value])
                return value

            try:
                return [self.group_write(alone)]
            except Exception as exc:  # noqa: BLE001 - the caller's outcome for this work
                return [exc]

        def together(conn: Connection) -> list[T | Exception]:
            driver = conn.connection.driver_connection
            assert driver is not None  # a connection in a transaction
            outcomes: list[T | Exception] = []
            for work in works:
                driver.execute("SAVEPOINT write_all")
                try:
                    outcomes.append(work(conn))
                except Exception as exc:  # noqa: BLE001 - this work's outcome
                    driver.execute("ROLLBACK TO SAVEPOINT write_all")
                    outcomes.append(exc)
                driver.execute("RELEASE SAVEPOINT write_all")
            after(conn, [o for o in outcomes if not isinstance(o, Exception)])
            return outcomes

        try:
            return self.group_write(together)
        except Exception:  # noqa: BLE001 - each work is tried again alone
            log.warning(
                "a transaction of %d index writes failed; writing them one by one", len(works)
            )
            return [outcome for work in works for outcome in self.write_all([work], after)]

    def _write_group(self, batch: list[_Pending[Any]]) -> bool:
        """The writes of `batch` in one transaction, each in a savepoint; False if the
        transaction itself failed (nothing of it kept)."""
        try:
            with self.write() as conn:
                driver = conn.connection.driver_connection
                assert driver is not None
                for pending in batch:
                    driver.execute("SAVEPOINT group_write")
                    if pending.run(conn):
                        driver.execute("RELEASE SAVEPOINT group_write")
                    else:
                        driver.execute("ROLLBACK TO SAVEPOINT group_write")
                        driver.execute("RELEASE SAVEPOINT group_write")
        except Exception:  # noqa: BLE001 - each write is tried again alone
            log.warning("a group of %d index writes failed; writing them one by one", len(batch))
            return False
        for pending in batch:
            pending.finished = True
        return True

    def _write_alone(self, pending: _Pending[Any]) -> None:
        pending.value, pending.error = None, None
        try:
            with self.write() as conn:
                pending.run(conn)
                pending.raise_failure()  # its transaction rolls back
        except BaseException as exc:  # noqa: BLE001 - raised again in the writer's thread
            pending.fail(exc)
        pending.finished = True

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
        if self._write_lock is not None:
            with self._write_lock:
                self._writer.drop()
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _ping_when_idle(engine: Engine, idle_s: float) -> None:
    """Ping a pooled connection at checkout if it has been idle over `idle_s` (one the
    server or a firewall dropped meanwhile is then replaced, not handed out)."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since <= idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # the pool discards it and checks out another
            raise DisconnectionError(f"an idle database connection was dropped: {exc}") from exc


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


class _Writer:
    """The connection a process's SQLite writes go through (see the module doc); used
    only under the write lock. A forked child does not use its parent's: it opens its
    own on its first write."""

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self._pid = 0

    def connection(self, engine: Engine) -> Connection:
        if self._conn is None or self._pid != os.getpid():
            self._conn = engine.connect().execution_options(sqlite_begin="IMMEDIATE")
            self._pid = os.getpid()
        return self._conn

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            conn.close()


class _Pending(Generic[T]):
    """One writer's work in a group transaction, and what came of it."""

    __slots__ = ("done", "error", "finished", "value", "work")

    def __init__(self, work: Callable[[Connection], T]) -> None:
        self.work = work
        self.done = False  # its writer may return
        self.finished = False  # its transaction committed or rolled back
        self.value: T | None = None
        self.error: BaseException | None = None

    def run(self, conn: Connection) -> bool:
        """Do the work; False (the error kept) if it raised."""
        try:
            self.value = self.work(conn)
        except Exception as exc:  # noqa: BLE001 - raised again in the writer's thread
            self.error = exc
            return False
        return True

    def fail(self, exc: BaseException) -> None:
        """The transaction did not commit: nothing of this work was kept."""
        if self.error is None:
            self.error = exc

    def raise_failure(self) -> None:
        if self.error is not None:
            raise self.error

    def result(self) -> T:
        self.raise_failure()
        return self.value  # type: ignore[return-value]


class _Group:
    """The queue of group writes and the turn to write them."""

    def __init__(self) -> None:
        self.queue: list[_Pending[Any]] = []
        self.queue_lock = threading.Lock()
        self.turn = threading.Lock()
