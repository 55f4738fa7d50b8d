"""The bucket inbox: files other tools write into the object store under `inbox_prefix`
(a mounted drive, rclone, `aws s3 cp`, a storage gateway) are ingested like any upload.

Discovery enqueues one `inbox.ingest` job per file (keyed by its object key, so a
file found twice is queued once): by listing the prefix every
`inbox_scan_seconds`, and, when `inbox_sqs_queue_url` is set, from the bucket's
ObjectCreated notifications (see `inbox_sqs`); on a local directory store a
file-system watcher (see `inbox_watch`) reacts at once.

The job reads the file, hands it to the one ingest function with
`Origin(Door.INBOX)`, and deletes it from the inbox only after the ingest has
committed. A file that is not an acceptable instance is moved to
`quarantine_prefix` beside a `.reason.txt` that says why. Running the job twice
is harmless: the second ingest of the same bytes is a duplicate that writes
nothing, and a file already gone is done.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dicomvault import jobs
from dicomvault.errors import DuplicateConflict, InvalidInstance, ObjectNotFound, StudyMismatch
from dicomvault.model.origin import Door, Origin
from dicomvault.storage import LocalStore, ObjectStore
from dicomvault.storage.base import CHUNK_SIZE

if TYPE_CHECKING:
    from dicomvault.archive import Archive
    from dicomvault.config import Settings

__all__ = [
    "INGEST",
    "SCAN",
    "enqueue_keys",
    "ingest_file",
    "open_inbox_object",
    "scan",
    "spooled",
]

log = logging.getLogger(__name__)

INGEST = "inbox.ingest"
SCAN = "inbox.scan"
_SPOOL = 8 * 1024 * 1024
_REFUSED = (InvalidInstance, StudyMismatch, DuplicateConflict)


def spooled(chunks: Iterable[bytes]) -> IO[bytes]:
    """`chunks` as a seekable file (what ingest reads); large ones spool to a temporary file."""
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL)  # noqa: SIM115 (returned open)
    try:
        for chunk in chunks:
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def open_inbox_object(store: ObjectStore, key: str) -> IO[bytes]:
    """The inbox file's bytes as a seekable file, read as written (plain, not decrypted).

    Foreign tools write the inbox in plaintext, so this is the one place that reads
    it, through the store's plain path.
    """
    return spooled(store.iter_bytes(key))


def _settled(store: ObjectStore, key: str, settle: float) -> bool:
    """False while a local file may still be being written (changed in the last `settle` s)."""
    if not isinstance(store, LocalStore) or settle <= 0:
        return True  # an S3 object appears whole, when its upload completes
    try:
        modified = (store.root / key).stat().st_mtime
    except FileNotFoundError:
        return False
    return time.time() - modified >= settle


def enqueue_keys(archive: Archive, keys: list[str]) -> int:
    """Queue an ingest job for each inbox key (once while queued); returns how many keys."""
    prefix = archive.settings.inbox_prefix
    wanted = [k for k in keys if prefix and k.startswith(prefix) and not k.endswith("/")]
    if wanted:
        with archive.db.write() as conn:
            for key in wanted:
                jobs.enqueue(conn, INGEST, {"key": key}, key=f"inbox:{key}")
    return len(wanted)


def _every(settings: Settings) -> float | None:
    return settings.inbox_scan_seconds if settings.inbox_prefix else None


@jobs.periodic(SCAN, every=_every)
def scan(archive: Archive, _payload: dict[str, Any]) -> None:
    """List the inbox and queue every settled file."""
    settings = archive.settings
    if not settings.inbox_prefix:
        return
    store = archive.store
    keys = [
        info.key
        for info in store.list(settings.inbox_prefix)
        if _settled(store, info.key, settings.inbox_settle_seconds)
    ]
    enqueue_keys(archive, keys)


@jobs.handler(INGEST)
def ingest_file(archive: Archive, payload: dict[str, Any]) -> None:
    key = str(payload["key"])
    settings = archive.settings
    if not settings.inbox_prefix or not key.startswith(settings.inbox_prefix):
        raise jobs.PermanentFailure(f"{key} is not under the inbox prefix")
    store = archive.store
    if not _settled(store, key, settings.inbox_settle_seconds):
        wait = timedelta(seconds=max(1.0, settings.inbox_settle_seconds))
        raise jobs.RunLater(datetime.now(UTC) + wait)
    try:
        fp = open_inbox_object(store, key)
    except ObjectNotFound:
        return  # handled already (this job ran before), or taken away by its writer
    with fp:
        try:
            result = archive.ingestor.ingest(fp, origin=Origin(door=Door.INBOX))
        except _REFUSED as exc:
            fp.seek(0)
            _quarantine(store, settings.quarantine_prefix or "quarantine/", key, fp, str(exc))
            log.warning("inbox: %s quarantined: %s", key, exc)
            return
    store.delete(key)  # only now: the instance is stored and indexed
    log.info("inbox: %s stored as %s (%s)", key, result.sop_uid, result.outcome.value)


def _quarantine(store: ObjectStore, prefix: str, key: str, fp: IO[bytes], reason: str) -> None:
    """Copy the file under the quarantine prefix with its reason, then take it off the inbox."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = Path(key).name or "file"
    target = f"{prefix}{stamp}-{secrets.token_hex(4)}/{name}"
    store.put(target, iter(lambda: fp.read(CHUNK_SIZE), b""))
    text = f"inbox key: {key}\nquarantined: {stamp}\nreason: {reason}\n"
    store.put(f"{target}.reason.txt", [text.encode()])
    store.delete(key)
