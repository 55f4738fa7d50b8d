"""Envelope encryption on its own: chunk boundaries, ranged reads, tampering of every
kind, missing keys, rotation without rewriting, and plaintext objects passed through."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from dicomvault.errors import ChecksumMismatch
from dicomvault.storage import LocalStore, new_key
from dicomvault.storage.crypto import CHUNK, MAGIC, TAG, EncryptedStore, WrappedKey
from dicomvault.storage.keys import FileMasterKey, KeyRing, MissingKey, read_key_file

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5]


class DictOverrides:
    def __init__(self) -> None:
        self.rows: dict[str, WrappedKey] = {}

    def get(self, key: str) -> WrappedKey | None:
        return self.rows.get(key)

    def put(self, key: str, wrapped: WrappedKey) -> None:
        self.rows[key] = wrapped


@pytest.fixture
def plain(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "objects")


def _ring() -> KeyRing:
    return KeyRing(FileMasterKey(secrets.token_bytes(32)))


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_and_ranged_reads_across_chunks(plain: LocalStore, size: int) -> None:
    store = EncryptedStore(plain, _ring())
    data = secrets.token_bytes(size)
    key = new_key()
    # Uneven input pieces: chunking must not depend on how the caller slices.
    result = store.put(key, [data[i : i + 7777] for i in range(0, size, 7777)])
    assert (result.size, store.size(key)) == (size, size)
    assert b"".join(store.iter_bytes(key)) == data
    for start, end in [(0, 1), (CHUNK - 3, CHUNK + 3), (1, size), (size // 2, size + 10)]:
        assert b"".join(store.iter_bytes(key, start, end)) == data[start:end]
        assert store.read_range(key, start, end - start) == data[start:end]
    raw = (plain.root / key).read_bytes()
    assert raw.startswith(MAGIC)
    assert len(raw) > size  # header and tags
    if size >= 64:
        assert data[:64] not in raw


def _stored(plain: LocalStore, size: int = 2 * CHUNK + 100) -> tuple[EncryptedStore, str, Path]:
    store = EncryptedStore(plain, _ring())
    key = new_key()
    store.put(key, [secrets.token_bytes(size)])
    return store, key, plain.root / key


@pytest.mark.parametrize("where", ["header", "first chunk", "a tag", "last byte"])
def test_a_flipped_byte_anywhere_is_detected(plain: LocalStore, where: str) -> None:
    store, key, path = _stored(plain)
    raw = bytearray(path.read_bytes())
    header_end = raw.index(b"}") + 1
    position = {
        "header": header_end - 5,
        "first chunk": header_end + 10,
        "a tag": header_end + CHUNK + 3,
        "last byte": len(raw) - 1,
    }[where]
    raw[position] ^= 0x01
    path.write_bytes(bytes(raw))
    fresh = EncryptedStore(plain, store.keys)  # no cached header
    with pytest.raises((ChecksumMismatch, MissingKey)):
        b"".join(fresh.iter_bytes(key))


def test_dropped_or_swapped_chunks_are_detected(plain: LocalStore) -> None:
    store, key, path = _stored(plain, 3 * CHUNK)
    raw = path.read_bytes()
    header_end = raw.index(b"}") + 1
    step = CHUNK + TAG
    chunks = [raw[header_end + i * step : header_end + (i + 1) * step] for i in range(3)]
    for variant in (
        raw[:header_end] + chunks[0] + chunks[1],  # cut at a chunk boundary
        raw[:header_end] + chunks[1] + chunks[0] + chunks[2],  # reordered
    ):
        path.write_bytes(variant)
        with pytest.raises(ChecksumMismatch):
            b"".join(EncryptedStore(plain, store.keys).iter_bytes(key))


def test_without_the_master_key_nothing_reads(plain: LocalStore) -> None:
    _store, key, _path = _stored(plain)
    with pytest.raises(MissingKey):
        b"".join(EncryptedStore(plain, _ring()).iter_bytes(key))


def test_rotation_rewraps_without_rewriting_the_object(plain: LocalStore) -> None:
    old, new = FileMasterKey(secrets.token_bytes(32)), FileMasterKey(secrets.token_bytes(32))
    overrides = DictOverrides()
    data = secrets.token_bytes(CHUNK + 9)
    key = new_key()
    EncryptedStore(plain, KeyRing(old), overrides).put(key, [data])
    before = (plain.root / key).read_bytes()

    rotating = EncryptedStore(plain, KeyRing(new, [old]), overrides)
    assert rotating.key_id(key) == old.key_id
    assert rotating.rewrap(key) is True
    assert rotating.rewrap(key) is False  # already current
    assert rotating.key_id(key) == new.key_id
    assert (plain.root / key).read_bytes() == before
    # The old master key can now be dropped.
    assert b"".join(EncryptedStore(plain, KeyRing(new), overrides).iter_bytes(key)) == data


def test_plaintext_objects_pass_through(plain: LocalStore) -> None:
    """Files written before encryption was on (or by other tools into the inbox)."""
    key = new_key("inbox")
    plain.put(key, [b"DICM and friends"])
    store = EncryptedStore(plain, _ring())
    assert b"".join(store.iter_bytes(key)) == b"DICM and friends"
    assert store.size(key) == 16
    assert [info.key for info in store.list("inbox/")] == [key]
    assert store.key_id(key) is None


def test_key_files(tmp_path: Path) -> None:
    from dicomvault.storage.keys import new_key_file

    path = tmp_path / "master.key"
    new_key_file(path)
    assert len(read_key_file(path)) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        new_key_file(path)
    (tmp_path / "short.key").write_text("abcd")
    with pytest.raises(ValueError, match="holds 32 bytes"):
        read_key_file(tmp_path / "short.key")
