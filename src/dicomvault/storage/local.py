"""Objects as files under a directory: atomic create (temp + fsync + link) and ranged reads."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from dicomvault.errors import ObjectNotFound, StorageError
from dicomvault.storage.base import CHUNK_SIZE, HashingReader, ObjectInfo, PutResult, fanout_dirs

__all__ = ["LocalStore"]

_TMP = ".tmp"
_DIR_CACHE = 70_000  # the fan-out directories, and those of keys from older layouts
# An object up to this size is hashed while the disk syncs it, not before: a CT
# slice's two hashes (whole and blocks) take about as long as its fsync. Larger
# objects are hashed as they are written, so memory stays bounded.
_HASH_WHILE_SYNCING = 8 * CHUNK_SIZE
_sync_pools: dict[int, ThreadPoolExecutor] = {}


def _sync_pool() -> ThreadPoolExecutor:
    """This process's fsync threads. `serve --processes N` forks: a pool inherited from
    the parent counts threads that do not exist in the child, and would never run the
    work it is given, so each process makes its own."""
    pid = os.getpid()
    pool = _sync_pools.get(pid)
    if pool is None:
        pool = _sync_pools[pid] = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fsync")
    return pool


class LocalStore:
    """A directory of immutable objects; keys are relative paths below `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = self.root.as_uri()
        (self.root / _TMP).mkdir(parents=True, exist_ok=True)
        self._dirs: set[Path] = set()  # directories known to exist (see _ensure_dir)
        self._fanout_ready = False

    def _path(self, key: str) -> Path:
        if not key or key.startswith(("/", _TMP)) or ".." in key.split("/"):
            raise StorageError(f"unsafe object key {key!r}")
        return self.root / key

    def put(self, key: str, chunks: Iterable[bytes]) -> PutResult:
        final = self._path(key)
        tmp = self.root / _TMP / f"{secrets.token_hex(12)}.part"
        reader = HashingReader(chunks, lag_bytes=_HASH_WHILE_SYNCING)
        try:
            if not self._fanout_ready:
                self.prepare()
            self._ensure_dir(final.parent)
            with open(tmp, "xb") as out:
                for chunk in reader:
                    out.write(chunk)
                out.flush()
                synced = _sync_pool().submit(os.fsync, out.fileno())
                try:
                    reader.finish()  # both wait on the disk or hash without the GIL
                finally:
                    synced.result()  # before the file closes under the sync
            # link() refuses to replace an existing key, which rename() would do silently.
            try:
                os.link(tmp, final)
            except FileNotFoundError:  # its directory was removed behind our back
                self._dirs.discard(final.parent)
                self._ensure_dir(final.parent)
                os.link(tmp, final)
            _fsync_dir(final.parent)
        except FileExistsError:
            raise
        except OSError as exc:  # a full disk, a read-only mount: one error type for callers
            raise StorageError(f"cannot write object {key}: {exc.strerror or exc}") from exc
        finally:
            with suppress(OSError):  # cleanup must not hide the error that brought us here
                tmp.unlink(missing_ok=True)
        return reader.result(key)

    def prepare(self) -> None:
        """Create every fan-out directory of `new_key` at once (unless the last one is
        there already): one fsync of their parent for all of them, instead of one per
        directory on the first objects that land in each. `serve` calls it at start
        (a tenth of a second, once per data directory); the first put otherwise."""
        directories = [self.root / name for name in fanout_dirs()]
        if not directories[-1].is_dir():
            self._ensure_dir(directories[0].parent)
            for directory in directories:
                directory.mkdir(exist_ok=True)
            _fsync_dir(directories[0].parent)
        self._dirs.update(directories)
        self._fanout_ready = True

    def _ensure_dir(self, directory: Path) -> None:
        """Create `directory` (and missing parents) durably: each new directory's entry is
        fsynced in its parent, so an object linked into it survives a power cut. Known
        directories are remembered, so a put into one costs no system call."""
        if directory in self._dirs:
            return
        missing = []
        probe = directory
        while probe != self.root and not probe.is_dir():
            missing.append(probe)
            probe = probe.parent
        for new in reversed(missing):
            try:
                new.mkdir()
            except FileExistsError:
                continue  # made by a concurrent put
            _fsync_dir(new.parent)
        if len(self._dirs) < _DIR_CACHE:
            self._dirs.add(directory)

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the generator below
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object {key}") from exc
        return _iter_file(handle, start, end)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as handle:
                handle.seek(start)
                return handle.read(length)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object {key}") from exc

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object {key}") from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root:
                dirnames[:] = [name for name in dirnames if name != _TMP]
            for name in filenames:
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield ObjectInfo(key=key, size=path.stat().st_size)


def _iter_file(handle: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
    with handle as f:
        f.seek(start)
        remaining = None if end is None else max(0, end - start)
        while remaining is None or remaining > 0:
            size = CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining)
            chunk = f.read(size)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
