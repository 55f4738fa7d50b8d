"""One conformance suite every object store must pass (local disk, S3, memory)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomvault.errors import ChecksumMismatch, ObjectNotFound, StorageError
from dicomvault.storage import LocalStore, MemoryStore, ObjectStore, new_key, verified
from dicomvault.storage.crypto import EncryptedStore
from dicomvault.storage.keys import FileMasterKey, KeyRing
from dicomvault.storage.s3 import S3Store
from tests.support.s3 import S3_KEY, S3_SECRET, new_bucket


@pytest.fixture(params=["local", "memory", "s3", "encrypted-local", "encrypted-s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    kind = str(request.param)
    plain: ObjectStore
    if kind.endswith("local"):
        plain = LocalStore(tmp_path / "objects")
    elif kind == "memory":
        plain = MemoryStore()
    else:
        endpoint: str = request.getfixturevalue("s3_endpoint")
        bucket = new_bucket(endpoint, "conf")
        plain = S3Store(
            bucket, "p", endpoint_url=endpoint, access_key_id=S3_KEY, secret_access_key=S3_SECRET
        )
    if kind.startswith("encrypted"):
        # Envelope encryption must pass the same suite as the stores it wraps.
        yield EncryptedStore(plain, KeyRing(FileMasterKey(secrets.token_bytes(32))))
    else:
        yield plain


def test_put_reports_size_and_sha256_and_reads_back(store: ObjectStore) -> None:
    data = secrets.token_bytes(3 * 1024 * 1024 + 17)
    key = new_key()
    chunks = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
    result = store.put(key, chunks)
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(store.iter_bytes(key)) == data
    assert store.size(key) == len(data)


def test_ranged_reads(store: ObjectStore) -> None:
    data = bytes(range(256)) * 100
    key = new_key()
    store.put(key, [data])
    assert store.read_range(key, 10, 5) == data[10:15]
    assert b"".join(store.iter_bytes(key, 1000, 1100)) == data[1000:1100]
    assert b"".join(store.iter_bytes(key, 25_000)) == data[25_000:]


def test_put_never_overwrites(store: ObjectStore) -> None:
    key = new_key()
    store.put(key, [b"first"])
    with pytest.raises(FileExistsError):
        store.put(key, [b"second"])
    assert b"".join(store.iter_bytes(key)) == b"first"


def test_missing_object_and_idempotent_delete(store: ObjectStore) -> None:
    key = new_key()
    with pytest.raises(ObjectNotFound):
        store.size(key)
    with pytest.raises(ObjectNotFound):
        b"".join(store.iter_bytes(key))
    store.put(key, [b"x"])
    store.delete(key)
    store.delete(key)
    with pytest.raises(ObjectNotFound):
        store.size(key)


def test_list_by_prefix(store: ObjectStore) -> None:
    keys = {new_key("a"), new_key("a"), new_key("b")}
    for key in keys:
        store.put(key, [key.encode()])
    listed = {info.key for info in store.list("a/")}
    assert listed == {k for k in keys if k.startswith("a/")}


def test_verified_read_detects_a_wrong_checksum(store: ObjectStore) -> None:
    key = new_key()
    store.put(key, [b"payload"])
    with pytest.raises(ChecksumMismatch):
        b"".join(verified(store, key, hashlib.sha256(b"other").hexdigest()))


def test_keys_are_unique() -> None:
    assert len({new_key() for _ in range(10_000)}) == 10_000


def test_local_store_rejects_unsafe_keys(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for key in ("../escape", "/abs", "a/../../b", ".tmp/x"):
        with pytest.raises(StorageError):
            store.put(key, [b"x"])


def test_local_store_leaves_no_temp_file_on_failure(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)

    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise OSError("client went away")

    with pytest.raises(OSError, match="went away"):
        store.put(new_key(), broken())
    assert list(store.list()) == []
    assert list((tmp_path / ".tmp").iterdir()) == []
