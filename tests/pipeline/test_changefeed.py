"""The change feed: gap-free, ordered, resumable across restarts and under concurrent writers;
`dicomvault changes` and `dicomvault export-metadata` as real commands."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from dicomvault.archive import Archive
from dicomvault.changes import read_changes
from dicomvault.config import Settings
from dicomvault.synthetic import dataset, instance_bytes, to_bytes, uid
from tests.support.cli import command_env, dicomvault
from tests.support.live import running_server


def _store(archive: Archive, name: str, n: int) -> str:
    sop = uid(f"{name}/{n}")
    archive.ingestor.ingest(
        io.BytesIO(
            instance_bytes(
                study_uid=uid(f"{name}/st"),
                series_uid=uid(f"{name}/se"),
                sop_uid=sop,
                size=8,
                instance_number=n + 1,
            )
        )
    )
    return sop


def _feed(server: str, offset: int, limit: int = 100) -> dict[str, object]:
    response = httpx.get(
        f"{server}/changefeed", params={"offset": offset, "limit": limit}, timeout=30
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _seqs(page: dict[str, object]) -> list[int]:
    return [int(c["seq"]) for c in page["changes"]]  # type: ignore[attr-defined,index]


def test_the_feed_is_gap_free_and_resumable_across_restarts(settings: Settings) -> None:
    archive = Archive.open(settings)
    sops = [_store(archive, "feed", n) for n in range(3)]
    with running_server(archive) as server:
        first = _feed(server, 0, 2)
        assert _seqs(first) == [1, 2]
        assert first["next_offset"] == 2
        assert first["last_seq"] == 3
        second = _feed(server, 2)
        assert _seqs(second) == [3]
        assert [c["sop_uid"] for c in second["changes"]] == [sops[2]]  # type: ignore[attr-defined]
        assert _feed(server, 3)["changes"] == []
    archive.close()

    restarted = Archive.open(settings)  # a new process would see the same
    try:
        sops += [_store(restarted, "feed", n) for n in range(3, 5)]
        with running_server(restarted) as server:
            resumed = _feed(server, 3)
            assert _seqs(resumed) == [4, 5]
            everything = _feed(server, 0)
            assert _seqs(everything) == [1, 2, 3, 4, 5]
            stored = [c["sop_uid"] for c in everything["changes"]]  # type: ignore[attr-defined]
            assert stored == sops
            assert {c["kind"] for c in everything["changes"]} == {"instance.stored"}  # type: ignore[attr-defined]
            for bad in ({"offset": -1}, {"limit": 0}, {"limit": 10_001}):
                response = httpx.get(f"{server}/changefeed", params=bad, timeout=30)
                assert response.status_code == 400, (bad, response.text)
    finally:
        restarted.close()


def test_a_follower_misses_nothing_while_writers_commit_concurrently(
    archive: Archive,
) -> None:
    """Four writers commit at once; a follower polling by offset sees every change, each
    exactly once, numbered 1..N with no gap (on PostgreSQL, an autoincrement would not)."""
    writers, each = 4, 8
    total = writers * each
    seen: list[dict[str, object]] = []
    done = threading.Event()

    def follow() -> None:
        offset = 0
        deadline = time.monotonic() + 120
        while len(seen) < total and time.monotonic() < deadline:
            page = read_changes(archive.db, offset, 3)
            seen.extend(page.changes)
            offset = page.next_offset
        done.set()

    def write(w: int) -> None:
        for n in range(each):
            _store(archive, f"w{w}", n)

    follower = threading.Thread(target=follow)
    follower.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    follower.join(150)
    assert done.is_set()
    assert [int(c["seq"]) for c in seen] == list(range(1, total + 1))  # type: ignore[call-overload]
    assert len({c["sop_uid"] for c in seen}) == total


def test_changes_command_prints_and_resumes(archive: Archive, settings: Settings) -> None:
    for n in range(3):
        _store(archive, "cli", n)
    env = command_env(settings)
    listed = dicomvault("changes", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [c["seq"] for c in lines] == [1, 2, 3]
    resumed = dicomvault("changes", "--offset", "1", "--limit", "1", env=env)
    assert [json.loads(line)["seq"] for line in resumed.stdout.splitlines()] == [2]


def test_changes_follow_prints_new_changes_as_they_come(
    archive: Archive, settings: Settings
) -> None:
    exe = shutil.which("dicomvault")
    assert exe
    follower = subprocess.Popen(
        [exe, "changes", "--follow", "--interval", "0.1", "--limit", "2"],
        env=command_env(settings),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        _store(archive, "follow", 0)
        _store(archive, "follow", 1)
        out, _ = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 2]


def test_export_metadata_to_parquet_and_ndjson(
    archive: Archive, settings: Settings, tmp_path: Path
) -> None:
    ds = dataset(study_uid=uid("x/st"), series_uid=uid("x/se"), sop_uid=uid("x/i"), size=8)
    block = ds.private_block(0x0009, "DVTEST", create=True)
    block.add_new(0x01, "LO", "secret-42")
    archive.ingestor.ingest(io.BytesIO(to_bytes(ds)))
    _store(archive, "y", 0)
    env = command_env(settings)

    parquet = tmp_path / "meta.parquet"
    made = dicomvault("export-metadata", str(parquet), env=env)
    assert made.returncode == 0, made.stderr
    assert "exported 2 instances" in made.stdout
    table = pq.read_table(parquet).to_pylist()
    by_sop = {row["SOPInstanceUID"]: row for row in table}
    assert by_sop[uid("x/i")]["00091001"] == "secret-42"
    assert by_sop[uid("y/0")]["00091001"] is None
    assert by_sop[uid("x/i")]["00180050"] == "5"  # SliceThickness
    assert by_sop[uid("x/i")]["00080008"] == "ORIGINAL\\PRIMARY\\AXIAL"
    assert by_sop[uid("x/i")]["00100010"] == "Doe^Jane"
    assert "7FE00010" not in by_sop[uid("x/i")] or by_sop[uid("x/i")]["7FE00010"] is None

    ndjson = tmp_path / "meta.ndjson"
    made = dicomvault("export-metadata", str(ndjson), "--study", uid("x/st"), env=env)
    assert made.returncode == 0, made.stderr
    rows = [json.loads(line) for line in ndjson.read_text().splitlines()]
    assert [r["SOPInstanceUID"] for r in rows] == [uid("x/i")]
    assert rows[0]["00091001"] == "secret-42"

    bad = dicomvault("export-metadata", str(tmp_path / "x.csv"), "--format", "csv", env=env)
    assert bad.returncode == 2
    assert not (tmp_path / "x.csv").exists()
