"""Inbox discovery from S3 event notifications: the bucket sends ObjectCreated events to an
SQS queue (`inbox_sqs_queue_url`), and a periodic job turns them into inbox ingest jobs.

A message is deleted from the queue only after its jobs are committed, so a crash
in between redelivers it (the jobs are keyed by object key: queued once). Events
for keys outside the store's prefix or the inbox, and S3's test event, are
dropped. Listing (`inbox.scan`) stays on as the safety net for lost messages.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from dicomvault import jobs
from dicomvault.pipeline.inbox import enqueue_keys
from dicomvault.storage import ObjectStore, durable
from dicomvault.storage.aws import client_from_settings

if TYPE_CHECKING:
    from dicomvault.archive import Archive
    from dicomvault.config import Settings

__all__ = ["POLL", "keys_in", "poll_queue"]

log = logging.getLogger(__name__)

POLL = "inbox.sqs"
_ROUNDS = 20  # at most this many receives of 10 per run: the job stays short


def _every(settings: Settings) -> float | None:
    return 1.0 if settings.inbox_prefix and settings.inbox_sqs_queue_url else None


def keys_in(body: str, store: ObjectStore) -> list[str]:
    """Store keys of the objects an S3 event notification says were created."""
    try:
        message = json.loads(body)
    except ValueError:
        return []
    if "Message" in message and isinstance(message["Message"], str):  # delivered via SNS
        return keys_in(message["Message"], store)
    remote = durable(store)  # not an encrypting or caching layer: they name no bucket
    bucket = getattr(remote, "bucket", None)
    prefix = str(getattr(remote, "prefix", "") or "")
    keys = []
    for record in message.get("Records", []):
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3 = record.get("s3", {})
        if bucket is not None and s3.get("bucket", {}).get("name") != bucket:
            continue
        key = unquote_plus(str(s3.get("object", {}).get("key", "")))
        if prefix:
            if not key.startswith(prefix + "/"):
                continue
            key = key[len(prefix) + 1 :]
        keys.append(key)
    return keys


def _client(settings: Settings) -> Any:
    return client_from_settings("sqs", settings, endpoint_url=settings.s3_endpoint_url)


@jobs.periodic(POLL, every=_every)
def poll_queue(archive: Archive, _payload: dict[str, Any]) -> None:
    settings = archive.settings
    url = settings.inbox_sqs_queue_url
    if not url or not settings.inbox_prefix:
        return
    sqs = _client(settings)
    for _ in range(_ROUNDS):
        answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = answer.get("Messages", [])
        if not messages:
            return
        keys = [key for m in messages for key in keys_in(m.get("Body", ""), archive.store)]
        queued = enqueue_keys(archive, keys)
        log.info("inbox: %d notifications, %d files queued", len(messages), queued)
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
