"""PostgreSQL connections: reads outside transactions, pings only after idleness.

Each BEGIN, ROLLBACK and ping is a round trip to the server; these tests pin down
that reads make none of them and that a connection the server dropped while idle is
still replaced before a request gets it.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import OperationalError

from dicomvault.index import db as db_module
from dicomvault.index.db import Database
from dicomvault.index.prepared import Prepared
from dicomvault.index.schema import objects

_IDLE = psycopg.pq.TransactionStatus.IDLE


@pytest.fixture
def pg(backend: str, request: pytest.FixtureRequest) -> Iterator[Database]:
    if backend != "postgres":
        pytest.skip("PostgreSQL only: SQLite reads are snapshot transactions on purpose")
    database = Database(request.getfixturevalue("postgres_url"))
    try:
        yield database
    finally:
        database.dispose()


def _backend_pid(database: Database) -> int:
    with database.read() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    other = Database(url)
    try:
        with other.read() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    finally:
        other.dispose()


def test_reads_run_outside_any_transaction(pg: Database) -> None:
    with pg.read() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
        assert conn.connection.driver_connection.info.transaction_status == _IDLE
    by_key = Prepared(select(objects.c.id).where(objects.c.key == bindparam("key")))
    with pg.raw_read() as driver:
        driver.execute("SELECT 1").fetchall()
        assert driver.info.transaction_status == _IDLE
    assert by_key.lookup(pg, {"key": "no/such.dcm"}) is None
    # Writes are still transactions.
    with pg.write() as conn:
        conn.execute(text("SELECT 1"))
        assert conn.connection.driver_connection.info.transaction_status != _IDLE


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    pg: Database, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_S", 0.0)
    database = Database(postgres_url)  # pings every connection that has been idle at all
    try:
        pid = _backend_pid(database)
        _terminate(postgres_url, pid)
        assert _backend_pid(database) != pid  # replaced at checkout, the read succeeds
        pid = _backend_pid(database)
        _terminate(postgres_url, pid)
        assert (
            Prepared(select(objects.c.id).where(objects.c.key == bindparam("key"))).lookup(
                database, {"key": "no/such.dcm"}
            )
            is None
        )
    finally:
        database.dispose()


def test_a_connection_in_steady_use_is_not_pinged(pg: Database, postgres_url: str) -> None:
    # The default idle time is far above the gap between these reads: a connection the
    # server dropped meanwhile fails the one read that next uses it; then it is gone.
    pid = _backend_pid(pg)
    _terminate(postgres_url, pid)
    with pytest.raises(OperationalError):
        _backend_pid(pg)
    assert _backend_pid(pg) != pid
