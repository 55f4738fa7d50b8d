"""multipart/related: a streaming reader for STOW-RS bodies and a writer for WADO-RS.

The reader keeps each part in memory up to a threshold and moves it to a temporary
file past it, so a 2 GB instance never sits in memory, and refuses bodies that do
not begin with the boundary or never close it. A part is handed on as the plain
`BytesIO` or file it is in (not a `SpooledTemporaryFile`, whose every read, seek and
tell is a Python call in front of the real one: the header parse makes hundreds).
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

__all__ = [
    "MultipartError",
    "Part",
    "closing_delimiter",
    "multipart_length",
    "part_head",
    "part_tail",
    "read_parts",
    "write_parts",
]


class MultipartError(ValueError):
    """The body is not well-formed multipart."""


@dataclass
class Part:
    headers: dict[str, str]
    file: IO[bytes]
    size: int = 0

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass
class _State:
    spool_bytes: int
    parts: list[Part] = field(default_factory=list)
    field_name: bytearray = field(default_factory=bytearray)
    field_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    current: Part | None = None
    ended: bool = False


async def read_parts(
    chunks: AsyncIterator[bytes], boundary: str, *, spool_bytes: int, max_bytes: int
) -> list[Part]:
    """Every part of a multipart body, each spooled and rewound; MultipartError if malformed.

    Raises OverflowError when more than `max_bytes` arrive.
    """
    state = _State(spool_bytes=spool_bytes)

    def part_begin() -> None:
        state.headers = {}

    def header_field(data: bytes, start: int, end: int) -> None:
        state.field_name += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        state.field_value += data[start:end]

    def header_end() -> None:
        name = state.field_name.decode("latin-1").strip().lower()
        state.headers[name] = state.field_value.decode("latin-1").strip()
        state.field_name.clear()
        state.field_value.clear()

    def headers_finished() -> None:
        state.current = Part(headers=state.headers, file=BytesIO())

    def part_data(data: bytes, start: int, end: int) -> None:
        part = state.current
        assert part is not None
        if part.size + end - start > state.spool_bytes and isinstance(part.file, BytesIO):
            part.file = _to_disk(part.file)
        part.file.write(memoryview(data)[start:end])
        part.size += end - start

    def part_end() -> None:
        assert state.current is not None
        state.current.file.seek(0)
        state.parts.append(state.current)
        state.current = None

    def end() -> None:
        state.ended = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": part_begin,
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_headers_finished": headers_finished,
            "on_part_data": part_data,
            "on_part_end": part_end,
            "on_end": end,
        },
        max_header_count=32,
    )
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_bytes:
                raise OverflowError(f"the body exceeds the {max_bytes}-byte limit")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        close_parts(state.parts)
        raise MultipartError(f"malformed multipart body: {exc}") from exc
    except BaseException:
        close_parts(state.parts)
        raise
    if not state.ended:
        close_parts(state.parts)
        if state.current is not None:
            state.current.file.close()
        raise MultipartError("the multipart body ends without its closing boundary")
    return state.parts


def _to_disk(memory: BytesIO) -> IO[bytes]:
    """A temporary file holding what `memory` held, positioned at its end."""
    disk = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the Part
    with memory.getbuffer() as held:
        disk.write(held)
    memory.close()
    return disk


def close_parts(parts: Iterable[Part]) -> None:
    for part in parts:
        part.file.close()


def new_boundary() -> str:
    return f"dicomvault-{secrets.token_hex(12)}"


def part_head(boundary: str, content_type: str) -> bytes:
    """The delimiter and headers that open a part (PS3.18 8.6.1.2, RFC 2046 5.1.1)."""
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()


def part_tail() -> bytes:
    """What closes a part's body: the CRLF that belongs to the next delimiter."""
    return b"\r\n"


def closing_delimiter(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


def multipart_length(boundary: str, parts: Iterable[tuple[str, int]]) -> int:
    """The exact byte length of a body made of (content type, body size) parts."""
    framing = len(part_head(boundary, "")) + len(part_tail())
    return sum(framing + len(content_type.encode()) + size for content_type, size in parts) + len(
        closing_delimiter(boundary)
    )


def write_parts(boundary: str, parts: Iterable[tuple[str, Iterable[bytes]]]) -> Iterator[bytes]:
    """Encode (content type, body chunks) pairs as a multipart/related body.

    The framing (boundary, part headers, CRLF) goes out joined to the next body
    chunk rather than as chunks of its own: a streaming response fetches every
    chunk of a sync iterator on a worker thread and hands it to the event loop, and
    those hand-offs (three per instance otherwise, one now) cost more than the copy
    that joining the framing to a chunk makes.
    """
    pending = b""
    for content_type, body in parts:
        pending += part_head(boundary, content_type)
        for chunk in body:
            if pending:
                chunk, pending = pending + chunk, b""
            yield chunk
        pending += part_tail()
    yield pending + closing_delimiter(boundary)
