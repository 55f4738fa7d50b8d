"""A bounded local-disk copy of recently stored and read objects, in front of a remote store.

With objects in S3, every retrieval, frame and rendered image would otherwise fetch
its bytes over the network: the first byte of an S3 GET takes tens of milliseconds, and
each GET is billed. Viewers open what arrived recently and go back to what they
opened, so the cache keeps:

- every object read whole from the remote store (a retrieval, or a ranged read from
  its first byte that reaches its end), filled as the bytes pass to the reader;
- with `on_store`, every object stored through this server too, written alongside
  the upload as it streams, so the study a modality just sent is read from local
  disk the first time as well. Off by default: on PostgreSQL + S3 the local write of
  each CT instance cost 40-55% of the STOW-RS rate in the benchmark
  (docs/performance.md).

Ranged reads that do not cover the whole object read the remote store and are not
kept. Only keys the archive generates (`instances/...`) are cached, never the inbox.

Objects are immutable (a key is never written twice), so a cached copy is never
stale; deleting an object removes the copy too. The cache holds the bytes exactly as
the remote store has them, ciphertext when encryption at rest is on. It is not
durable and needs no fsync: a copy damaged by a crash fails its block digest check,
is dropped (`drop`) and read again from the remote store (`base.verified_range`).
The integrity sweep reads the remote store itself (`uncached`).

Eviction is by least recent use: a copy's modification time is set at each read, and
when the copies pass `max_bytes` a sweep (on a background thread) removes the oldest
until they are at 80% of it. Each server process counts what it adds since the last
sweep, so with several processes the cache can pass its bound by a fifth of it per
process before a sweep brings it back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

from dicomvault.storage.base import KEY_PREFIX, ObjectInfo, ObjectStore, PutResult
from dicomvault.storage.local import iter_file

__all__ = ["CachedStore", "durable", "uncached"]

log = logging.getLogger(__name__)

_TMP = ".tmp"
_KEEP_AFTER_SWEEP = 0.8  # a sweep leaves the cache at this share of its bound
_STALE_TMP_SECONDS = 3600  # temporary files older than this are leftovers of a crash


class CachedStore:
    """`origin` with a copy of its recent objects under `directory` (at most `max_bytes`);
    `on_store`: copies of what is stored through it too, not only of what is read."""

    def __init__(
        self, origin: ObjectStore, directory: Path, max_bytes: int, *, on_store: bool = False
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("an object cache needs a positive size")
        self.origin = origin
        self.url = origin.url
        self.directory = directory
        self.max_bytes = max_bytes
        self.on_store = on_store
        self._tmp = directory / _TMP
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._estimate: int | None = None  # bytes held: the last sweep's count plus adds
        self._sweeper: threading.Thread | None = None

    # -- where a copy lives --------------------------------------------------------

    def _path(self, key: str) -> Path | None:
        """The copy's path, or None for keys the cache does not keep."""
        parts = key.split("/")
        if parts[0] != KEY_PREFIX or len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
            return None
        return self.directory.joinpath(*parts)

    def _open_tmp(self) -> tuple[Path, IO[bytes]]:
        path = self._tmp / f"{secrets.token_hex(12)}.part"
        return path, open(path, "xb")

    def _admit(self, tmp: Path, path: Path, size: int) -> None:
        """Move a complete copy into place (a failure only means no copy)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("object cache: cannot keep %s: %s", path.name, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        self._added(size)

    # -- the store interface -------------------------------------------------------

    def put(self, key: str, chunks: Iterable[bytes]) -> PutResult:
        copy = self._copy(key)
        if copy is None:
            return self.origin.put(key, chunks)
        try:
            result = self.origin.put(key, copy.tee(chunks))
        except BaseException:
            copy.discard()  # the put's own error is the one to report
            raise
        copy.keep(result.size)
        return result

    def put_many(self, items: Sequence[tuple[str, Iterable[bytes]]]) -> list[PutResult | Exception]:
        copies = [self._copy(key) for key, _ in items]
        teed = [
            (key, chunks if copy is None else copy.tee(chunks))
            for (key, chunks), copy in zip(items, copies, strict=True)
        ]
        try:
            results = self.origin.put_many(teed)
        except BaseException:
            for copy in copies:
                if copy is not None:
                    copy.discard()
            raise
        for copy, result in zip(copies, results, strict=True):
            if copy is not None:
                if isinstance(result, Exception):
                    copy.discard()
                else:
                    copy.keep(result.size)
        return results

    def _copy(self, key: str) -> _Copy | None:
        """A copy of the object `key` to fill as it is stored, or None: not kept."""
        path = self._path(key) if self.on_store else None
        if path is None:
            return None
        try:
            tmp, out = self._open_tmp()
        except OSError as exc:
            log.warning("object cache: cannot write a copy: %s", exc)
            return None
        return _Copy(self, key, path, tmp, out)

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        if path is not None:
            try:
                copy = open(path, "rb")  # noqa: SIM115 - closed by iter_file
            except FileNotFoundError:
                pass
            else:
                with contextlib.suppress(OSError):
                    os.utime(copy.fileno())  # its last use, for eviction
                return iter_file(copy, start, end)
        remote = self.origin.iter_bytes(key, start, end)  # raises ObjectNotFound now
        if path is None or start != 0:
            return remote
        return self._fill(remote, path, end)

    def _fill(self, remote: Iterator[bytes], path: Path, end: int | None) -> Iterator[bytes]:
        """`remote`'s chunks, copied to the cache; kept when they were the whole object."""
        try:
            tmp, opened = self._open_tmp()
        except OSError:
            yield from remote
            return
        out: IO[bytes] | None = opened
        size = 0
        complete = False
        try:
            for chunk in remote:
                if out is not None:
                    try:
                        out.write(chunk)
                    except OSError:
                        out.close()
                        out = None
                size += len(chunk)
                yield chunk
            # [0, end) came back short of `end`: the object ended first, so it is whole.
            complete = end is None or size < end
        finally:
            if out is not None:
                try:
                    out.close()
                except OSError:
                    complete = False
            if complete and out is not None:
                self._admit(tmp, path, size)
            else:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return b"".join(self.iter_bytes(key, start, start + length))

    def size(self, key: str) -> int:
        path = self._path(key)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                return path.stat().st_size
        return self.origin.size(key)

    def delete(self, key: str) -> None:
        # The remote object first: a read between the two would otherwise copy it back.
        self.origin.delete(key)
        self.drop(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.origin.list(prefix)

    def drop(self, key: str) -> bool:
        """Remove the cached copy of `key`; whether there was one."""
        path = self._path(key)
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    # -- staying within the bound --------------------------------------------------

    def _added(self, size: int) -> None:
        with self._lock:
            first = self._estimate is None
            self._estimate = (self._estimate or 0) + size
            if not first and self._estimate <= self.max_bytes:
                return
            if self._sweeper is not None and self._sweeper.is_alive():
                return
            self._sweeper = threading.Thread(
                target=self.sweep, name="object-cache-sweep", daemon=True
            )
            self._sweeper.start()

    def sweep(self) -> int:
        """Remove the least recently used copies while they pass the bound (down to 80%
        of it) and leftover temporary files; return the bytes held after."""
        copies: list[tuple[float, int, str]] = []
        total = 0
        now = time.time()
        for entry in _walk(self.directory):
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if Path(entry.path).parent == self._tmp:
                if now - stat.st_mtime > _STALE_TMP_SECONDS:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                continue
            copies.append((stat.st_mtime, stat.st_size, entry.path))
            total += stat.st_size
        if total > self.max_bytes:
            copies.sort()
            goal = self.max_bytes * _KEEP_AFTER_SWEEP
            for _mtime, size, path in copies:
                if total <= goal:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    total -= size
        with self._lock:
            self._estimate = total
        return total


def _walk(directory: Path) -> Iterator[os.DirEntry[str]]:
    """Every file under `directory`."""
    pending = [str(directory)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        yield entry
        except FileNotFoundError:
            continue


def uncached(store: ObjectStore) -> ObjectStore:
    """The store beneath any cache: what the integrity sweep must read."""
    from dicomvault.storage.crypto import EncryptedStore

    if isinstance(store, CachedStore):
        return store.origin
    if isinstance(store, EncryptedStore) and isinstance(store.plain, CachedStore):
        return EncryptedStore(store.plain.origin, store.keys, store.overrides)
    return store


def durable(store: ObjectStore) -> ObjectStore:
    """The store the objects lie in, beneath encryption and any cache: its bucket and
    prefix are the ones S3 event notifications name."""
    from dicomvault.storage.crypto import EncryptedStore

    if isinstance(store, EncryptedStore):
        store = store.plain
    return store.origin if isinstance(store, CachedStore) else store


class _Copy:
    """The cache's copy of an object being stored, written as its chunks pass by."""

    def __init__(self, cache: CachedStore, key: str, path: Path, tmp: Path, out: IO[bytes]):
        self.cache = cache
        self.key = key
        self.path = path
        self.tmp = tmp
        self.out = out
        self.copying = True

    def tee(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if self.copying:
                try:
                    self.out.write(chunk)
                except OSError as exc:  # a full cache disk must not fail the store
                    log.warning("object cache: cannot write a copy of %s: %s", self.key, exc)
                    self.copying = False
            yield chunk

    def keep(self, size: int) -> None:
        """The object is stored: the copy joins the cache if it was written whole."""
        try:
            self.out.close()
        except OSError:
            self.copying = False
        if self.copying:
            self.cache._admit(self.tmp, self.path, size)
        else:
            with contextlib.suppress(OSError):
                self.tmp.unlink()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.out.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()
