"""Envelope encryption at rest, inside the storage layer: `EncryptedStore` wraps any
object store (local, S3, memory) and is an object store itself.

Every object gets a fresh 256-bit data key. The object is AES-256-GCM in chunks of
`CHUNK` bytes, so it streams in bounded memory both ways and a ranged read (a frame)
decrypts only the chunks it touches. Layout of a stored object:

    b"DVENC\\0\\1\\0" | header length (4 bytes, big endian) | header (JSON) | chunks
    header: {"chunk": 65536, "kid": master key id, "wk": wrapped data key, "np": nonce prefix}
    chunk i: ciphertext + 16-byte tag; nonce = prefix (4) + i (8); the associated data binds
    the header's hash, i, and whether it is the last chunk: a flipped byte, swapped or
    dropped chunks, a cut-off tail, an edited header all fail authentication on read.

The wrapped data key is in the header, so an object describes itself. Rotating the
master key re-wraps data keys without rewriting objects: the re-wrapped key is kept
by a `KeyOverrides` (a table in the index), consulted before the header.

Objects without the marker (written before encryption was turned on, or dropped into
the inbox by other tools) are read as they are; their SHA-256 in the index still
guards them. `plain` is the wrapped store, for reading such files explicitly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dicomvault.errors import ChecksumMismatch
from dicomvault.storage.base import HashingReader, ObjectInfo, ObjectStore, PutResult
from dicomvault.storage.keys import KeyRing

__all__ = ["CHUNK", "MAGIC", "EncryptedStore", "KeyOverrides", "WrappedKey"]

MAGIC = b"DVENC\x00\x01\x00"
CHUNK = 64 * 1024
TAG = 16
_PREFIX = len(MAGIC) + 4
_CACHE = 1024


@dataclass(frozen=True, slots=True)
class WrappedKey:
    key_id: str
    wrapped: bytes


class KeyOverrides(Protocol):
    """Re-wrapped data keys by object key (written by rotation)."""

    def get(self, key: str) -> WrappedKey | None: ...

    def put(self, key: str, wrapped: WrappedKey) -> None: ...


@dataclass(frozen=True, slots=True)
class _Header:
    offset: int  # where chunk 0 starts
    chunk: int
    digest: bytes  # SHA-256 of the header bytes, bound into every chunk
    nonce_prefix: bytes
    header_key: WrappedKey
    aes: AESGCM | None  # None: not an encrypted object


class EncryptedStore:
    def __init__(
        self, plain: ObjectStore, keys: KeyRing, overrides: KeyOverrides | None = None
    ) -> None:
        self.plain = plain
        self.keys = keys
        self.overrides = overrides
        self.url = plain.url
        self._cache: OrderedDict[str, _Header] = OrderedDict()
        self._lock = threading.Lock()

    # -- writing -----------------------------------------------------------------------

    def put(self, key: str, chunks: Iterable[bytes]) -> PutResult:
        plain, sealed = self._sealing(chunks)
        self.plain.put(key, sealed)
        return plain.result(key)

    def put_many(self, items: Sequence[tuple[str, Iterable[bytes]]]) -> list[PutResult | Exception]:
        sealings = [(key, *self._sealing(chunks)) for key, chunks in items]
        written = self.plain.put_many([(key, sealed) for key, _, sealed in sealings])
        return [
            outcome if isinstance(outcome, Exception) else plain.result(key)
            for (key, plain, _), outcome in zip(sealings, written, strict=True)
        ]

    def _sealing(self, chunks: Iterable[bytes]) -> tuple[HashingReader, Iterator[bytes]]:
        """A new data key's encryption of `chunks`, and the reader that hashes the
        plaintext as the ciphertext is drawn (the digests describe the plaintext)."""
        data_key = AESGCM.generate_key(bit_length=256)
        key_id, wrapped = self.keys.wrap(data_key)
        nonce_prefix = os.urandom(4)
        header = json.dumps(
            {
                "chunk": CHUNK,
                "kid": key_id,
                "wk": base64.b64encode(wrapped).decode(),
                "np": base64.b64encode(nonce_prefix).decode(),
            },
            separators=(",", ":"),
        ).encode()
        plain = HashingReader(chunks)
        sealed = _seal(
            plain, AESGCM(data_key), hashlib.sha256(header).digest(), nonce_prefix, header
        )
        return plain, sealed

    # -- reading -----------------------------------------------------------------------

    def _header(self, key: str) -> _Header:
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        head = self.plain.read_range(key, 0, _PREFIX)
        if head[: len(MAGIC)] != MAGIC or len(head) < _PREFIX:
            parsed = _Header(0, 0, b"", b"", WrappedKey("", b""), None)
        else:
            (length,) = struct.unpack(">I", head[len(MAGIC) :])
            raw = self.plain.read_range(key, _PREFIX, length)
            parsed = self._parse(key, raw, _PREFIX + length)
        with self._lock:
            self._cache[key] = parsed
            if len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        return parsed

    def _parse(self, key: str, raw: bytes, offset: int) -> _Header:
        try:
            fields = json.loads(raw)
            stored = WrappedKey(str(fields["kid"]), base64.b64decode(fields["wk"]))
            chunk = int(fields["chunk"])
            nonce_prefix = base64.b64decode(fields["np"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ChecksumMismatch(f"object {key}: its encryption header is damaged") from exc
        current = self.overrides.get(key) if self.overrides is not None else None
        wrapped = current or stored
        data_key = self.keys.unwrap(wrapped.key_id, wrapped.wrapped)
        return _Header(
            offset, chunk, hashlib.sha256(raw).digest(), nonce_prefix, stored, AESGCM(data_key)
        )

    def _geometry(self, key: str, header: _Header) -> tuple[int, int]:
        """(number of chunks, plaintext size) of an encrypted object."""
        body = self.plain.size(key) - header.offset
        count = max(1, -(-body // (header.chunk + TAG)))
        size = body - count * TAG
        if body < TAG or size < 0:
            raise ChecksumMismatch(f"object {key} is truncated")
        return count, size

    def size(self, key: str) -> int:
        header = self._header(key)
        if header.aes is None:
            return self.plain.size(key)
        return self._geometry(key, header)[1]

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        header = self._header(key)
        if header.aes is None:
            return self.plain.iter_bytes(key, start, end)
        count, size = self._geometry(key, header)
        end = size if end is None else min(end, size)
        if start >= end:
            return iter(())
        return self._decrypt(key, header, count, start, end)

    def _decrypt(
        self, key: str, header: _Header, count: int, start: int, end: int
    ) -> Iterator[bytes]:
        assert header.aes is not None
        step = header.chunk + TAG
        first, last = start // header.chunk, (end - 1) // header.chunk
        cipher_start = header.offset + first * step
        cipher_end = header.offset + (last + 1) * step
        index = first
        pending = bytearray()
        for piece in self.plain.iter_bytes(key, cipher_start, cipher_end):
            pending += piece
            while len(pending) >= step and index < last:
                yield _clip(
                    self._open(key, header, count, index, pending[:step]), index, header, start, end
                )
                del pending[:step]
                index += 1
        if index != last or not pending:
            raise ChecksumMismatch(f"object {key} is shorter than its chunks promise")
        yield _clip(self._open(key, header, count, index, pending), index, header, start, end)

    def _open(
        self, key: str, header: _Header, count: int, index: int, sealed: bytes | bytearray
    ) -> bytes:
        assert header.aes is not None
        nonce = header.nonce_prefix + struct.pack(">Q", index)
        aad = header.digest + struct.pack(">Q?", index, index == count - 1)
        try:
            return header.aes.decrypt(nonce, bytes(sealed), aad)
        except InvalidTag as exc:
            raise ChecksumMismatch(
                f"object {key}: chunk {index} fails authentication (altered or damaged)"
            ) from exc

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return b"".join(self.iter_bytes(key, start, start + length))

    def delete(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)
        self.plain.delete(key)

    def drop(self, key: str) -> bool:
        """Drop the cached copy of `key` beneath (`storage.cache`); whether there was one."""
        drop = getattr(self.plain, "drop", None)
        if drop is None or not drop(key):
            return False
        with self._lock:
            self._cache.pop(key, None)  # its header may have come from the damaged copy
        return True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """The wrapped store's listing (sizes are stored sizes, headers included)."""
        return self.plain.list(prefix)

    # -- key rotation ------------------------------------------------------------------

    def key_id(self, key: str) -> str | None:
        """The master key id the object's data key is wrapped by now (None: plaintext)."""
        header = self._header(key)
        if header.aes is None:
            return None
        current = self.overrides.get(key) if self.overrides is not None else None
        return (current or header.header_key).key_id

    def rewrap(self, key: str) -> bool:
        """Wrap the object's data key with the current master key; False if it already is
        (or the object is not encrypted). The object itself is not touched."""
        if self.overrides is None:
            raise RuntimeError("key rotation needs a place to keep re-wrapped keys")
        header = self._header(key)
        if header.aes is None:
            return False
        current = self.overrides.get(key) or header.header_key
        if current.key_id == self.keys.current.key_id:
            return False
        data_key = self.keys.unwrap(current.key_id, current.wrapped)
        key_id, wrapped = self.keys.wrap(data_key)
        self.overrides.put(key, WrappedKey(key_id, wrapped))
        with self._lock:
            self._cache.pop(key, None)
        return True


def _clip(data: bytes, index: int, header: _Header, start: int, end: int) -> bytes:
    base = index * header.chunk
    return data[max(0, start - base) : max(0, end - base)]


def _seal(
    chunks: Iterable[bytes], aes: AESGCM, digest: bytes, nonce_prefix: bytes, header: bytes
) -> Iterator[bytes]:
    yield MAGIC + struct.pack(">I", len(header)) + header
    pending = bytearray()
    index = 0

    def sealed(data: bytes, final: bool) -> bytes:
        nonce = nonce_prefix + struct.pack(">Q", index)
        return aes.encrypt(nonce, data, digest + struct.pack(">Q?", index, final))

    for piece in chunks:
        pending += piece
        if len(pending) <= CHUNK:
            continue
        view = memoryview(pending)
        used = 0
        while len(pending) - used > CHUNK:  # keep a tail: the last chunk must be marked so
            yield sealed(bytes(view[used : used + CHUNK]), False)
            used += CHUNK
            index += 1
        view.release()
        del pending[:used]
    yield sealed(bytes(pending), True)
