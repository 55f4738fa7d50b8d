"""Statements run on the driver's cursor (`index.prepared`) store and read what the same
statements through SQLAlchemy do, and fail the way SQLAlchemy's do."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from dicomvault.archive import Archive
from dicomvault.index.prepared import Prepared
from dicomvault.index.schema import HeaderJSON, objects

_HEADER = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Ünïcode^Nàme"}]}, "x": [1, 2.5]}


def _object(key: str) -> dict[str, Any]:
    return {
        "sop_uid": "1.2.3",
        "store": "file:///archive",
        "key": key,
        "size": 42,
        "sha256": "ab" * 32,
        "block_blake3": b"\x00\x01\xff",
    }


def test_an_insert_stores_what_sqlalchemy_would(archive: Archive) -> None:
    insert = Prepared(objects.insert().returning(objects.c.id))
    with archive.db.write() as conn:
        prepared_id = insert.scalar(conn, _object("a/1.dcm"))
        plain_id = conn.execute(objects.insert().returning(objects.c.id), _object("a/2.dcm"))
        plain_id = plain_id.scalar_one()
    with archive.db.read() as conn:
        both = select(objects).where(objects.c.id.in_([prepared_id, plain_id]))
        rows = {row.key: row for row in conn.execute(both)}
    mine, theirs = rows["a/1.dcm"], rows["a/2.dcm"]
    columns = [c.key for c in objects.c if c.key not in ("id", "key", "created_at")]
    assert {c: getattr(mine, c) for c in columns} == {c: getattr(theirs, c) for c in columns}
    assert mine.block_blake3 == b"\x00\x01\xff"
    assert mine.tier == "hot"  # the server default applies to columns left out


def test_json_and_literal_binds_go_through_the_types_processors(archive: Archive) -> None:
    table = Table(
        "prepared_probe",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String(32), nullable=False),
        Column("doc", HeaderJSON),
        Column("n", Integer, nullable=False, server_default="0"),
    )
    table.create(archive.db.engine)
    try:
        bump = Prepared(update(table).where(table.c.id == bindparam("row")).values(n=table.c.n + 5))
        with archive.db.write() as conn:
            row_id = Prepared(table.insert().returning(table.c.id)).scalar(
                conn, {"name": "one", "doc": _HEADER}
            )
            bump.execute(conn, {"row": row_id})
            bump.execute(conn, {"row": row_id})
        with archive.db.read() as conn:
            by_name = select(table.c.doc, table.c.n).where(table.c.name == bindparam("name"))
            found = Prepared(by_name)
            assert found.first(conn, {"name": "one"}) is not None
            stored = conn.execute(select(table.c.doc, table.c.n)).one()
            assert found.first(conn, {"name": "nobody"}) is None
        assert stored.doc == _HEADER  # read back by SQLAlchemy: the JSON went in as JSON
        assert stored.n == 10
    finally:
        table.drop(archive.db.engine)


def test_a_constraint_violation_is_sqlalchemys_integrity_error_and_keeps_nothing(
    archive: Archive,
) -> None:
    insert = Prepared(objects.insert().returning(objects.c.id))
    with archive.db.write() as conn:
        insert.scalar(conn, _object("b/1.dcm"))

    def insert_both() -> None:
        with archive.db.write() as conn:
            insert.scalar(conn, _object("b/2.dcm"))
            insert.scalar(conn, _object("b/1.dcm"))  # the key is unique

    with pytest.raises(IntegrityError):
        insert_both()
    with archive.db.read() as conn:
        keys = conn.execute(select(objects.c.key).where(objects.c.key.like("b/%"))).scalars()
        assert sorted(keys) == ["b/1.dcm"]


def test_statements_it_cannot_run_faithfully_are_refused(archive: Archive) -> None:
    with archive.db.read() as conn:
        missing = Prepared(select(objects.c.id).where(objects.c.key == bindparam("key")))
        with pytest.raises(TypeError, match="required"):
            missing.execute(conn, {})
        listed = Prepared(select(objects.c.id).where(objects.c.key.in_(bindparam("keys"))))
        with pytest.raises(TypeError, match="expanding"):
            listed.execute(conn, {"keys": ["a", "b"]})
    with_default = Table(
        "prepared_default",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String(8), default="x"),
    )
    with archive.db.read() as conn, pytest.raises(TypeError, match="Python-side default"):
        Prepared(with_default.insert()).execute(conn, {"id": 1})
    with_onupdate = Table(
        "prepared_onupdate",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String(8), onupdate="y"),
    )
    bump = update(with_onupdate).where(with_onupdate.c.id == bindparam("row")).values(id=2)
    with archive.db.read() as conn, pytest.raises(TypeError, match="Python-side default"):
        Prepared(bump).execute(conn, {"row": 1})


def test_a_lookup_on_a_raw_pooled_connection_reads_committed_rows(archive: Archive) -> None:
    by_key = Prepared(select(objects.c.id, objects.c.size).where(objects.c.key == bindparam("key")))
    assert by_key.lookup(archive.db, {"key": "c/1.dcm"}) is None
    with archive.db.write() as conn:
        row_id = Prepared(objects.insert().returning(objects.c.id)).scalar(conn, _object("c/1.dcm"))
    for _ in range(3):  # the pooled connections come back usable, with no transaction left
        assert by_key.lookup(archive.db, {"key": "c/1.dcm"}) == (row_id, 42)
    with archive.db.write() as conn:
        conn.execute(objects.delete().where(objects.c.id == row_id))
    assert by_key.lookup(archive.db, {"key": "c/1.dcm"}) is None


def test_all_reads_every_row_as_sqlalchemy_does_and_leaves_no_statement_open(
    archive: Archive,
) -> None:
    with archive.db.write() as conn:
        for n in range(3):
            conn.execute(objects.insert(), _object(f"d/{n}.dcm") | {"size": n})
    by_prefix = (
        select(objects.c.key, objects.c.size)
        .where(objects.c.key.like(bindparam("prefix")))
        .order_by(objects.c.key)
    )
    with archive.db.read() as conn:
        rows = Prepared(by_prefix).all(conn, {"prefix": "d/%"})
        assert rows == [tuple(row) for row in conn.execute(by_prefix, {"prefix": "d/%"})]
        assert rows == [("d/0.dcm", 0), ("d/1.dcm", 1), ("d/2.dcm", 2)]
        assert Prepared(by_prefix).all(conn, {"prefix": "none/%"}) == []
    with archive.db.read() as conn:
        assert len(Prepared(by_prefix).all(conn, {"prefix": "d/%"})) == 3
        # With its cursor closed, the reading connection holds no snapshot that would
        # keep it from seeing a write committed meanwhile.
        with archive.db.write() as other:
            other.execute(objects.delete().where(objects.c.key == "d/1.dcm"))
        assert [key for key, _ in Prepared(by_prefix).all(conn, {"prefix": "d/%"})] == [
            "d/0.dcm",
            "d/2.dcm",
        ]
