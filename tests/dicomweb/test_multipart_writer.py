"""write_parts joins the multipart framing to body chunks; the body must stay byte-exact."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from io import BytesIO

from dicomvault.dicomweb.multipart import read_parts, write_parts


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
    """A part up to `spool_bytes` stays in memory; a larger one moves to a temporary file
    as it grows past it (whatever the chunks), and reads back the same; with 0, every
    part with a byte in it goes to disk."""
    small, large = b"s" * 1000, bytes(range(256)) * 40  # 10,240 bytes
    body = b"".join(write_parts("XYZ", [("application/dicom", [small]), ("a/b", [large])]))
    pieces = [body[i : i + 333] for i in range(0, len(body), 333)]
    for spool, on_disk in ((4096, [False, True]), (0, [True, True])):
        read = asyncio.run(read_parts(_chunks(pieces), "XYZ", spool_bytes=spool, max_bytes=1 << 20))
        assert [not isinstance(part.file, BytesIO) for part in read] == on_disk
        assert [part.file.read() for part in read] == [small, large]
        assert [part.size for part in read] == [len(small), len(large)]
        for part, disk in zip(read, on_disk, strict=True):
            if disk:
                assert part.file.fileno() >= 0
            part.file.close()
