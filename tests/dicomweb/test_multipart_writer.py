"""write_parts joins the multipart framing to body chunks; the body must stay byte-exact.
read_parts keeps a request's parts in memory up to a budget and spools the rest to
one file per request."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import threading
from collections.abc import AsyncIterator, Iterable
from io import BytesIO

import pytest

from dicomvault.dicomweb import multipart
from dicomvault.dicomweb.multipart import MultipartError, close_parts, read_parts, write_parts


async def _chunks(data: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in data:
        yield chunk


def test_parts_of_one_many_and_no_chunks_come_back_as_written() -> None:
    parts = [
        ("application/dicom", [b"one chunk"]),
        ("application/dicom", [b"first ", b"second ", b"third"]),
        ("application/octet-stream", []),
    ]
    written = list(write_parts("XYZ", parts))
    assert b"".join(written) == (
        b"--XYZ\r\nContent-Type: application/dicom\r\n\r\none chunk\r\n"
        b"--XYZ\r\nContent-Type: application/dicom\r\n\r\nfirst second third\r\n"
        b"--XYZ\r\nContent-Type: application/octet-stream\r\n\r\n\r\n"
        b"--XYZ--\r\n"
    )
    # One chunk per body chunk plus the closing one: the framing travels with them.
    assert len(written) == 1 + 3 + 1
    read = asyncio.run(read_parts(_chunks(written), "XYZ", spool_bytes=1024, max_bytes=1 << 20))
    assert [part.file.read() for part in read] == [b"one chunk", b"first second third", b""]
    assert [part.content_type for part in read] == [t for t, _ in parts]


def test_parts_past_the_spool_size_are_read_back_from_a_temporary_file() -> None:
    """A part that fits the request's budget stays in memory; one that would pass it
    moves to the spool as it grows past it (whatever the chunks), and reads back the
    same; with 0, every part with a byte in it goes to disk."""
    small, large = b"s" * 1000, bytes(range(256)) * 40  # 10,240 bytes
    body = b"".join(write_parts("XYZ", [("application/dicom", [small]), ("a/b", [large])]))
    pieces = [body[i : i + 333] for i in range(0, len(body), 333)]
    for spool, on_disk in ((4096, [False, True]), (0, [True, True])):
        read = asyncio.run(read_parts(_chunks(pieces), "XYZ", spool_bytes=spool, max_bytes=1 << 20))
        assert [not isinstance(part.file, BytesIO) for part in read] == on_disk
        assert [part.file.read() for part in read] == [small, large]
        assert [part.size for part in read] == [len(small), len(large)]
        close_parts(read)


def test_the_budget_is_for_the_whole_request() -> None:
    """Parts each under the budget but together over it: the ones that would pass it
    are spooled, a later one that fits stays in memory; every one reads back whole,
    also read in turns and after seeking (as the ingest reads a batch)."""
    sizes = [1000, 1000, 3000, 500, 2600]
    bodies = [bytes([n]) * size for n, size in enumerate(sizes)]
    body = b"".join(write_parts("XYZ", [("application/dicom", [b]) for b in bodies]))
    pieces = [body[i : i + 700] for i in range(0, len(body), 700)]
    read = asyncio.run(read_parts(_chunks(pieces), "XYZ", spool_bytes=4096, max_bytes=1 << 20))
    try:
        assert [isinstance(part.file, BytesIO) for part in read] == [
            True, True, False, True, False
        ]  # fmt: skip
        heads = [part.file.read(10) for part in read]  # each file keeps its own position
        assert heads == [b[:10] for b in bodies]
        assert [part.file.read() for part in read] == [b[10:] for b in bodies]
        spooled = read[4].file
        assert spooled.seek(0, io.SEEK_END) == 2600
        assert spooled.tell() == 2600
        assert spooled.read() == b""
        spooled.seek(2590)
        assert spooled.read(100) == bodies[4][2590:]
        spooled.seek(0)
        assert spooled.read() == bodies[4]
    finally:
        close_parts(read)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open descriptors")
def test_thousands_of_spooled_parts_hold_one_descriptor() -> None:
    """A request of 3,000 spooled parts holds one file open, not 3,000 (the usual limit
    is 1,024 a process), until the last of its parts is closed."""
    bodies = [n.to_bytes(2, "big") * 50 for n in range(3000)]
    body = b"".join(write_parts("XYZ", [("application/dicom", [b]) for b in bodies]))
    before = _open_descriptors()
    read = asyncio.run(read_parts(_chunks([body]), "XYZ", spool_bytes=0, max_bytes=1 << 24))
    assert _open_descriptors() == before + 1
    assert [part.file.read() for part in read] == bodies
    close_parts(read[:-1])
    assert _open_descriptors() == before + 1  # the last part still reads from it
    assert read[-1].file.seek(0) == 0
    assert read[-1].file.read() == bodies[-1]
    close_parts(read[-1:])
    assert _open_descriptors() == before


def test_the_spool_is_written_off_the_event_loop_a_megabyte_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write to the spool can wait on the disk: none runs on the event loop's thread,
    and 3 MB arriving in 64 KiB chunks take a handful of writes, not fifty."""
    writers: list[int] = []
    pwrite = os.pwrite

    def recorded(fd: int, data: bytes, offset: int) -> int:
        writers.append(threading.get_ident())
        return pwrite(fd, data, offset)

    monkeypatch.setattr(multipart.os, "pwrite", recorded)
    big = os.urandom(3 * 1024 * 1024)
    body = b"".join(write_parts("XYZ", [("application/dicom", [big])]))
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    read = asyncio.run(read_parts(_chunks(pieces), "XYZ", spool_bytes=1024, max_bytes=1 << 24))
    try:
        assert read[0].file.read() == big
    finally:
        close_parts(read)
    assert 3 <= len(writers) <= 5
    assert threading.get_ident() not in writers  # asyncio.run's loop runs on this thread


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open descriptors")
def test_a_body_that_breaks_off_after_spooling_leaves_nothing_open() -> None:
    body = b"".join(write_parts("XYZ", [("application/dicom", [b"x" * 5000])] * 3))
    before = _open_descriptors()
    with pytest.raises(MultipartError, match="closing boundary"):
        asyncio.run(read_parts(_chunks([body[:-200]]), "XYZ", spool_bytes=0, max_bytes=1 << 20))
    assert _open_descriptors() == before


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open descriptors")
def test_a_spool_that_cannot_be_written_is_an_os_error_and_leaves_nothing_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk while spooling: the OSError reaches the caller (STOW-RS answers 503),
    and the spool is closed."""

    def full(_fd: int, _data: object, _offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    body = b"".join(write_parts("XYZ", [("application/dicom", [b"x" * 5000])] * 2))
    before = _open_descriptors()
    monkeypatch.setattr(multipart.os, "pwrite", full)
    with pytest.raises(OSError, match="No space left"):
        asyncio.run(read_parts(_chunks([body]), "XYZ", spool_bytes=6000, max_bytes=1 << 20))
    assert _open_descriptors() == before
