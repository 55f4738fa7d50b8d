"""The local copy in front of a remote store (storage/cache.py).

The remote store here is a MemoryStore: what it holds can be changed or removed
behind the cache's back, which is how these tests tell which copy a read came from.
The cache over a real S3 endpoint passes the store conformance suite.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dicomvault.config import Settings
from dicomvault.errors import ObjectNotFound
from dicomvault.index import migrate
from dicomvault.index.db import Database
from dicomvault.index.schema import objects
from dicomvault.ingest import Ingestor
from dicomvault.integrity import verify
from dicomvault.pipeline.inbox_sqs import keys_in
from dicomvault.storage import (
    CachedStore,
    MemoryStore,
    durable,
    new_key,
    open_store,
    read_range_verified,
    uncached,
    verified,
)
from dicomvault.storage.base import BLOCK_SIZE
from dicomvault.storage.crypto import EncryptedStore
from dicomvault.storage.keys import FileMasterKey, KeyRing
from dicomvault.storage.s3 import S3Store
from tests.support.dicom_files import as_file, good


def _cache(
    tmp_path: Path, max_bytes: int = 64 * 1024 * 1024, *, on_store: bool = True
) -> tuple[CachedStore, MemoryStore]:
    remote = MemoryStore()
    return CachedStore(remote, tmp_path / "cache", max_bytes, on_store=on_store), remote


def _behind_its_back(remote: MemoryStore, key: str, data: bytes | None) -> None:
    """Change (or, with None, remove) the remote object without the cache knowing."""
    if data is None:
        remote._objects.pop(key)
    else:
        remote._objects[key] = data


def test_a_stored_object_is_read_from_the_local_copy(tmp_path: Path) -> None:
    cache, remote = _cache(tmp_path)
    data = secrets.token_bytes(2 * BLOCK_SIZE + 5)
    key = new_key()
    result = cache.put(key, [data[:1000], data[1000:]])
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert remote.read_range(key, 0, len(data)) == data  # the remote store has it too

    _behind_its_back(remote, key, None)
    assert b"".join(cache.iter_bytes(key)) == data
    assert cache.read_range(key, BLOCK_SIZE - 2, 4) == data[BLOCK_SIZE - 2 : BLOCK_SIZE + 2]
    assert cache.size(key) == len(data)


def test_by_default_a_copy_is_made_on_the_first_whole_read(tmp_path: Path) -> None:
    cache, remote = _cache(tmp_path, on_store=False)
    key = new_key()
    cache.put(key, [b"y" * 3000])
    assert not (tmp_path / "cache" / key).exists()
    assert b"".join(cache.iter_bytes(key)) == b"y" * 3000
    _behind_its_back(remote, key, None)
    assert b"".join(cache.iter_bytes(key)) == b"y" * 3000


def test_a_whole_read_keeps_a_copy_and_a_partial_one_does_not(tmp_path: Path) -> None:
    cache, remote = _cache(tmp_path)
    whole, ranged, cut_short = new_key(), new_key(), new_key()
    for key in (whole, ranged, cut_short):
        remote.put(key, [b"x" * 5000])  # not through the cache: no copy yet

    assert b"".join(cache.iter_bytes(whole, 0, BLOCK_SIZE)) == b"x" * 5000  # ends early: whole
    assert cache.read_range(ranged, 10, 100) == b"x" * 100
    assert cache.read_range(ranged, 0, 5000) == b"x" * 5000  # exactly its length: unknown
    stream = cache.iter_bytes(cut_short)
    stream.close()  # a reader that stops before the end

    for key in (whole, ranged, cut_short):
        _behind_its_back(remote, key, None)
    assert b"".join(cache.iter_bytes(whole)) == b"x" * 5000
    for key in (ranged, cut_short):
        with pytest.raises(ObjectNotFound):
            b"".join(cache.iter_bytes(key))
    assert not list((tmp_path / "cache" / ".tmp").iterdir())  # no half copy left


def test_only_keys_the_archive_generates_are_kept(tmp_path: Path) -> None:
    cache, remote = _cache(tmp_path)
    for key in ("inbox/dropped.dcm", "instances/../escape.dcm", "instances//x.dcm"):
        cache.put(key, [b"data"])
        _behind_its_back(remote, key, None)
        with pytest.raises(ObjectNotFound):
            cache.size(key)
    assert not (tmp_path / "escape.dcm").exists()


def test_a_damaged_copy_is_dropped_and_read_from_the_remote_store(tmp_path: Path) -> None:
    cache, _remote = _cache(tmp_path)
    data = secrets.token_bytes(3 * BLOCK_SIZE + 100)
    key = new_key()
    blocks = cache.put(key, [data]).blocks
    copy = tmp_path / "cache" / key
    damaged = bytearray(data)
    damaged[BLOCK_SIZE + 3] ^= 1  # as a crash could leave it: the copy is never synced
    copy.write_bytes(bytes(damaged))

    assert read_range_verified(cache, key, 0, len(data), blocks) == data
    assert not copy.exists()
    assert b"".join(verified(cache, key, hashlib.sha256(data).hexdigest(), blocks)) == data
    assert copy.read_bytes() == data  # read whole again: a sound copy

    copy.write_bytes(data[: BLOCK_SIZE + 10])  # a copy cut short
    assert (
        read_range_verified(cache, key, 2 * BLOCK_SIZE, 10, blocks) == data[2 * BLOCK_SIZE :][:10]
    )


def test_an_encrypted_archive_keeps_ciphertext_in_the_cache(tmp_path: Path) -> None:
    cache, _remote = _cache(tmp_path)
    store = EncryptedStore(cache, KeyRing(FileMasterKey(secrets.token_bytes(32))))
    data = secrets.token_bytes(200_000)
    key = new_key()
    blocks = store.put(key, [data]).blocks
    copy = tmp_path / "cache" / key
    assert data[:64] not in copy.read_bytes()

    sealed = bytearray(copy.read_bytes())
    sealed[len(sealed) // 2] ^= 1
    copy.write_bytes(bytes(sealed))
    assert read_range_verified(store, key, 0, len(data), blocks) == data  # from the remote store
    assert not copy.exists()
    assert isinstance(uncached(store), EncryptedStore)
    assert uncached(store).plain is cache.origin  # type: ignore[attr-defined]


def test_deleting_removes_the_copy(tmp_path: Path) -> None:
    cache, remote = _cache(tmp_path)
    key = new_key()
    cache.put(key, [b"data"])
    cache.delete(key)
    assert not (tmp_path / "cache" / key).exists()
    with pytest.raises(ObjectNotFound):
        remote.size(key)


def test_the_least_recently_used_copies_go_first(tmp_path: Path) -> None:
    cache, _remote = _cache(tmp_path, max_bytes=100_000)
    keys = [new_key() for _ in range(6)]
    for age, key in enumerate(keys):
        cache.put(key, [bytes(2000)])
        os.utime(tmp_path / "cache" / key, (1_000_000 + age, 1_000_000 + age))
    if cache._sweeper is not None:  # the first copy starts a count of what is held
        cache._sweeper.join()
    b"".join(cache.iter_bytes(keys[0]))  # the oldest put, but read just now
    cache.max_bytes = 10_000

    assert cache.sweep() <= 8_000  # 12,000 held: down to 80% of the bound
    kept = {key for key in keys if (tmp_path / "cache" / key).exists()}
    assert kept == {keys[0], keys[3], keys[4], keys[5]}


def test_passing_the_bound_starts_a_sweep(tmp_path: Path) -> None:
    cache, _remote = _cache(tmp_path, max_bytes=10_000)
    for _ in range(8):
        cache.put(new_key(), [bytes(2000)])
        if cache._sweeper is not None:
            cache._sweeper.join()
    held = sum(f.stat().st_size for f in (tmp_path / "cache").rglob("*.dcm"))
    assert held <= 10_000


def test_a_cache_disk_that_fails_does_not_fail_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, remote = _cache(tmp_path)
    real_open = cache._open_tmp

    class Full:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def write(self, _data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            self.inner.close()

    def full() -> tuple[Path, Any]:
        path, out = real_open()
        return path, Full(out)

    monkeypatch.setattr(cache, "_open_tmp", full)
    key = new_key()
    assert cache.put(key, [b"data" * 1000]).size == 4000
    assert remote.read_range(key, 0, 4) == b"data"
    assert not (tmp_path / "cache" / key).exists()
    assert not list((tmp_path / "cache" / ".tmp").iterdir())


def test_a_refused_put_reports_its_own_error_and_leaves_no_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, _remote = _cache(tmp_path)
    key = new_key()
    cache.put(key, [b"first"])
    real_open = cache._open_tmp

    def failing_close() -> tuple[Path, Any]:
        path, out = real_open()

        class Closing:
            def write(self, data: bytes) -> int:
                return out.write(data)

            def close(self) -> None:
                out.close()
                raise OSError(errno.EIO, "Input/output error")

        return path, Closing()

    monkeypatch.setattr(cache, "_open_tmp", failing_close)
    with pytest.raises(FileExistsError):  # not the cache disk's EIO
        cache.put(key, [b"second"])
    assert b"".join(cache.iter_bytes(key)) == b"first"
    assert not list((tmp_path / "cache" / ".tmp").iterdir())


def test_the_integrity_sweep_reads_the_remote_store(tmp_path: Path) -> None:
    cache, remote = _cache(tmp_path)
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    migrate.upgrade(db)
    try:
        stored = Ingestor(db, cache).ingest(as_file(good("sweep")))
        key = db_key(db, stored.sop_uid)
        original = remote.read_range(key, 0, remote.size(key))
        _behind_its_back(remote, key, original[:-1] + bytes([original[-1] ^ 1]))
        assert b"".join(cache.iter_bytes(key)) == original  # reads come from the copy

        report = verify(db, cache)
    finally:
        db.dispose()
    assert [(p.sop_uid, p.kind) for p in report.problems] == [(stored.sop_uid, "mismatch")]
    assert uncached(cache) is remote


def db_key(db: Database, sop_uid: str) -> str:
    with db.read() as conn:
        return str(
            conn.execute(select(objects.c.key).where(objects.c.sop_uid == sop_uid)).scalar_one()
        )


def test_s3_storage_gets_a_cache_unless_it_is_turned_off(tmp_path: Path) -> None:
    s3 = {"storage_url": "s3://bucket/archive", "s3_endpoint_url": "http://127.0.0.1:9"}
    store = open_store(Settings(data_dir=tmp_path, **s3))  # type: ignore[arg-type]
    assert isinstance(store, CachedStore)
    assert store.directory == tmp_path / "object-cache"
    assert store.max_bytes == 2 * 1024**3
    assert not store.on_store
    on_store = open_store(Settings(data_dir=tmp_path, object_cache_on_store=True, **s3))  # type: ignore[arg-type]
    assert isinstance(on_store, CachedStore)
    assert on_store.on_store
    off = open_store(Settings(data_dir=tmp_path, object_cache_bytes=0, **s3))  # type: ignore[arg-type]
    assert isinstance(off, S3Store)
    assert not isinstance(open_store(Settings(data_dir=tmp_path)), CachedStore)


def test_s3_notifications_name_the_bucket_beneath_the_cache_and_encryption(
    tmp_path: Path,
) -> None:
    s3 = S3Store("scans", "archive", endpoint_url="http://127.0.0.1:9")
    cached = CachedStore(s3, tmp_path / "cache", 1024)
    encrypted = EncryptedStore(cached, KeyRing(FileMasterKey(secrets.token_bytes(32))))
    body = json.dumps(
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": bucket}, "object": {"key": key}},
                }
                for bucket, key in (
                    ("scans", "archive/inbox/a.dcm"),
                    ("other", "archive/inbox/b.dcm"),
                    ("scans", "elsewhere/inbox/c.dcm"),
                )
            ]
        }
    )
    for store in (s3, cached, encrypted):
        assert durable(store) is s3
        assert keys_in(body, store) == ["inbox/a.dcm"]
