"""Objects in a dict: for tests and throw-away runs (`memory://`). Same semantics as disk."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

from dicomvault.errors import ObjectNotFound
from dicomvault.storage.base import CHUNK_SIZE, HashingReader, ObjectInfo, PutResult, put_each

__all__ = ["MemoryStore"]


class MemoryStore:
    def __init__(self) -> None:
        self.url = "memory://"
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, chunks: Iterable[bytes]) -> PutResult:
        reader = HashingReader(chunks)
        data = b"".join(reader)
        with self._lock:
            if key in self._objects:
                raise FileExistsError(key)
            self._objects[key] = data
        return reader.result(key)

    def put_many(self, items: Sequence[tuple[str, Iterable[bytes]]]) -> list[PutResult | Exception]:
        return put_each(self, items)

    def _get(self, key: str) -> bytes:
        try:
            return self._objects[key]
        except KeyError as exc:
            raise ObjectNotFound(f"no object {key}") from exc

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        data = self._get(key)
        stop = len(data) if end is None else min(end, len(data))
        return (data[pos : min(pos + CHUNK_SIZE, stop)] for pos in range(start, stop, CHUNK_SIZE))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return self._get(key)[start : start + length]

    def size(self, key: str) -> int:
        return len(self._get(key))

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            items = [(k, len(v)) for k, v in self._objects.items() if k.startswith(prefix)]
        return (ObjectInfo(key=k, size=n) for k, n in sorted(items))
