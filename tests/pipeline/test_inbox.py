"""The bucket inbox: files written into the object store by other tools, not through the
archive (boto3 straight to the S3 endpoint, or plain file writes into the local store),
are ingested and removed; invalid ones go to quarantine with their reason."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx
import pytest
from sqlalchemy import select

from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.index.schema import instances
from dicomvault.jobs import queue
from dicomvault.jobs.worker import Worker
from dicomvault.pipeline.inbox_sqs import keys_in
from dicomvault.storage import MemoryStore
from dicomvault.synthetic import instance_bytes, uid
from tests.support.jobs import work_until
from tests.support.live import running_server
from tests.support.s3 import S3_KEY, S3_SECRET

INBOX = {
    "inbox_prefix": "inbox/",
    "inbox_scan_seconds": 0.2,
    "inbox_settle_seconds": 0.2,
    "job_poll_seconds": 0.02,
    "job_backoff_seconds": 0.05,
}


def _s3(settings: Settings, service: str = "s3") -> Any:
    return boto3.client(
        service,
        endpoint_url=settings.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
    )


def _bucket_and_prefix(settings: Settings) -> tuple[str, str]:
    parts = urlsplit(settings.effective_storage_url)
    return parts.netloc, parts.path.strip("/")


class Outside:
    """Writes and lists the store the way a foreign tool would: not through the archive."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.s3 = settings.effective_storage_url.startswith("s3://")

    def write(self, key: str, data: bytes) -> None:
        if self.s3:
            bucket, prefix = _bucket_and_prefix(self.settings)
            _s3(self.settings).put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)
        else:
            path = Path(urlsplit(self.settings.effective_storage_url).path) / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def keys(self, under: str) -> dict[str, bytes]:
        if self.s3:
            bucket, prefix = _bucket_and_prefix(self.settings)
            client = _s3(self.settings)
            listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{under}")
            return {
                o["Key"][len(prefix) + 1 :]: client.get_object(Bucket=bucket, Key=o["Key"])[
                    "Body"
                ].read()
                for o in listed.get("Contents", [])
            }
        root = Path(urlsplit(self.settings.effective_storage_url).path)
        return {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in (root / under).rglob("*")
            if p.is_file()
        }


@pytest.fixture
def inbox_settings(settings: Settings) -> Settings:
    return settings.model_copy(update=INBOX)


@pytest.fixture
def inbox_archive(inbox_settings: Settings) -> Iterator[Archive]:
    opened = Archive.open(inbox_settings)
    try:
        yield opened
    finally:
        opened.close()


def _instance(name: str) -> tuple[str, bytes]:
    sop = uid(f"inbox/{name}/i")
    return sop, instance_bytes(
        study_uid=uid(f"inbox/{name}/st"), series_uid=uid(f"inbox/{name}/se"), sop_uid=sop, size=8
    )


def _qido(server: str, sop: str) -> list[Any]:
    response = httpx.get(
        f"{server}/dicom-web/instances", params={"SOPInstanceUID": sop}, timeout=30
    )
    assert response.status_code in (200, 204)
    return response.json() if response.content else []


def test_a_file_dropped_into_the_inbox_appears_in_qido_rs(
    inbox_archive: Archive, inbox_settings: Settings
) -> None:
    outside = Outside(inbox_settings)
    sop, data = _instance("a")
    with running_server(inbox_archive) as server:
        assert _qido(server, sop) == []
        outside.write("inbox/scanner 1/a.dcm", data)
        work_until(Worker(inbox_archive), lambda: bool(_qido(server, sop)))
        (match,) = _qido(server, sop)
    assert match["00080018"]["Value"] == [sop]
    # Taken off the inbox once stored; recorded as having come through it.
    work_until(Worker(inbox_archive), lambda: outside.keys("inbox/") == {})
    with inbox_archive.db.read() as conn:
        door = conn.execute(select(instances.c.origin_door).where(instances.c.sop_uid == sop))
        assert door.scalar_one() == "inbox"
    # The same file again (say, a retried upload): a duplicate, removed, nothing new.
    outside.write("inbox/again.dcm", data)
    work_until(Worker(inbox_archive), lambda: outside.keys("inbox/") == {})
    assert outside.keys("quarantine/") == {}


def test_invalid_files_go_to_quarantine_with_their_reason(
    inbox_archive: Archive, inbox_settings: Settings
) -> None:
    outside = Outside(inbox_settings)
    _, good = _instance("b")
    outside.write("inbox/notes.txt", b"this is not DICOM at all")
    outside.write("inbox/cut.dcm", good[: len(good) - 40])  # truncated in its pixel data
    work_until(Worker(inbox_archive), lambda: outside.keys("inbox/") == {})

    quarantined = outside.keys("quarantine/")
    files = {Path(k).name: v for k, v in quarantined.items() if not k.endswith(".reason.txt")}
    reasons = {
        Path(k).name: v.decode() for k, v in quarantined.items() if k.endswith(".reason.txt")
    }
    assert files == {"notes.txt": b"this is not DICOM at all", "cut.dcm": good[: len(good) - 40]}
    assert set(reasons) == {"notes.txt.reason.txt", "cut.dcm.reason.txt"}
    assert "inbox key: inbox/cut.dcm" in reasons["cut.dcm.reason.txt"]
    assert "reason: " in reasons["cut.dcm.reason.txt"]
    assert "pixel" in reasons["cut.dcm.reason.txt"].lower()
    with inbox_archive.db.read() as conn:
        assert conn.execute(select(instances.c.id)).all() == []  # nothing indexed
    assert queue.list_jobs(inbox_archive.db, state="dead") == []


def test_s3_notifications_through_sqs_discover_inbox_files(
    inbox_settings: Settings, backend: str
) -> None:
    if backend != "postgres":
        pytest.skip("S3 event notifications exist on the S3 backend only")
    bucket, prefix = _bucket_and_prefix(inbox_settings)
    sqs = _s3(inbox_settings, "sqs")
    queue_url = sqs.create_queue(QueueName=f"{bucket}-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    _s3(inbox_settings).put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {
                        "Key": {"FilterRules": [{"Name": "prefix", "Value": f"{prefix}/inbox/"}]}
                    },
                }
            ]
        },
    )
    # Listing is made too slow to matter: only the notification can find the file.
    settings = inbox_settings.model_copy(
        update={"inbox_sqs_queue_url": queue_url, "inbox_scan_seconds": 3600}
    )
    archive = Archive.open(settings)
    try:
        sop, data = _instance("sqs")
        Outside(settings).write("inbox/from-sqs.dcm", data)
        with running_server(archive) as server:
            work_until(Worker(archive), lambda: bool(_qido(server, sop)))
        assert Outside(settings).keys("inbox/") == {}
    finally:
        archive.close()


def test_notification_bodies_are_read_safely() -> None:
    store = MemoryStore()
    body = json.dumps(
        {
            "Records": [
                {"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "inbox/a+b.dcm"}}},
                {"eventName": "ObjectRemoved:Delete", "s3": {"object": {"key": "inbox/c"}}},
            ]
        }
    )
    assert keys_in(body, store) == ["inbox/a b.dcm"]
    assert keys_in("not json", store) == []
    assert keys_in(json.dumps({"Event": "s3:TestEvent"}), store) == []


def test_file_system_events_discover_files_in_a_local_inbox(
    inbox_settings: Settings, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("file-system events exist for the local directory store only")
    settings = inbox_settings.model_copy(update={"inbox_scan_seconds": 3600})
    archive = Archive.open(settings)
    worker = Worker(archive, concurrency=1)
    worker.start()  # the watcher thread with it
    try:
        time.sleep(0.5)  # let the watcher start
        sop, data = _instance("watched")
        Outside(settings).write("inbox/watched.dcm", data)
        with running_server(archive) as server:
            deadline = time.monotonic() + 30
            while not _qido(server, sop):
                assert time.monotonic() < deadline, "the watcher did not queue the file"
                time.sleep(0.1)
    finally:
        worker.stop(timeout=10)
        archive.close()
