"""The files a measurement leaves (a server's storage, storescu's inputs), removed when a
round of measurements is over rather than the moment each is done with.

Deleting many files makes the files created in the next minutes slower on some file
systems. ext4 without a journal (the root file system of the machines this benchmark
was first run on) checks, for each new inode, whether the free ones it passes were
freed recently and skips those (`recently_deleted` in its inode allocator), so after
one server's tens of thousands of files are removed, every file the next server
creates nearby costs up to about half a millisecond more of kernel time: a quarter of
dicomvault's CPU per small instance in a profile of STOW-RS, and the same tax for
Orthanc, which also writes one file per instance. Removing nothing until a round is
over keeps that cost out of the figures of the server measured next.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["deferred", "remove"]

_pending: list[Path] | None = None


@contextmanager
def deferred() -> Iterator[None]:
    """Within this block `remove` only notes its paths; they go when the block ends."""
    global _pending
    outer, _pending = _pending, []
    try:
        yield
    finally:
        paths, _pending = _pending, outer
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)


def remove(path: Path) -> None:
    """Remove the directory `path` now, or when the enclosing `deferred` block ends."""
    if _pending is None:
        shutil.rmtree(path, ignore_errors=True)
    else:
        _pending.append(path)
