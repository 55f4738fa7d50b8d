"""Bulk import in batches (`bulk_import.import_batch`), on both backend pairs.

The command around it (folders, zip archives, the summary) is tested through the real
`dicomvault import` in tests/cli/test_import.py.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dicomvault import bulk_import
from dicomvault.archive import Archive
from dicomvault.bulk_import import ImportStatus, Source, batches, import_batch
from dicomvault.index.schema import instances, objects
from dicomvault.ingest import Ingestor
from dicomvault.synthetic import instance_bytes, uid


def _one(name: str, **kwargs: object) -> bytes:
    return instance_bytes(
        study_uid=uid(f"{name}/st"),
        series_uid=uid(f"{name}/se"),
        sop_uid=uid(f"{name}/i"),
        **kwargs,
    )


def _source(label: str, data: bytes, opened: list[BytesIO] | None = None) -> Source:
    def open_it() -> BytesIO:
        fp = BytesIO(data)
        if opened is not None:
            opened.append(fp)
        return fp

    return Source(label, len(data), open_it)


def _stored(archive: Archive) -> tuple[int, int, int]:
    """Instance rows, object rows, objects in the store."""
    with archive.db.read() as conn:
        rows = [
            int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in (instances, objects)
        ]
    return rows[0], rows[1], len(list(archive.store.list()))


def test_batches_are_cut_by_file_count_and_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk_import, "BATCH_FILES", 3)
    monkeypatch.setattr(bulk_import, "BATCH_BYTES", 100)
    sources = [_source(str(n), bytes(size)) for n, size in enumerate([10] * 7 + [60, 60, 500, 5])]
    cut = [[s.label for s in batch] for batch in batches(sources)]
    assert cut == [["0", "1", "2"], ["3", "4", "5"], ["6", "7"], ["8"], ["9"], ["10"]]
    assert list(batches([])) == []


def test_each_source_of_a_batch_gets_its_own_result(archive: Archive, tmp_path: Path) -> None:
    archive.ingestor.ingest(BytesIO(_one("there")))
    archive.ingestor.ingest(BytesIO(_one("clash", instance_number=1)))
    opened: list[BytesIO] = []
    missing = tmp_path / "gone.dcm"
    sources = [
        _source("good1", _one("good1"), opened),
        _source("text", b"not an image\n" * 20, opened),
        _source("truncated", _one("cut")[:700], opened),
        Source(str(missing), 0, lambda: open(missing, "rb")),  # noqa: SIM115 - the import closes it
        _source("there", _one("there"), opened),
        _source("clash", _one("clash", instance_number=2), opened),
        _source("good2", _one("good2"), opened),
        _source("good2 again", _one("good2"), opened),
    ]

    results = import_batch(archive.ingestor, sources)

    assert [(r.source, r.status) for r in results] == [
        ("good1", ImportStatus.STORED),
        ("text", ImportStatus.NOT_DICOM),
        ("truncated", ImportStatus.INVALID),
        (str(missing), ImportStatus.FAILED),
        ("there", ImportStatus.ALREADY_STORED),
        ("clash", ImportStatus.CONFLICT),
        ("good2", ImportStatus.STORED),
        ("good2 again", ImportStatus.ALREADY_STORED),
    ]
    assert (results[0].detail, results[0].size) == (uid("good1/i"), len(_one("good1")))
    assert "No such file" in results[3].detail
    assert "already stored with different content" in results[5].detail
    assert _stored(archive) == (4, 4, 4)  # there, clash, good1, good2
    assert len(opened) == 7
    assert all(fp.closed for fp in opened)


def test_a_batch_the_index_refuses_is_reported_and_keeps_nothing(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("the index is unwritable")

    monkeypatch.setattr(Ingestor, "_after", broken)
    sources = [_source(f"f{n}", _one(f"refused/{n}")) for n in range(3)]
    results = import_batch(archive.ingestor, sources)
    assert [r.status for r in results] == [ImportStatus.FAILED] * 3
    assert all(r.detail == "RuntimeError: the index is unwritable" for r in results)
    assert _stored(archive) == (0, 0, 0)


def test_a_batch_whose_ingest_fails_whole_is_reported_file_by_file(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def gone(*_args: object) -> list[int]:
        raise RuntimeError("the index went away")

    monkeypatch.setattr(Ingestor, "_batch", gone)
    sources = [_source("a", _one("gone/a")), _source("text", b"plain text" * 30)]
    sources.append(_source("b", _one("gone/b")))
    results = import_batch(archive.ingestor, sources)
    assert [(r.source, r.status) for r in results] == [
        ("a", ImportStatus.FAILED),
        ("text", ImportStatus.NOT_DICOM),
        ("b", ImportStatus.FAILED),
    ]
    assert results[0].detail == "RuntimeError: the index went away"
    assert _stored(archive) == (0, 0, 0)
