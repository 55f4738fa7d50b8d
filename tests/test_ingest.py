"""The one ingest function, on both backend pairs."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from typing import Any

import pydicom
import pytest
from sqlalchemy import func, select

from dicomvault import ingest
from dicomvault.archive import Archive
from dicomvault.config import DuplicatePolicy, Settings
from dicomvault.errors import DuplicateConflict, StudyMismatch
from dicomvault.index.schema import events, instances, objects, patients, studies
from dicomvault.ingest import Ingestor, Outcome
from dicomvault.model.origin import Door, Origin
from dicomvault.synthetic import dataset, instance_bytes, to_bytes, uid


def _count(archive: Archive, table: object) -> int:
    with archive.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def _one(name: str, **kwargs: object) -> bytes:
    return instance_bytes(
        study_uid=uid(f"{name}/st"),
        series_uid=uid(f"{name}/se"),
        sop_uid=uid(f"{name}/i"),
        **kwargs,
    )


def test_stores_object_index_rows_and_event(archive: Archive) -> None:
    data = _one("a")
    result = archive.ingestor.ingest(BytesIO(data))
    assert result.outcome is Outcome.STORED
    assert _count(archive, instances) == 1
    with archive.db.read() as conn:
        key, sha = conn.execute(select(objects.c.key, objects.c.sha256)).one()
        kinds = conn.execute(select(events.c.kind)).scalars().all()
    stored = b"".join(archive.store.iter_bytes(key))
    assert stored[:128] == bytes(128)
    assert stored[128:] == data[128:]
    assert hashlib.sha256(stored).hexdigest() == sha == result.sha256
    assert kinds == ["instance.stored"]


def test_origin_is_recorded_with_instance_study_and_event(archive: Archive) -> None:
    origin = Origin(Door.DIMSE, site="RAJ", calling_aet="RAJ_MR1", address="10.0.0.7")
    archive.ingestor.ingest(BytesIO(_one("orig")), origin=origin)
    archive.ingestor.ingest(BytesIO(_one("plain")))
    with archive.db.read() as conn:
        rows = conn.execute(
            select(instances.c.origin_door, instances.c.calling_aet, instances.c.site).order_by(
                instances.c.id
            )
        ).all()
        sites = conn.execute(select(studies.c.site).order_by(studies.c.id)).scalars().all()
        payloads = conn.execute(select(events.c.payload).order_by(events.c.seq)).scalars().all()
    assert [tuple(r) for r in rows] == [("dimse", "RAJ_MR1", "RAJ"), ("api", None, None)]
    assert sites == ["RAJ", None]
    assert payloads[0]["calling_aet"] == "RAJ_MR1"
    assert payloads[0]["site"] == "RAJ"


def test_preamble_is_zeroed(archive: Archive) -> None:
    data = bytearray(_one("pre"))
    data[:128] = b"MZ" + b"\xff" * 126  # a polyglot executable header
    archive.ingestor.ingest(BytesIO(bytes(data)))
    with archive.db.read() as conn:
        key = conn.execute(select(objects.c.key)).scalar_one()
    assert archive.store.read_range(key, 0, 132) == bytes(128) + b"DICM"


def test_same_bytes_again_is_a_no_op_success(archive: Archive) -> None:
    data = _one("dup")
    archive.ingestor.ingest(BytesIO(data))
    again = archive.ingestor.ingest(BytesIO(data))
    assert again.outcome is Outcome.DUPLICATE
    assert _count(archive, objects) == 1
    assert len(list(archive.store.list())) == 1
    assert _count(archive, events) == 1


def test_different_bytes_same_uid_rejected_by_default(archive: Archive) -> None:
    archive.ingestor.ingest(BytesIO(_one("conf", seed=1)))
    with pytest.raises(DuplicateConflict, match="already stored with different content"):
        archive.ingestor.ingest(BytesIO(_one("conf", seed=2)))
    assert _count(archive, objects) == 1
    assert len(list(archive.store.list())) == 1


@pytest.mark.parametrize(
    ("policy", "outcome", "objects_left"),
    [
        (DuplicatePolicy.OVERWRITE, Outcome.REPLACED, 1),
        (DuplicatePolicy.KEEP_VERSIONS, Outcome.VERSIONED, 2),
    ],
)
def test_replacement_policies(
    settings: Settings, policy: DuplicatePolicy, outcome: Outcome, objects_left: int
) -> None:
    archive = Archive.open(settings.model_copy(update={"duplicate_policy": policy}))
    try:
        archive.ingestor.ingest(BytesIO(_one("pol", seed=1)))
        second = _one("pol", seed=2)
        result = archive.ingestor.ingest(BytesIO(second))
        assert result.outcome is outcome
        assert _count(archive, objects) == objects_left
        assert len(list(archive.store.list())) == objects_left
        assert _count(archive, instances) == 1
        with archive.db.read() as conn:
            key = conn.execute(
                select(objects.c.key).join(instances, instances.c.object_fk == objects.c.id)
            ).scalar_one()
            count = conn.execute(select(studies.c.num_instances)).scalar_one()
        assert b"".join(archive.store.iter_bytes(key))[128:] == second[128:]
        assert count == 1
    finally:
        archive.close()


def test_study_mismatch_stores_nothing(archive: Archive) -> None:
    with pytest.raises(StudyMismatch):
        archive.ingestor.ingest(BytesIO(_one("mm")), expected_study_uid="1.2.3")
    assert _count(archive, instances) == 0
    assert list(archive.store.list()) == []


def test_counters_and_levels(archive: Archive) -> None:
    study = uid("cnt/st")
    for s in range(2):
        for i in range(3):
            archive.ingestor.ingest(
                BytesIO(
                    instance_bytes(
                        study_uid=study, series_uid=uid(f"cnt/se{s}"), sop_uid=uid(f"cnt/{s}/{i}")
                    )
                )
            )
    with archive.db.read() as conn:
        row = conn.execute(select(studies.c.num_series, studies.c.num_instances)).one()
    assert tuple(row) == (2, 6)


def test_concurrent_ingest_of_the_same_instance_stores_it_once(archive: Archive) -> None:
    data = _one("race")
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: archive.ingestor.ingest(BytesIO(data)), range(6)))
    assert sorted(r.outcome for r in results).count(Outcome.STORED) == 1
    assert _count(archive, objects) == 1
    assert len(list(archive.store.list())) == 1


def test_an_instance_indexed_by_another_writer_meanwhile_is_decided_again(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The duplicate check finds nothing, then the instance's row is refused as the
    # index is written (another writer won): the ingest rolls back, deletes the object
    # it wrote and decides again against the row that won.
    data = _one("lost")
    first = archive.ingestor.ingest(BytesIO(data))
    real = Ingestor._existing
    calls: list[str] = []

    def blind_once(self: Ingestor, sop_uid: str) -> Any:
        calls.append(sop_uid)
        return None if len(calls) == 1 else real(self, sop_uid)

    monkeypatch.setattr(Ingestor, "_existing", blind_once)
    again = archive.ingestor.ingest(BytesIO(data))
    assert len(calls) == 2
    assert again.outcome is Outcome.DUPLICATE
    assert again.sha256 == first.sha256
    assert _count(archive, objects) == 1
    assert _count(archive, instances) == 1
    assert len(list(archive.store.list())) == 1
    with archive.db.read() as conn:
        counts = conn.execute(select(studies.c.num_instances)).scalar_one()
        stored = conn.execute(
            select(func.count()).select_from(events).where(events.c.kind == "instance.stored")
        ).scalar_one()
    assert counts == 1
    assert stored == 1


def test_header_json_has_bulk_data_uri_and_attributes(archive: Archive) -> None:
    archive.ingestor.ingest(BytesIO(_one("json")))
    with archive.db.read() as conn:
        header = conn.execute(select(instances.c.header)).scalar_one()
    assert header["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert header["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    assert header["7FE00010"]["BulkDataURI"].startswith("studies/")


def test_implicit_vr_and_nested_sequences(archive: Archive) -> None:
    ds = dataset(study_uid=uid("imp/st"), series_uid=uid("imp/se"), sop_uid=uid("imp/i"))
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.ReferencedImageSequence = [item]
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    result = archive.ingestor.ingest(BytesIO(to_bytes(ds)))
    assert result.outcome is Outcome.STORED
    with archive.db.read() as conn:
        header = conn.execute(select(instances.c.header)).scalar_one()
    assert header["00081140"]["Value"][0]["00081155"]["Value"] == ["1.2.3.4"]


def test_the_most_recent_study_brings_the_patients_current_demographics(archive: Archive) -> None:
    def study(name: str, date: str, patient_name: str, sex: str | None = "F") -> None:
        ds = dataset(study_uid=uid(f"demo/{name}"), series_uid=uid(f"demo/{name}/s"),
                     sop_uid=uid(f"demo/{name}/1"), patient_id="PAT-DEMO",
                     patient_name=patient_name, study_date=date, size=8)  # fmt: skip
        if sex is None:
            del ds.PatientSex
        archive.ingestor.ingest(BytesIO(to_bytes(ds)))

    def current() -> tuple[str, str | None]:
        with archive.db.read() as conn:
            row = conn.execute(
                select(patients.c.patient_name, patients.c.sex).where(
                    patients.c.patient_id == "PAT-DEMO"
                )
            ).one()
        return row.patient_name, row.sex

    study("first", "20240115", "Doe^Jane")
    assert current() == ("Doe^Jane", "F")
    study("married", "20240601", "Smith^Jane", sex=None)  # a missing value changes nothing
    assert current() == ("Smith^Jane", "F")
    study("late-prior", "20230301", "Doe^Jane")  # an older study arriving late: no change
    assert current() == ("Smith^Jane", "F")
    with archive.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(patients)).scalar_one() == 1


def test_many_instances_arriving_together_are_all_indexed(archive: Archive) -> None:
    # Eight writers at once share index transactions (Database.group_write): new
    # studies, series already known and new ones, all counted right.
    files = [
        instance_bytes(
            study_uid=uid(f"crowd/st{n % 3}"),
            series_uid=uid(f"crowd/se{n % 6}"),
            sop_uid=uid(f"crowd/i{n}"),
        )
        for n in range(96)
    ]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda data: archive.ingestor.ingest(BytesIO(data)), files))
    assert [r.outcome for r in results] == [Outcome.STORED] * 96
    assert _count(archive, instances) == _count(archive, objects) == 96
    with archive.db.read() as conn:
        counts = conn.execute(
            select(studies.c.num_series, studies.c.num_instances).order_by(studies.c.id)
        ).all()
        stored_events = conn.execute(
            select(func.count()).select_from(events).where(events.c.kind == "instance.stored")
        ).scalar_one()
    assert sorted(tuple(c) for c in counts) == [(2, 32)] * 3
    assert stored_events == 96


def test_instances_ingested_together_each_get_their_own_outcome(archive: Archive) -> None:
    # One batch (Ingestor.ingest_many): new instances of two series, a file cut short,
    # one already stored, a repeat of one of the batch's own (the same bytes, then
    # other bytes under the same UID), and one naming another study for a series the
    # batch creates. Each gets what `ingest` alone would give; nothing of the refused.
    study = uid("together/st")

    def one(n: str, series: str, *, study_uid: str = study, **kwargs: Any) -> bytes:
        return instance_bytes(
            study_uid=study_uid, series_uid=uid(f"together/{series}"), sop_uid=uid(n), **kwargs
        )

    first, second = one("tg/1", "se1"), one("tg/2", "se2")
    stored = one("tg/0", "se1")
    archive.ingestor.ingest(BytesIO(stored))
    files = [
        first,
        second,
        first[: len(first) // 2],
        stored,
        first,
        one("tg/2", "se2", patient_name="OTHER^NAME"),
        one("tg/3", "se1", study_uid=uid("together/elsewhere")),
    ]
    results = archive.ingestor.ingest_many([BytesIO(f) for f in files])
    kinds = [r.outcome if not isinstance(r, Exception) else type(r).__name__ for r in results]
    assert kinds == [
        Outcome.STORED,
        Outcome.STORED,
        "InvalidInstance",
        Outcome.DUPLICATE,
        Outcome.DUPLICATE,
        "DuplicateConflict",
        "StudyMismatch",
    ]
    assert _count(archive, instances) == _count(archive, objects) == 3
    assert len(list(archive.store.list())) == 3
    with archive.db.read() as conn:
        counts = conn.execute(select(studies.c.num_series, studies.c.num_instances)).one()
        sops = conn.execute(select(events.c.sop_uid).order_by(events.c.seq)).scalars().all()
    assert tuple(counts) == (2, 3)
    assert sops == [uid("tg/0"), uid("tg/1"), uid("tg/2")]


def test_a_batch_over_one_transaction_is_ingested_in_several(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "BATCH", 4)
    files = [
        instance_bytes(
            study_uid=uid(f"many/st{n % 2}"),
            series_uid=uid(f"many/se{n % 2}"),
            sop_uid=uid(f"many/i{n}"),
        )
        for n in range(10)
    ]
    results = archive.ingestor.ingest_many([BytesIO(f) for f in files])
    assert [r.outcome for r in results if not isinstance(r, Exception)] == [Outcome.STORED] * 10
    with archive.db.read() as conn:
        counts = conn.execute(
            select(studies.c.num_series, studies.c.num_instances).order_by(studies.c.id)
        ).all()
    assert [tuple(c) for c in counts] == [(1, 5), (1, 5)]


def test_a_batch_whose_index_cannot_be_written_keeps_no_object(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("the index is unwritable")

    monkeypatch.setattr(Ingestor, "_after", broken)
    files = [_one(f"unwritten/{n}") for n in range(3)]
    results = archive.ingestor.ingest_many([BytesIO(f) for f in files])
    assert all(isinstance(r, RuntimeError) for r in results)
    assert _count(archive, instances) == _count(archive, objects) == 0
    assert list(archive.store.list()) == []
