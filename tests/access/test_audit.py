"""The audit trail: one record per event of a scripted session, tampering detected,
records streamed to a file and to syslog (RFC 5424), and the `audit` commands."""

from __future__ import annotations

import json
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, select, update

from dicomvault.access.audit import AuditAction, AuditEvent, append, search, verify
from dicomvault.access.audit import Outcome as AuditOutcome
from dicomvault.access.tables import audit
from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.synthetic import study_instances, uid
from tests.access.conftest import PASSWORD, World, basic, served_world, study_uid
from tests.support.cli import command_env, dicomvault
from tests.support.dicom_files import STOW_TYPE, multipart

JSON = {"Accept": "application/dicom+json"}
DICOM = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def _session(world: World, user: str = "admin") -> str:
    """login, search, retrieve, store, delete, failed login; returns the session token."""
    login = httpx.post(f"{world.url}/auth/login", headers=basic(user), timeout=30)
    assert login.status_code == 200, login.text
    token = {"Authorization": f"Bearer {login.json()['token']}"}
    found = httpx.get(f"{world.url}/dicom-web/studies", headers=token | JSON, timeout=30)
    assert found.status_code == 200
    got = httpx.get(f"{world.url}/dicom-web/studies/{study_uid('A')}", headers=token | DICOM)
    assert got.status_code == 200
    [data] = list(study_instances("new-at-A", per_series=1, patient_id="PNEW"))
    stored = httpx.post(
        f"{world.url}/dicom-web/studies",
        headers=token | {"Content-Type": STOW_TYPE},
        content=multipart(("application/dicom", data)),
        timeout=30,
    )
    assert stored.status_code == 200, stored.text
    gone = httpx.delete(f"{world.url}/dicom-web/studies/{uid('new-at-A/study')}", headers=token)
    assert gone.status_code == 204, gone.text
    failed = httpx.post(f"{world.url}/auth/login", headers=basic(user, "wrong password"))
    assert failed.status_code == 401
    return str(login.json()["token"])


def test_a_session_leaves_exactly_one_record_per_event(world: World) -> None:
    _session(world)
    rows = search(world.archive.db)
    summary = [(r["action"], r["outcome"], r["patient_id"], r["study_uid"]) for r in rows]
    assert summary == [
        ("login", "success", None, None),
        ("query", "success", None, None),
        ("retrieve", "success", "PA", study_uid("A")),
        ("store", "success", "PNEW", uid("new-at-A/study")),
        ("delete", "success", "PNEW", uid("new-at-A/study")),
        ("login-failed", "failure", None, None),
    ]
    assert {r["actor"].split(" ")[0] for r in rows} == {"admin"}
    assert all(r["address"] == "127.0.0.1" for r in rows)
    assert len(search(world.archive.db, actor="admin")) == 6
    assert [r["action"] for r in search(world.archive.db, patient_id="PA")] == ["retrieve"]
    assert verify(world.archive.db) == (6, [])


def test_each_store_request_is_one_record_with_its_status(world: World) -> None:
    """One part stored, one part refused, two parts in one request: a record each."""
    headers = basic("tom") | {"Content-Type": STOW_TYPE}
    url = f"{world.url}/dicom-web/studies"
    first, second = list(study_instances("stow-audit", per_series=2, patient_id="PSTOW"))
    answers = [
        httpx.post(url, headers=headers, content=multipart(("application/dicom", first))),
        httpx.post(url, headers=headers, content=multipart(("application/dicom", b"not DICOM"))),
        httpx.post(
            url,
            headers=headers,
            content=multipart(("application/dicom", first), ("application/dicom", second)),
        ),
    ]
    assert [answer.status_code for answer in answers] == [200, 400, 200]
    rows = search(world.archive.db, actor="tom")
    assert [(r["action"], r["outcome"], r["detail"]["status"]) for r in rows] == [
        ("store", "success", 200),
        ("store", "failure", 400),
        ("store", "success", 200),
    ]
    assert rows[0]["patient_id"] == rows[2]["patient_id"] == "PSTOW"
    assert rows[0]["detail"]["studies"] == [uid("stow-audit/study")]
    assert "studies" not in rows[1]["detail"]


def test_a_refused_delete_is_one_denied_record(world: World) -> None:
    login = httpx.post(f"{world.url}/auth/login", headers=basic("ann"), timeout=30)
    token = {"Authorization": f"Bearer {login.json()['token']}"}
    refused = httpx.delete(f"{world.url}/dicom-web/studies/{study_uid('A')}", headers=token)
    assert refused.status_code == 403
    [_login, denied] = search(world.archive.db)
    assert (denied["action"], denied["outcome"], denied["study_uid"]) == (
        "permission-denied",
        "denied",
        study_uid("A"),
    )
    assert denied["detail"]["reason"] == "role radiologist may not delete"


def test_an_edited_or_deleted_record_is_detected(world: World) -> None:
    _session(world)
    db = world.archive.db
    env = command_env(world.archive.settings)
    ok = dicomvault("audit", "verify", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "intact: 6 records" in ok.stdout

    with db.write() as conn:
        conn.execute(update(audit).where(audit.c.seq == 3).values(patient_id="SOMEONE-ELSE"))
    _checked, problems = verify(db)
    assert [(p.seq, "edited" in p.reason) for p in problems] == [(3, True)]
    bad = dicomvault("audit", "verify", env=env)
    assert bad.returncode == 1
    assert "TAMPERED record 3" in bad.stdout

    with db.write() as conn:
        conn.execute(delete(audit).where(audit.c.seq == 3))
    assert {p.seq for p in verify(db)[1]} == {4}  # record 4 no longer links

    with db.write() as conn:
        conn.execute(delete(audit).where(audit.c.seq == 6))
    reasons = " ".join(p.reason for p in verify(db)[1])
    assert "deleted" in reasons  # the newest record is gone: the head says so


def test_audit_search_command_filters(world: World) -> None:
    _session(world)
    env = command_env(world.archive.settings)
    result = dicomvault("audit", "search", "--study", study_uid("A"), env=env)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["action"] for line in lines] == ["retrieve"]  # by admin, of site A's study
    assert lines[0]["event"]["code"] == "110104"
    result = dicomvault("audit", "search", "--user", "nobody", env=env)
    assert result.stdout.strip() == ""
    # Each search of the trail is recorded in it, and the chain stays whole.
    used = search(world.archive.db, action="audit-used")
    assert [u["detail"]["records"] for u in used] == [1, 0]
    assert used[0]["study_uid"] == study_uid("A")
    assert verify(world.archive.db)[1] == []


def test_records_stream_to_a_file_as_json_lines(settings: Settings, tmp_path: Path) -> None:
    sink = tmp_path / "audit.jsonl"
    with served_world(settings, audit_sink=sink.as_uri()) as world:
        _session(world)
        lines = [json.loads(line) for line in sink.read_text().splitlines()]
        hashes = [r["hash"] for r in search(world.archive.db)]
    assert [line["hash"] for line in lines] == hashes
    assert [line["event"]["code"] for line in lines] == [
        "110114",
        "110112",
        "110104",
        "110104",
        "110105",
        "110114",
    ]
    assert lines[-1]["outcome_code"] == 4


def test_records_stream_to_syslog_in_rfc5424(settings: Settings) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    port = receiver.getsockname()[1]
    try:
        with served_world(settings, audit_sink=f"syslog://127.0.0.1:{port}") as world:
            failed = httpx.post(f"{world.url}/auth/login", headers=basic("ann", "nope-nope"))
            assert failed.status_code == 401
            datagram, _ = receiver.recvfrom(65536)
    finally:
        receiver.close()
    match = re.fullmatch(
        rb"<(\d+)>1 (\S+) (\S+) dicomvault (\d+) audit - \xef\xbb\xbf(.*)", datagram, re.S
    )
    assert match, datagram
    assert int(match.group(1)) == 10 * 8 + 4  # authpriv, warning (a failure)
    record = json.loads(match.group(5))
    assert record["action"] == "login-failed"
    assert record["actor"] == "ann"
    assert record["event"]["code"] == "110114"
    assert PASSWORD not in datagram.decode()


def test_the_audit_table_is_append_only_in_code(world: World) -> None:
    """Records come back in chain order, each linking to the one before."""
    _session(world)
    with world.archive.db.read() as conn:
        rows = conn.execute(select(audit.c.prev_hash, audit.c.hash).order_by(audit.c.seq)).all()
    assert all(rows[i].prev_hash == rows[i - 1].hash for i in range(1, len(rows)))


def test_records_appended_at_once_from_many_threads_form_one_unbroken_chain(
    archive: Archive,
) -> None:
    """Each append reads the head its predecessor left, whatever the interleaving."""
    before, problems = verify(archive.db)
    assert problems == []

    def append_some(thread: int) -> list[int]:
        return [int(append(archive.db, _event(f"user-{thread}", n))["seq"]) for n in range(25)]

    with ThreadPoolExecutor(8) as pool:
        seqs = [seq for part in pool.map(append_some, range(8)) for seq in part]
    assert sorted(seqs) == list(range(before + 1, before + 201))
    checked, problems = verify(archive.db)
    assert (checked, problems) == (before + 200, [])


def test_records_with_text_that_looks_like_their_own_fields_verify(
    archive: Archive, caplog: pytest.LogCaptureFixture
) -> None:
    """The sequence number is spliced into the hashed text at the right place (on
    PostgreSQL the hash is computed by the server), whatever the detail holds."""
    append(archive.db, _event("first", 0))  # the chain's head exists: appends stand alone
    tricky = AuditEvent(
        actor="Zoë Müller ✓",
        actor_kind="user",
        door="dicomweb",
        action=AuditAction.QUERY,
        outcome=AuditOutcome.SUCCESS,
        patient_id='P"seq":0',
        study_uid="1.2.3",
        detail={"seq": 0, "query": '"seq":0,"x":1', "nested": {"seq": [1, 2]}, "n": "\n\u0000"},
    )
    rows = [append(archive.db, tricky) for _ in range(3)]
    assert [r["seq"] for r in rows] == [rows[0]["seq"], rows[0]["seq"] + 1, rows[0]["seq"] + 2]
    assert rows[1]["prev_hash"] == rows[0]["hash"]
    checked, problems = verify(archive.db)
    assert problems == []
    assert checked >= 4
    [stored] = [r for r in search(archive.db, actor="Zoë Müller ✓") if r["seq"] == rows[2]["seq"]]
    assert stored["hash"] == rows[2]["hash"]
    assert stored["detail"] == tricky.detail
    # PostgreSQL's hash was checked against Python's after each append: all matched.
    assert not [r for r in caplog.records if r.name == "dicomvault.access.audit"]


def _event(actor: str, n: int) -> AuditEvent:
    return AuditEvent(
        actor=actor,
        actor_kind="user",
        door="dicomweb",
        action=AuditAction.QUERY,
        outcome=AuditOutcome.SUCCESS,
        detail={"n": n},
    )
