"""The reconciler on both backends: orphan objects are adopted (or removed) after the grace
period, rows whose object is missing are reported and left alone; as the real command."""

from __future__ import annotations

import io

from sqlalchemy import select

from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.index.schema import instances, objects, orphan_objects
from dicomvault.model.levels import Level
from dicomvault.query import QueryRequest, search
from dicomvault.storage import new_key
from dicomvault.synthetic import instance_bytes, uid
from tests.support.cli import command_env, dicomvault


def _instance(name: str) -> tuple[str, bytes]:
    sop = uid(f"rec/{name}/i")
    data = instance_bytes(
        study_uid=uid(f"rec/{name}/st"), series_uid=uid(f"rec/{name}/se"), sop_uid=sop, size=8
    )
    return sop, bytes(128) + data[128:]


def _found(archive: Archive, sop: str) -> bool:
    request = QueryRequest(level=Level.INSTANCE, filters={"00080018": sop})
    return bool(search(archive.db, request, max_results=10).matches)


def _keys(archive: Archive) -> set[str]:
    return {info.key for info in archive.store.list("instances/")}


def test_orphans_wait_out_the_grace_period_then_are_adopted_or_removed(
    archive: Archive, settings: Settings
) -> None:
    sop, data = _instance("orphan")
    orphan = archive.store.put(new_key(), [data]).key  # a crash before the index commit
    junk = archive.store.put(new_key(), [b"half a file"]).key
    env = command_env(settings)

    waiting = dicomvault("reconcile", "--grace", "3600", env=env)
    assert waiting.returncode == 0, waiting.stderr
    assert "0 adopted, 0 removed, 2 waiting, 0 missing" in waiting.stdout
    assert {orphan, junk} <= _keys(archive)
    with archive.db.read() as conn:
        noted = set(conn.execute(select(orphan_objects.c.key)).scalars())
    assert noted == {orphan, junk}
    assert not _found(archive, sop)

    dry = dicomvault("reconcile", "--grace", "0", "--dry-run", env=env)
    assert "would adopt" in dry.stdout
    assert {orphan, junk} <= _keys(archive)

    done = dicomvault("reconcile", "--grace", "0", env=env)
    assert done.returncode == 0, done.stderr
    assert "1 adopted, 1 removed, 0 waiting, 0 missing" in done.stdout
    assert _found(archive, sop)
    assert orphan not in _keys(archive)
    assert junk not in _keys(archive)
    with archive.db.read() as conn:
        assert conn.execute(select(orphan_objects.c.key)).all() == []
        (key,) = conn.execute(select(objects.c.key)).scalars()
    assert _keys(archive) == {key}  # the adopted instance, under its own new key

    again = dicomvault("reconcile", "--grace", "0", env=env)
    assert "0 adopted, 0 removed, 0 waiting, 0 missing" in again.stdout


def test_a_row_whose_object_is_missing_is_reported_and_left(
    archive: Archive, settings: Settings
) -> None:
    sop, data = _instance("lost")
    archive.ingestor.ingest(io.BytesIO(data))
    with archive.db.read() as conn:
        key = conn.execute(select(objects.c.key)).scalar_one()
    archive.store.delete(key)

    report = dicomvault("reconcile", env=command_env(settings))
    assert report.returncode == 1
    assert f"MISSING object {key} of instance {sop}" in report.stdout
    with archive.db.read() as conn:
        assert conn.execute(select(instances.c.sop_uid)).scalars().all() == [sop]
