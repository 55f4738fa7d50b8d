"""`dicomvault aets`, `routes` and `send` as real commands; sending and auto-routing as
durable jobs run by a worker, into a dcmtk storescp; a destination that is down is
retried, not forgotten."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import update

from dicomvault import jobs
from dicomvault.archive import Archive
from dicomvault.dimse import DimseServer, registry
from dicomvault.dimse.routing import SEND_JOB, autoroute, autoroute_many
from dicomvault.index.db import Database
from dicomvault.index.schema import jobs as job_rows
from dicomvault.jobs.queue import list_jobs, now
from dicomvault.jobs.worker import Worker
from dicomvault.synthetic import instance_bytes, uid
from tests.support.cli import command_env, dicomvault
from tests.support.dcmtk import dcmtk, storescp
from tests.support.jobs import work_until
from tests.support.live import free_port


def _store(archive: Archive, name: str, count: int) -> set[str]:
    sops = set()
    for number in range(1, count + 1):
        sop = uid(f"{name}/{number}")
        archive.ingestor.ingest(BytesIO(instance_bytes(
            study_uid=uid(f"{name}/st"), series_uid=uid(f"{name}/se"), sop_uid=sop,
            instance_number=number, size=8)))  # fmt: skip
        sops.add(sop)
    return sops


def _received(out: Path) -> set[str]:
    return {str(dcmread(p).SOPInstanceUID) for p in out.iterdir() if p.is_file()}


def test_aets_and_routes_commands(archive: Archive) -> None:
    env = command_env(archive.settings)
    added = dicomvault("aets", "add", "HSR_PACS", "--host", "127.0.0.1", "--port", "104",
                       "--no-retrieve", env=env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = dicomvault("aets", "list", env=env)
    assert "HSR_PACS" in listed.stdout
    assert registry.find(archive.db, "HSR_PACS") == registry.KnownAE(
        "HSR_PACS", "127.0.0.1", 104, may_retrieve=False
    )
    route = dicomvault("routes", "add", "RAJ_MR1", "HSR_PACS", env=env)
    assert route.returncode == 0, route.stderr
    assert [(r.from_aet, r.to_aet) for r in registry.all_routes(archive.db)] == [
        ("RAJ_MR1", "HSR_PACS")
    ]
    # Bad input: a clear error and nothing changed.
    for args, message in [
        (("aets", "add", "WAY_TOO_LONG_AE_TITLE"), "invalid AE title"),
        (("aets", "add", "X", "--site", "NOWHERE"), "no site 'NOWHERE'"),
        (("routes", "add", "RAJ_MR1", "UNKNOWN"), "not a known AE"),
        (("aets", "remove", "UNKNOWN"), "not a known AE"),
        (("send", uid("nothing"), "--to", "HSR_PACS", "--no-wait"), "no such study"),
    ]:
        result = dicomvault(*args, env=env)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
    assert [a.ae_title for a in registry.all_known(archive.db)] == ["HSR_PACS"]
    assert len(registry.all_routes(archive.db)) == 1
    assert list_jobs(archive.db, kind=SEND_JOB) == []
    removed = dicomvault("aets", "remove", "HSR_PACS", env=env)
    assert removed.returncode == 0
    assert registry.all_routes(archive.db) == []


def test_send_a_study_as_a_job(archive: Archive, tmp_path: Path) -> None:
    sops = _store(archive, "send", 3)
    env = command_env(archive.settings)
    with storescp(tmp_path / "dest") as port:
        registry.add(archive.db, registry.KnownAE("DEST", "127.0.0.1", port))
        queued = dicomvault("send", uid("send/st"), "--to", "DEST", "--no-wait", env=env)
        assert queued.returncode == 0, queued.stderr
        assert "send 3 instances to DEST" in queued.stdout
        work_until(Worker(archive), lambda: _received(tmp_path / "dest") == sops)
    [job] = list_jobs(archive.db, kind=SEND_JOB)
    assert job.state == "done"


def test_a_destination_that_is_down_is_retried(archive: Archive, tmp_path: Path) -> None:
    sops = _store(archive, "retry", 2)
    port = free_port()
    registry.add(archive.db, registry.KnownAE("LATER", "127.0.0.1", port))
    with archive.db.write() as conn:
        jobs.enqueue(conn, SEND_JOB, {"to": "LATER", "study_uid": uid("retry/st")})
    worker = Worker(archive)
    worker.run_once()
    [job] = list_jobs(archive.db, kind=SEND_JOB)
    assert (job.state, job.attempts) == ("pending", 1)
    assert "cannot associate with LATER" in (job.last_error or "")
    # The destination comes back; the retry (due now instead of after its backoff) delivers.
    with archive.db.write() as conn:
        conn.execute(update(job_rows).values(run_after=now()))
    with storescp(tmp_path / "later", "LATER", port=port):
        work_until(worker, lambda: _received(tmp_path / "later") == sops)
    [job] = list_jobs(archive.db, kind=SEND_JOB)
    assert job.state == "done"


def test_every_instance_from_a_routed_ae_is_forwarded(
    archive: Archive, dimse: DimseServer, tmp_path: Path
) -> None:
    folder = tmp_path / "from-modality"
    folder.mkdir()
    sops = set()
    for number in range(1, 4):
        sop = uid(f"route/{number}")
        (folder / f"{number}.dcm").write_bytes(instance_bytes(
            study_uid=uid("route/st"), series_uid=uid("route/se"), sop_uid=sop,
            instance_number=number, size=8))  # fmt: skip
        sops.add(sop)
    with storescp(tmp_path / "pacs", "HSR_PACS") as port:
        registry.add(archive.db, registry.KnownAE("HSR_PACS", "127.0.0.1", port))
        registry.add_route(archive.db, "RAJ_MR1", "HSR_PACS")
        # From the routed AE: forwarded; from another: kept only.
        done = dcmtk("storescu", "-aet", "RAJ_MR1", "-aec", "DICOMVAULT", "+sd", "127.0.0.1",
                     dimse.port, folder)  # fmt: skip
        assert done.returncode == 0, done.stderr
        other = tmp_path / "other.dcm"
        other.write_bytes(instance_bytes(study_uid=uid("route/other"), series_uid=uid("route/o"),
                                         sop_uid=uid("route/o/1"), size=8))  # fmt: skip
        done = dcmtk("storescu", "-aet", "CT_2", "-aec", "DICOMVAULT", "127.0.0.1", dimse.port,
                     other)  # fmt: skip
        assert done.returncode == 0, done.stderr
        work_until(Worker(archive), lambda: _received(tmp_path / "pacs") == sops)
        worker = Worker(archive)
        while worker.run_once():
            pass
    assert _received(tmp_path / "pacs") == sops
    assert {j.state for j in list_jobs(archive.db, kind=SEND_JOB)} == {"done"}


def test_a_batch_of_events_is_routed_with_one_read_of_each_aes_routes(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HSR_PACS", "BACKUP"):
        registry.add(archive.db, registry.KnownAE(name, "127.0.0.1", 104))
    registry.add_route(archive.db, "RAJ_MR1", "HSR_PACS")
    registry.add_route(archive.db, "RAJ_MR1", "BACKUP")
    reads: list[str] = []
    routes_from = registry.routes_from

    def counted(db: Database, from_aet: str) -> list[registry.Route]:
        reads.append(from_aet)
        return routes_from(db, from_aet)

    monkeypatch.setattr(registry, "routes_from", counted)

    def event(sop: str, calling: str | None) -> dict[str, Any]:
        return {"kind": "instance.stored", "sop_uid": sop, "payload": {"calling_aet": calling}}

    batch = [
        event("1.1", "RAJ_MR1"),
        event("1.2", "CT_2"),  # an AE without routes
        event("1.3", None),  # over DICOMweb: no calling AE
        event("1.4", "RAJ_MR1"),
        event("1.1", "RAJ_MR1"),  # an event seen twice queues nothing twice
    ]
    autoroute_many(archive, batch)
    assert sorted(reads) == ["CT_2", "RAJ_MR1"]
    queued = list_jobs(archive.db, kind=SEND_JOB)
    assert sorted((j.payload["to"], j.payload["sop_uids"][0]) for j in queued) == [
        ("BACKUP", "1.1"), ("BACKUP", "1.4"), ("HSR_PACS", "1.1"), ("HSR_PACS", "1.4"),
    ]  # fmt: skip
    # One event alone (the worker's fallback when a batch fails) does the same.
    autoroute(archive, event("1.5", "RAJ_MR1"))
    assert len(list_jobs(archive.db, kind=SEND_JOB)) == 6
