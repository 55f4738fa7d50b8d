"""write_parts joins the multipart framing to body chunks; the body must stay byte-exact."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

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
