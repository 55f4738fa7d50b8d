"""Statements of the ingest's hot path, compiled once and run on the driver's cursor.

Every instance stored runs the same six or seven small statements. Through
SQLAlchemy's `Connection.execute`, each pays for a cache-key walk of the statement,
an execution context, bind processing, events and a result object: 30-40 us of CPU
a statement here, more than SQLite takes to run it. A `Prepared` statement is
compiled once per dialect (by SQLAlchemy, so the SQL is the same as before) and
then handed to the DBAPI cursor with its parameters converted by the same type
processors SQLAlchemy would use (JSON to text, and so on). Errors come out wrapped
as SQLAlchemy's (`IntegrityError`, `OperationalError`, ...), so callers catch what
they caught before.

Only for statements whose parameters are values (no lists to expand) and whose
columns have no Python-side defaults: that is what `Prepared` checks when it
compiles.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert, Update

if TYPE_CHECKING:
    from dicomvault.index.db import Database

__all__ = ["Prepared"]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A statement compiled for one dialect and one set of parameter names."""

    sql: str
    positions: tuple[str, ...] | None  # parameter order for positional drivers (SQLite)
    fixed: dict[str, Any]  # binds the statement carries its own value for
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    error: type[Exception]  # the driver's base error class


class Prepared:
    """One statement, compiled per dialect and parameter names on first use."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, frozenset[str]], _Plan] = {}
        self._lock = threading.Lock()

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Run the statement in `conn`'s transaction; the DBAPI cursor."""
        driver = conn.connection.driver_connection
        assert driver is not None  # a connection in use is checked out
        return self._run(conn.dialect, driver, params)

    def lookup(self, db: Database, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a query run on its own, outside any transaction, on a pooled
        connection taken without a SQLAlchemy `Connection` around it (`Database.raw_read`:
        no `Connection` object, no BEGIN, no ROLLBACK)."""
        with db.raw_read() as driver:
            return _first_row(self._run(db.engine.dialect, driver, params))

    def _run(self, dialect: Dialect, driver: Any, params: Mapping[str, Any]) -> Any:
        plan = self._plans.get((dialect.name, frozenset(params)))
        if plan is None:
            plan = self._compile(dialect, frozenset(params))
        values = {**plan.fixed, **params}
        for name, process in plan.processors:
            values[name] = process(values[name])
        arguments: Any = (
            values if plan.positions is None else [values[name] for name in plan.positions]
        )
        cursor = driver.cursor()
        try:
            cursor.execute(plan.sql, arguments)
        except plan.error as exc:
            raise DBAPIError.instance(plan.sql, arguments, exc, plan.error) from exc
        return cursor

    def scalar(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first column of the first row (RETURNING), or None without rows."""
        row = _first_row(self.execute(conn, params))
        return None if row is None else row[0]

    def first(self, conn: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        return _first_row(self.execute(conn, params))

    def all(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row, the cursor closed (as `first` does)."""
        cursor = self.execute(conn, params)
        try:
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def _compile(self, dialect: Dialect, names: frozenset[str]) -> _Plan:
        keys = sorted(names) if isinstance(self.statement, Insert) else None
        compiled = self.statement.compile(dialect=dialect, column_keys=keys)
        assert isinstance(compiled, SQLCompiler)  # a statement, not DDL
        fixed: dict[str, Any] = {}
        processors: list[tuple[str, Callable[[Any], Any]]] = []
        for name, bind in compiled.binds.items():
            if bind.expanding:
                raise TypeError(f"{name}: expanding parameters cannot be prepared")
            if name not in names:
                if bind.required:
                    raise TypeError(f"{name}: a value is required")
                fixed[name] = bind.effective_value
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors.append((name, process))
        if isinstance(self.statement, Insert | Update):
            # SQLAlchemy fills these in at execution; the driver would not.
            kind = "default" if isinstance(self.statement, Insert) else "onupdate"
            for column in self.statement.table.columns:
                if column.key not in names and getattr(column, kind) is not None:
                    raise TypeError(f"{column}: Python-side defaults cannot be prepared")
        dbapi = dialect.loaded_dbapi
        plan = _Plan(
            sql=compiled.string,
            positions=tuple(compiled.positiontup or ()) if compiled.positional else None,
            fixed=fixed,
            processors=tuple(processors),
            error=dbapi.Error,
        )
        with self._lock:
            self._plans[(dialect.name, names)] = plan
        return plan


def _first_row(cursor: Any) -> tuple[Any, ...] | None:
    """The cursor's first row; the cursor closed, so no statement stays open on the
    connection (on SQLite an open one would hold its read snapshot)."""
    try:
        row = cursor.fetchone()
    finally:
        cursor.close()
    return None if row is None else tuple(row)
