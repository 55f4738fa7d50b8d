"""One conformance suite every object store must pass (local disk, S3, memory)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from blake3 import blake3

from dicomvault.errors import ChecksumMismatch, ObjectNotFound, StorageError
from dicomvault.storage import (
    LocalStore,
    MemoryStore,
    ObjectStore,
    local,
    new_key,
    read_range_verified,
    verified,
)
from dicomvault.storage.base import BLOCK_SIZE, BlockDigests
from dicomvault.storage.cache import CachedStore
from dicomvault.storage.crypto import EncryptedStore
from dicomvault.storage.keys import FileMasterKey, KeyRing
from dicomvault.storage.s3 import S3Store
from tests.support.s3 import S3_KEY, S3_SECRET, new_bucket


def _local(root: Path, unnamed: bool = True) -> LocalStore:
    """A local store; `unnamed` False: as on a file system without O_TMPFILE, objects
    are written under a temporary name first (storage/local.py)."""
    store = LocalStore(root)
    store._unnamed = unnamed
    return store


@pytest.fixture(
    params=[
        "local",
        "local-named",
        "memory",
        "s3",
        "cached-s3",
        "encrypted-local",
        "encrypted-s3",
        "encrypted-cached-s3",
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    kind = str(request.param)
    plain: ObjectStore
    if kind.endswith("local"):
        plain = _local(tmp_path / "objects")
    elif kind == "local-named":
        plain = _local(tmp_path / "objects", unnamed=False)
    elif kind == "memory":
        plain = MemoryStore()
    else:
        endpoint: str = request.getfixturevalue("s3_endpoint")
        bucket = new_bucket(endpoint, "conf")
        plain = S3Store(
            bucket, "p", endpoint_url=endpoint, access_key_id=S3_KEY, secret_access_key=S3_SECRET
        )
        if "cached" in kind:  # a local copy in front must keep the same contract
            on_store = not kind.startswith("encrypted")  # both ways of making copies
            plain = CachedStore(plain, tmp_path / "cache", 64 * 1024 * 1024, on_store=on_store)
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


def test_put_many_writes_each_object_and_reports_each_failure(store: ObjectStore) -> None:
    taken = new_key()
    store.put(taken, [b"already here"])
    bodies = [secrets.token_bytes(size) for size in (9_000, 1, 600_000)]
    keys = [new_key() for _ in bodies]
    items = [(keys[0], [bodies[0]]), (taken, [b"must not replace"]), (keys[1], [bodies[1]])]
    items.append((keys[2], [bodies[2][:100_000], bodies[2][100_000:]]))
    results = store.put_many(items)
    assert isinstance(results[1], FileExistsError)
    written = [results[0], results[2], results[3]]
    for key, body, result in zip(keys, bodies, written, strict=True):
        assert not isinstance(result, Exception)
        assert (result.key, result.size) == (key, len(body))
        assert result.sha256 == hashlib.sha256(body).hexdigest()
        assert read_range_verified(store, key, 0, len(body), result.blocks) == body
    assert b"".join(store.iter_bytes(taken)) == b"already here"
    assert store.put_many([]) == []


def test_put_many_keeps_no_object_of_a_stream_that_fails(store: ObjectStore) -> None:
    def failing() -> Iterator[bytes]:
        yield b"half"
        raise OSError("the client went away")

    good, bad = new_key(), new_key()
    results = store.put_many([(bad, failing()), (good, [b"whole"])])
    assert isinstance(results[0], (OSError, StorageError))
    with pytest.raises(ObjectNotFound):
        store.size(bad)
    assert b"".join(store.iter_bytes(good)) == b"whole"


def test_ranged_reads(store: ObjectStore) -> None:
    data = bytes(range(256)) * 100
    key = new_key()
    store.put(key, [data])
    assert store.read_range(key, 10, 5) == data[10:15]
    assert b"".join(store.iter_bytes(key, 1000, 1100)) == data[1000:1100]
    assert b"".join(store.iter_bytes(key, 25_000)) == data[25_000:]
    assert b"".join(store.iter_bytes(key, 25_590, 25_700)) == data[25_590:]  # clipped at the end
    assert b"".join(store.iter_bytes(key, 30_000, 30_100)) == b""  # wholly past the end
    assert b"".join(store.iter_bytes(key, 30_000)) == b""


def test_put_never_overwrites(store: ObjectStore) -> None:
    key = new_key()
    store.put(key, [b"first"])
    with pytest.raises(FileExistsError):
        store.put(key, [b"second"])
    assert b"".join(store.iter_bytes(key)) == b"first"


def test_a_large_put_round_trips_with_its_digests(store: ObjectStore) -> None:
    # Over one S3 part (8 MiB): a multipart upload there, made conditional at completion.
    data = secrets.token_bytes(19 * 1024 * 1024 + 5)
    key = new_key()
    result = store.put(key, (data[i : i + 1_000_000] for i in range(0, len(data), 1_000_000)))
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert b"".join(store.iter_bytes(key)) == data
    assert read_range_verified(store, key, len(data) - 10, 10, result.blocks) == data[-10:]
    with pytest.raises(FileExistsError):
        store.put(key, [data[:9_000_000], data[9_000_000:]])
    assert b"".join(store.iter_bytes(key)) == data


def test_a_stream_that_fails_leaves_no_object(store: ObjectStore) -> None:
    def failing() -> Iterator[bytes]:
        for _ in range(12):
            yield secrets.token_bytes(1024 * 1024)
        raise OSError("the client went away")

    key = new_key()
    with pytest.raises((OSError, StorageError), match="went away"):
        store.put(key, failing())
    with pytest.raises(ObjectNotFound):
        store.size(key)


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


def _put_blocks(store: ObjectStore, data: bytes) -> tuple[str, BlockDigests]:
    key = new_key()
    result = store.put(key, [data[i : i + 300_000] for i in range(0, len(data), 300_000)])
    return key, result.blocks


def _replace(store: ObjectStore, key: str, data: bytes) -> None:
    store.delete(key)
    store.put(key, [data])


def test_put_records_a_digest_per_block(store: ObjectStore) -> None:
    data = secrets.token_bytes(2 * BLOCK_SIZE + 1000)
    _key, blocks = _put_blocks(store, data)
    expected = b"".join(
        blake3(data[i : i + BLOCK_SIZE]).digest() for i in range(0, len(data), BLOCK_SIZE)
    )
    assert blocks == BlockDigests(expected, "blake3")
    assert len(blocks) == 3


def test_sha256_block_digests_of_older_objects_are_still_checked(store: ObjectStore) -> None:
    """Objects recorded before BLAKE3 carry SHA-256 block digests: they must keep
    serving checked, and a damaged block must still be refused."""
    data = secrets.token_bytes(2 * BLOCK_SIZE + 1000)
    key = new_key()
    store.put(key, [data])
    legacy = BlockDigests(
        b"".join(
            hashlib.sha256(data[i : i + BLOCK_SIZE]).digest()
            for i in range(0, len(data), BLOCK_SIZE)
        ),
        "sha256",
    )
    assert (
        read_range_verified(store, key, BLOCK_SIZE - 5, 10, legacy) == data[BLOCK_SIZE - 5 :][:10]
    )
    assert b"".join(verified(store, key, hashlib.sha256(data).hexdigest(), legacy)) == data
    # The same digests read as BLAKE3 ones do not match: the algorithm is honoured.
    with pytest.raises(ChecksumMismatch, match="block 0"):
        read_range_verified(store, key, 0, 10, BlockDigests(legacy.digests, "blake3"))
    damaged = bytearray(data)
    damaged[10] ^= 1
    _replace(store, key, bytes(damaged))
    with pytest.raises(ChecksumMismatch, match="block 0"):
        read_range_verified(store, key, 0, 10, legacy)


def test_an_unknown_block_digest_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="md5"):
        BlockDigests(b"", "md5")


def test_checked_ranges_read_back_exactly(store: ObjectStore) -> None:
    data = secrets.token_bytes(2 * BLOCK_SIZE + 1000)
    key, blocks = _put_blocks(store, data)
    for start, length in (
        (0, 10),
        (BLOCK_SIZE - 5, 10),  # across a block boundary
        (BLOCK_SIZE, BLOCK_SIZE),  # exactly one block
        (2 * BLOCK_SIZE + 900, 100),  # inside the short last block
        (7, 2 * BLOCK_SIZE + 900),  # nearly everything
    ):
        assert (
            read_range_verified(store, key, start, length, blocks) == data[start : start + length]
        )
    assert b"".join(verified(store, key, hashlib.sha256(data).hexdigest(), blocks)) == data


def test_a_changed_block_stops_the_read_before_any_of_its_bytes(store: ObjectStore) -> None:
    data = secrets.token_bytes(3 * BLOCK_SIZE)
    key, blocks = _put_blocks(store, data)
    damaged = bytearray(data)
    damaged[BLOCK_SIZE + 7] ^= 1  # block 1
    _replace(store, key, bytes(damaged))

    assert read_range_verified(store, key, 0, 100, blocks) == data[:100]  # block 0 intact
    assert read_range_verified(store, key, 2 * BLOCK_SIZE, 50, blocks) == data[-BLOCK_SIZE:][:50]
    with pytest.raises(ChecksumMismatch, match="block 1"):
        read_range_verified(store, key, BLOCK_SIZE - 10, 20, blocks)
    stream = verified(store, key, hashlib.sha256(data).hexdigest(), blocks)
    assert next(stream) == data[:BLOCK_SIZE]
    with pytest.raises(ChecksumMismatch, match="block 1"):
        next(stream)  # nothing of the damaged block goes out


def test_a_shortened_object_is_refused_on_a_checked_read(store: ObjectStore) -> None:
    data = secrets.token_bytes(2 * BLOCK_SIZE)
    key, blocks = _put_blocks(store, data)
    _replace(store, key, data[:BLOCK_SIZE])  # cut exactly at a block boundary
    assert read_range_verified(store, key, 0, 10, blocks) == data[:10]
    with pytest.raises(ChecksumMismatch, match="shorter"):
        read_range_verified(store, key, BLOCK_SIZE, 10, blocks)


def test_keys_are_unique() -> None:
    assert len({new_key() for _ in range(10_000)}) == 10_000


def test_local_store_rejects_unsafe_keys(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for key in ("../escape", "/abs", "a/../../b", ".tmp/x"):
        with pytest.raises(StorageError):
            store.put(key, [b"x"])


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "named"])
def test_local_store_leaves_no_temp_file_on_failure(tmp_path: Path, unnamed: bool) -> None:
    store = _local(tmp_path, unnamed)

    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise OSError("client went away")

    with pytest.raises(StorageError, match="went away"):
        store.put(new_key(), broken())
    assert list(store.list()) == []
    assert list((tmp_path / ".tmp").iterdir()) == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_local_store_writes_unnamed_files_where_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On this file system the object is linked from its open unnamed file, never from
    a temporary name; where O_TMPFILE is refused, the store falls back to temporary
    names for good, and both read back."""
    linked: list[str] = []
    real_link = os.link

    def recording_link(src: str, dst: str, **kwargs: object) -> None:
        linked.append(str(src))
        real_link(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", recording_link)
    store = LocalStore(tmp_path)
    first = new_key()
    store.put(first, [b"unnamed"])
    assert linked[-1].startswith("/proc/self/fd/")

    real_open = os.open

    def no_tmpfile(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_tmpfile)
    second, third = new_key(), new_key()
    store.put(second, [b"named"])
    assert Path(linked[-1]).parent == tmp_path / ".tmp"
    assert store._unnamed is False  # not tried again
    monkeypatch.setattr(os, "open", real_open)
    store.put(third, [b"named too"])
    assert Path(linked[-1]).parent == tmp_path / ".tmp"
    assert [b"".join(store.iter_bytes(k)) for k in (first, second, third)] == [
        b"unnamed",
        b"named",
        b"named too",
    ]
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_local_store_starts_the_writeback_then_hashes_and_syncs_in_the_putting_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object's writeback is started (sync_file_range, which the C library of this
    system has and which takes the call as made) before its fsync, both in the thread
    that puts: no other thread is woken per object. Without sync_file_range the put
    is the same, only without the head start."""
    assert local._start_writeback is not None
    with open(tmp_path / "probe", "wb") as probe:
        probe.write(b"dirty page")
        probe.flush()
        assert local._start_writeback(probe.fileno()) == 0
    calls: list[tuple[str, int, int]] = []
    start, fsync = local._start_writeback, os.fsync

    def started(fd: int) -> object:
        calls.append(("writeback", fd, threading.get_ident()))
        return start(fd)

    def synced(fd: int) -> None:
        calls.append(("fsync", fd, threading.get_ident()))
        fsync(fd)

    monkeypatch.setattr(local, "_start_writeback", started)
    monkeypatch.setattr(os, "fsync", synced)
    store = LocalStore(tmp_path / "objects")
    data = secrets.token_bytes(3 * BLOCK_SIZE // 2)
    first = store.put(new_key(), [data])
    writeback = [call for call in calls if call[0] == "writeback"]
    assert len(writeback) == 1
    object_calls = [call for call in calls if call[1] == writeback[0][1]]
    assert [call[0] for call in object_calls][:2] == ["writeback", "fsync"]
    assert {call[2] for call in calls} == {threading.get_ident()}
    monkeypatch.setattr(local, "_start_writeback", None)
    second = store.put(new_key(), [data])
    assert (second.sha256, second.blocks) == (first.sha256, first.blocks)
    assert b"".join(store.iter_bytes(second.key)) == data


@pytest.mark.fanout  # made beforehand: a new directory is made durable by its own fsync
@pytest.mark.skipif(local._syncfs is None, reason="no syncfs reporting errors here")
def test_local_put_many_syncs_the_file_system_once_not_each_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several objects are made durable by one syncfs, then named, and their names by
    another, not two fsyncs each (storage/local.py): no name points at data not yet on
    the disk. Their pages are given back once synced, as after `put`."""
    syncfs, fsync = local._syncfs, os.fsync
    calls: list[str] = []
    named_at_sync: list[int] = []

    def counted_syncfs(fd: int) -> int:
        calls.append("syncfs")
        named_at_sync.append(len(list(store.list("instances/"))))
        return syncfs(fd)

    def counted_fsync(fd: int) -> None:
        calls.append("fsync")
        fsync(fd)

    store = LocalStore(tmp_path / "objects")
    store.prepare()
    monkeypatch.setattr(local, "_syncfs", counted_syncfs)
    monkeypatch.setattr(os, "fsync", counted_fsync)
    bodies = [secrets.token_bytes(16 * mmap.PAGESIZE) for _ in range(5)]
    results = store.put_many([(new_key(), [body]) for body in bodies])
    assert calls == ["syncfs", "syncfs"]
    assert named_at_sync == [0, 5]
    drops = hasattr(os, "posix_fadvise") and _pages_can_be_given_back(tmp_path)
    for body, result in zip(bodies, results, strict=True):
        assert not isinstance(result, Exception)
        if drops:
            assert _cached_pages(tmp_path / "objects" / result.key) == 0
        assert b"".join(store.iter_bytes(result.key)) == body
    calls.clear()
    store.put_many([(new_key(), [b"alone"])])  # one object: its own two fsyncs cost less
    assert calls == ["fsync", "fsync"]


@pytest.mark.skipif(local._syncfs is None, reason="no syncfs reporting errors here")
@pytest.mark.parametrize("failing", [1, 2], ids=["the data's sync", "the names' sync"])
def test_local_put_many_whose_sync_fails_keeps_none_of_its_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    syncfs = local._syncfs
    assert syncfs is not None
    calls: list[int] = []

    def failing_syncfs(fd: int) -> int:
        calls.append(fd)
        if len(calls) < failing:
            return syncfs(fd)
        ctypes.set_errno(errno.EIO)
        return -1

    store = LocalStore(tmp_path / "objects")
    before = store.put(new_key(), [b"kept"])
    monkeypatch.setattr(local, "_syncfs", failing_syncfs)
    results = store.put_many([(new_key(), [b"one"]), (new_key(), [b"two"])])
    assert len(calls) == failing
    assert all(isinstance(r, StorageError) for r in results)
    assert "durable" in str(results[0])
    assert os.strerror(errno.EIO) in str(results[0])
    assert [info.key for info in store.list("instances/")] == [before.key]


@pytest.mark.skipif(local._syncfs is None, reason="no syncfs reporting errors here")
def test_local_put_many_without_unnamed_files_leaves_no_temporary_name(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    store._unnamed = False  # as on a file system without O_TMPFILE
    bodies = [b"one", b"two", b"three"]
    results = store.put_many([(new_key(), [body]) for body in bodies])
    for body, result in zip(bodies, results, strict=True):
        assert not isinstance(result, Exception)
        assert b"".join(store.iter_bytes(result.key)) == body
    assert list((tmp_path / "objects" / ".tmp").iterdir()) == []


def test_local_store_recreates_a_directory_removed_behind_its_back(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    first = "instances/ab/cd/first.dcm"
    store.put(first, [b"one"])
    store.delete(first)
    (tmp_path / "objects/instances/ab/cd").rmdir()  # an operator tidying up
    store.put("instances/ab/cd/second.dcm", [b"two"])
    assert b"".join(store.iter_bytes("instances/ab/cd/second.dcm")) == b"two"


@pytest.mark.fanout
def test_local_store_creates_its_fanout_once_and_puts_make_no_directory(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    store.prepare()
    instances = tmp_path / "objects" / "instances"
    fanout = sorted(p.name for p in instances.iterdir())
    assert len(fanout) == 4096
    assert (fanout[0], fanout[-1]) == ("000", "fff")
    keys = [new_key() for _ in range(200)]
    for key in keys:
        assert key.split("/")[1] in fanout
        store.put(key, [b"x"])
    after = sorted(p.name for p in instances.iterdir())
    assert after == fanout  # every object went into a directory made beforehand
    # A store opened later (another process) finds the fan-out made and reads back.
    again = LocalStore(tmp_path / "objects")
    again.put(new_key(), [b"y"])
    assert sum(1 for _ in again.list("instances/")) == 201


@pytest.mark.fanout
def test_a_fresh_local_store_makes_its_fanout_on_the_first_put(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    store.put(new_key(), [b"x"])
    assert sum(1 for _ in (tmp_path / "objects" / "instances").iterdir()) == 4096


def _cached_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache now (mincore(2) of a mapping
    of it; mapping a file does not read it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
    ]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "rb") as handle:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, handle.fileno(), 0)
        assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        try:
            vector = (ctypes.c_ubyte * pages)()
            assert libc.mincore(address, size, vector) == 0, ctypes.get_errno()
        finally:
            libc.munmap(address, size)
    return sum(byte & 1 for byte in vector)


def _pages_can_be_given_back(directory: Path) -> bool:
    """Whether this file system drops a synced file's pages when advised to: the probe
    sees cached pages where there are some, and none once they are given back."""
    plain = directory / "plain"
    with open(plain, "wb") as handle:
        handle.write(secrets.token_bytes(64 * mmap.PAGESIZE))
        handle.flush()
        os.fsync(handle.fileno())
        assert _cached_pages(plain) == 64
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return _cached_pages(plain) == 0


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "named"])
def test_local_store_leaves_no_page_of_a_written_object_in_the_page_cache(
    tmp_path: Path, unnamed: bool
) -> None:
    """Once synced, the object's pages are given back (storage/local.py); reading it
    brings them back. A file written beside it shows that the probe sees cached pages
    where there are some, and that this file system can give them back."""
    data = secrets.token_bytes(64 * mmap.PAGESIZE)
    if not _pages_can_be_given_back(tmp_path):
        pytest.skip("this file system keeps every page in memory (tmpfs)")
    store = _local(tmp_path / "objects", unnamed)
    put = store.put(new_key(), [data[: len(data) // 2], data[len(data) // 2 :]])
    path = tmp_path / "objects" / put.key
    assert _cached_pages(path) == 0
    assert b"".join(store.iter_bytes(put.key)) == data
    assert _cached_pages(path) == 64


def test_a_file_system_refusing_the_page_cache_advice_still_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*_args: object) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(local, "_FADVISE", refused)
    store = LocalStore(tmp_path / "objects")
    put = store.put(new_key(), [b"kept"])
    assert b"".join(store.iter_bytes(put.key)) == b"kept"
