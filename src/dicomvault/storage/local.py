"""Objects as files under a directory: atomic create (unnamed file + fsync + link) and
ranged reads.

A new object is written as an unnamed file in its final directory (`O_TMPFILE`),
synced, then given its name with `link`, which refuses to replace an existing key
(`rename` would do so silently), and the directory is synced. A crash before the link
leaves nothing behind. On a file system without unnamed files, or without `/proc`
to link one from, the object is written as a named temporary file under `.tmp/`
first, linked, and the temporary name removed: two more directory changes per
object (measured: 0.1 ms of CPU and 0.14 ms of wall time of a small instance's
ingest, about 7%).

A written object's pages leave the page cache once it is synced (`_drop_cached`).
An archive writes far more than it reads back soon, and the first read of an object
brings its pages back. Keeping them costs CPU while the cache grows: every new
cached page is memory the kernel must find and fill, where pages given back are
reused by the next object at once. On a 2-core virtual machine, storing CT
instances (525 kB) on four C-STORE associations took 0.8-1.2 ms of system CPU per
instance with the pages dropped, 1.6-2.1 ms with them kept (docs/performance.md).

Several objects at once (`put_many`, the parts of one STOW-RS request, a batch of
`dicomvault import`) are written unsynced and still unnamed, made durable together by
one `syncfs` of the file system, which writes them all out with one cache flush of the
disk, then named, and their names made durable by a second `syncfs`: two fsyncs per
object cost 120-280 us of CPU and 280-470 us of waiting per small object here, the
shared sync 40-50 us and 70-85 us (docs/performance.md). As with `put`, no name ever
points at data that is not on the disk: a crash leaves a whole object or none, never
a partial one for `dicomvault reconcile` to find. `syncfs` reports the write errors of
the file system since the descriptor it is given was last checked (Linux 5.8 and
later), so that descriptor is opened before the first object is written; on older
kernels and other systems each object is synced as `put` does.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from dicomvault.errors import ObjectNotFound, StorageError
from dicomvault.storage.base import (
    CHUNK_SIZE,
    HashingReader,
    ObjectInfo,
    PutResult,
    fanout_dirs,
    put_each,
)

__all__ = ["LocalStore", "iter_file"]

_TMP = ".tmp"
_DIR_CACHE = 70_000  # the fan-out directories, and those of keys from older layouts
# An object up to this size is hashed while the disk writes it, not before: a CT
# slice's two hashes (whole and blocks) take about as long as its fsync. Larger
# objects are hashed as they are written, so memory stays bounded.
_HASH_WHILE_WRITING = 8 * CHUNK_SIZE
# What open(O_TMPFILE) fails with where unnamed files are not supported.
_NO_UNNAMED_FILES = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}
# Unsynced objects from this size on have their writeback started as they are written:
# a CT slice (525 kB) then waited 300 us for the shared sync instead of 470, where a
# small one (9 kB) cost 77 us of CPU instead of 40 (docs/performance.md).
_EARLY_WRITEBACK = 64 * 1024
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the range's dirty pages


def _writeback_starter() -> Callable[[int], object] | None:
    """`sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)` from the C library, where there
    is one (Linux): it starts writing a file's dirty pages to the disk and returns. The
    ctypes call runs without the GIL."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return lambda fd: function(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _file_system_syncer() -> Callable[[int], int] | None:
    """`syncfs(fd)` from the C library where it reports write errors (Linux 5.8 and
    later; see the module doc), else None. The ctypes call runs without the GIL."""
    try:
        release = tuple(int(n) for n in os.uname().release.split(".")[:2])
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError, ValueError):
        return None
    if os.uname().sysname != "Linux" or release < (5, 8):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_start_writeback = _writeback_starter()
_syncfs = _file_system_syncer()
_FADVISE = getattr(os, "posix_fadvise", None)


class LocalStore:
    """A directory of immutable objects; keys are relative paths below `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = self.root.as_uri()
        (self.root / _TMP).mkdir(parents=True, exist_ok=True)
        self._dirs: set[Path] = set()  # directories known to exist (see _ensure_dir)
        self._fanout_ready = False
        # Unnamed files (see the module doc) need O_TMPFILE and /proc to link them from.
        self._unnamed = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")

    def _path(self, key: str) -> Path:
        if not key or key.startswith(("/", _TMP)) or ".." in key.split("/"):
            raise StorageError(f"unsafe object key {key!r}")
        return self.root / key

    def put(self, key: str, chunks: Iterable[bytes]) -> PutResult:
        final = self._path(key)
        reader = HashingReader(chunks, lag_bytes=_HASH_WHILE_WRITING)
        try:
            directory = self._open_dir(final.parent)
            try:
                if not (self._unnamed and self._put_unnamed(directory, final.name, reader)):
                    self._put_named(directory, final.name, reader)
                os.fsync(directory)  # the new name survives a power cut
            finally:
                os.close(directory)
        except FileExistsError:
            raise
        except OSError as exc:  # a full disk, a read-only mount: one error type for callers
            raise StorageError(f"cannot write object {key}: {exc.strerror or exc}") from exc
        return reader.result(key)

    def put_many(self, items: Sequence[tuple[str, Iterable[bytes]]]) -> list[PutResult | Exception]:
        """The objects written unsynced, synced by one `syncfs`, then named, and the
        names synced by another (module doc)."""
        syncfs = _syncfs
        if len(items) < 2 or syncfs is None:
            return put_each(self, items)  # for one object, its two fsyncs cost less
        # Opened first: syncfs reports the write errors since (see the module doc).
        try:
            root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return put_each(self, items)  # each put reports what is wrong
        outcomes: list[_Unnamed | Exception] = []
        try:
            for key, chunks in items:
                try:
                    outcomes.append(self._write_unnamed(key, chunks))
                except Exception as exc:  # noqa: BLE001 - one object's failure is its own
                    outcomes.append(exc)
            return self._name_synced(syncfs, root, outcomes)
        finally:
            for outcome in outcomes:
                if isinstance(outcome, _Unnamed):
                    outcome.close()
            os.close(root)

    def _name_synced(
        self, syncfs: Callable[[int], int], root: int, outcomes: list[_Unnamed | Exception]
    ) -> list[PutResult | Exception]:
        """Sync the written objects, name them, sync the names: each one's result."""
        written = [o for o in outcomes if isinstance(o, _Unnamed)]
        if written and syncfs(root) != 0:
            failure = _sync_failure(len(written))
            return [failure if isinstance(o, _Unnamed) else o for o in outcomes]
        results: list[PutResult | Exception] = []
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                results.append(outcome)
                continue
            try:
                outcome.link(root)
            except FileExistsError as exc:
                results.append(exc)
            except OSError as exc:
                key = outcome.result.key
                results.append(StorageError(f"cannot name object {key}: {exc.strerror or exc}"))
            else:
                results.append(outcome.result)
        named = [r.key for r in results if isinstance(r, PutResult)]
        if named and syncfs(root) != 0:
            failure = _sync_failure(len(named))
            for key in named:
                with suppress(OSError):
                    self.delete(key)
            return [failure if isinstance(r, PutResult) else r for r in results]
        return results

    def _write_unnamed(self, key: str, chunks: Iterable[bytes]) -> _Unnamed:
        """A new object written, unsynced and without its name yet (`put_many`). Only
        its file stays open: a batch holds one descriptor per object."""
        final = self._path(key)
        reader = HashingReader(chunks, lag_bytes=_HASH_WHILE_WRITING)
        try:
            directory = self._open_dir(final.parent)
            try:
                unnamed = _Unnamed(final, *self._new_file(directory))
            finally:
                os.close(directory)
            try:
                with open(unnamed.fd, "wb", closefd=False) as out:
                    _write(out, reader, sync=False)
                unnamed.result = reader.result(key)
            except BaseException:
                unnamed.close()
                raise
        except OSError as exc:
            raise StorageError(f"cannot write object {key}: {exc.strerror or exc}") from exc
        return unnamed

    def _new_file(self, directory: int) -> tuple[int, Path | None]:
        """A new empty file to write an object in: unnamed in `directory` where the file
        system has unnamed files (None for its temporary name), else under `.tmp/`."""
        if self._unnamed:
            try:
                return os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o644, dir_fd=directory), None
            except OSError as exc:
                if exc.errno not in _NO_UNNAMED_FILES:
                    raise
                self._unnamed = False
        tmp = self.root / _TMP / f"{secrets.token_hex(12)}.part"
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), tmp

    def _open_dir(self, path: Path) -> int:
        """The directory an object goes in, opened (made first if need be; the fan-out
        directories all at once, on the first object: `prepare`)."""
        if not self._fanout_ready:
            self.prepare()
        self._ensure_dir(path)
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:  # removed behind our back since we made it
            self._dirs.discard(path)
            self._ensure_dir(path)
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY)

    def _put_unnamed(self, directory: int, name: str, reader: HashingReader) -> bool:
        """Write and sync an unnamed file in `directory`, then link it as `name`; False
        (nothing written) when the file system has no unnamed files."""
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o644, dir_fd=directory)
        except OSError as exc:
            if exc.errno not in _NO_UNNAMED_FILES:
                raise
            self._unnamed = False
            return False
        with open(fd, "wb") as out:
            _write(out, reader, sync=True)
            # The /proc path names the open file; following it links the file itself.
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=directory, follow_symlinks=True)
        return True

    def _put_named(self, directory: int, name: str, reader: HashingReader) -> None:
        """Write and sync a named temporary file under `.tmp/`, link it as `name`, and
        remove the temporary name (also when anything failed)."""
        tmp = self.root / _TMP / f"{secrets.token_hex(12)}.part"
        try:
            with open(tmp, "xb") as out:
                _write(out, reader, sync=True)
            os.link(tmp, name, dst_dir_fd=directory)
        finally:
            with suppress(OSError):  # cleanup must not hide the error that brought us here
                tmp.unlink(missing_ok=True)

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
        return iter_file(handle, start, end)

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


class _Unnamed:
    """An object of `put_many` written but not named yet: its open file (unnamed, or
    with a temporary name under `.tmp/`) and the path it will be named."""

    def __init__(self, final: Path, fd: int, tmp: Path | None) -> None:
        self.final, self.fd, self.tmp = final, fd, tmp
        self.result = PutResult("", 0, "")  # set once the object is written

    def link(self, some_dir: int) -> None:
        """Give the (synced) object its name; its pages are then given back.

        `some_dir`: any open directory. Python calls `linkat` (which can follow the
        /proc link to the file itself) only when it is given a directory descriptor,
        else `link`, which would link the /proc link; the absolute source path makes
        the kernel ignore which directory it is."""
        if self.tmp is None:
            # The /proc path names the open file; following it links the file itself.
            source = f"/proc/self/fd/{self.fd}"
            os.link(source, self.final, src_dir_fd=some_dir, follow_symlinks=True)
        else:
            os.link(self.tmp, self.final)
        _drop_cached(self.fd)

    def close(self) -> None:
        """Close its file and remove its temporary name, if any."""
        os.close(self.fd)
        if self.tmp is not None:
            with suppress(OSError):
                self.tmp.unlink(missing_ok=True)


def _sync_failure(count: int) -> StorageError:
    """The error of every object of a batch whose `syncfs` failed (errno just set)."""
    return StorageError(
        f"cannot make {count} new objects durable: {os.strerror(ctypes.get_errno())}"
    )


def iter_file(handle: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
    """Bytes [start, end) of an open file in chunks of CHUNK_SIZE (block-aligned from a
    block-aligned start, so `verified_range` checks whole chunks without a copy); the
    file is closed when the iteration ends."""
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


def _write(out: BinaryIO, reader: HashingReader, sync: bool) -> None:
    """Write every chunk of `reader` to `out` and (`sync`) sync it. The chunks still to
    hash (`lag_bytes`) are hashed while the disk writes: the writeback is started first
    (`sync_file_range`, a hint: `fsync` is what makes the object durable), so the hashing
    and the disk overlap without handing the fsync to another thread. Such a hand-off
    cost two thread wake-ups per object; with four C-STORE associations on two
    processes the server spent 5.4-6.8 ms of CPU per CT instance with it, 4.3-5.1
    without (docs/performance.md). Unsynced (`put_many`), the writeback is started
    only for a large object: a small one's costs more CPU than the shared sync saves."""
    for chunk in reader:
        out.write(chunk)
    out.flush()
    if _start_writeback is not None and (sync or reader.size >= _EARLY_WRITEBACK):
        _start_writeback(out.fileno())
    reader.finish()
    if sync:
        os.fsync(out.fileno())
        _drop_cached(out.fileno())


def _drop_cached(fd: int) -> None:
    """Let the kernel drop the synced (clean) pages of the file `fd` from the page cache
    (see the module doc). Advice only: a read brings them back; where there is no such
    call, or the file system refuses the advice, the object is stored all the same."""
    if _FADVISE is not None:
        with suppress(OSError):
            _FADVISE(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
