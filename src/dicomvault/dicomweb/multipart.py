"""multipart/related: a streaming reader for STOW-RS bodies and a writer for WADO-RS.

The reader keeps a request's parts in memory up to a budget for the whole request and
spools each part that would pass it to disk: a 2 GB instance never sits in memory,
nor does a study of a thousand slices sent as one request (each part small, together
half a gigabyte). It refuses bodies that do not begin with the boundary or never
close it.

A part in memory is handed on as the plain `BytesIO` it is in (not a
`SpooledTemporaryFile`, whose every read, seek and tell is a Python call in front of
the real one: the header parse makes hundreds). The spooled parts of a request share
one temporary file, each read through a buffered window onto its own range: a
request of thousands of parts holds one file descriptor, not one per part (with a
descriptor per part, such a request ran a process past the usual limit of 1,024, and
sockets numbered past 1,023 break the `select()` that pynetdicom waits on).
"""

from __future__ import annotations

import io
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import IO, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from dicomvault.dicomweb.threads import in_thread

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
    in_memory: int = 0  # bytes of this request's parts held in memory
    spool: _Spool | None = None  # where the parts past the budget go, made when needed
    spooled_at: int | None = None  # where the current part begins in it, once spooled
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

    The parts stay in memory while they total at most `spool_bytes`; a part that would
    take the total past it moves to the request's spool file as it arrives. Raises
    OverflowError when more than `max_bytes` arrive, and OSError when a part cannot be
    spooled (a full disk); nothing is kept then.
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
        chunk = memoryview(data)[start:end]
        if state.spooled_at is None:  # the part is still in memory
            if state.in_memory + len(chunk) <= state.spool_bytes:
                state.in_memory += len(chunk)
                part.file.write(chunk)
                part.size += len(chunk)
                return
            if state.spool is None:
                state.spool = _Spool()
            state.in_memory -= part.size
            state.spooled_at = state.spool.end
            assert isinstance(part.file, BytesIO)
            with part.file.getbuffer() as held:
                state.spool.append(held)
            part.file.close()
        assert state.spool is not None
        state.spool.append(chunk)
        part.size += len(chunk)

    def part_end() -> None:
        part = state.current
        assert part is not None
        if state.spooled_at is None:
            part.file.seek(0)
        else:
            assert state.spool is not None
            part.file = state.spool.window(state.spooled_at, part.size)
            state.spooled_at = None
        state.parts.append(part)
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
            if state.spool is not None and state.spool.pending >= _FLUSH_BYTES:
                await in_thread(state.spool.flush)
        parser.finalize()
        if state.spool is not None:
            await in_thread(state.spool.flush)
    except MultipartParseError as exc:
        _discard(state)
        raise MultipartError(f"malformed multipart body: {exc}") from exc
    except BaseException:
        _discard(state)
        raise
    if not state.ended:
        _discard(state)
        raise MultipartError("the multipart body ends without its closing boundary")
    if state.spool is not None:
        state.spool.release()  # the windows hold it open now; the last one closes it
    return state.parts


def _discard(state: _State) -> None:
    """Close every part read so far, the one being read, and the spool."""
    close_parts(state.parts)
    if state.current is not None:
        state.current.file.close()  # its memory, or closed already when spooled
    if state.spool is not None:
        state.spool.release()


_FLUSH_BYTES = 1024 * 1024  # spooled bytes gathered before a worker thread writes them


class _Spool:
    """The temporary file a request's spooled parts go to, one after the other.

    Appended bytes are gathered and written by a worker thread a megabyte at a time
    (`flush`), not on the event loop: a write can wait while the kernel holds back
    writers with much unwritten data, and the event loop serves every request of the
    process. It stays open while the reader writes to it (one hold) and while any
    window onto it is open (one hold each); the last release closes it."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115 - closed in release
        self.fd = self._file.fileno()
        self.end = 0  # the offset the next appended byte gets
        self._gathered = bytearray()
        self._holds = 1

    @property
    def pending(self) -> int:
        """Bytes appended and not yet written."""
        return len(self._gathered)

    def append(self, data: memoryview) -> None:
        self._gathered += data
        self.end += len(data)

    def flush(self) -> None:
        """Write what was gathered (blocking: on a worker thread)."""
        offset = self.end - len(self._gathered)
        with memoryview(self._gathered) as gathered:
            done = 0
            while done < len(gathered):
                done += os.pwrite(self.fd, gathered[done:], offset + done)
        self._gathered.clear()

    def window(self, start: int, size: int) -> IO[bytes]:
        """A buffered, seekable file reading the `size` bytes at `start`."""
        self._holds += 1
        return io.BufferedReader(_Window(self, start, size), _WINDOW_BUFFER)

    def release(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            self._file.close()


# What a window reads ahead for small reads (pydicom's, of a few bytes each). Larger
# reads (the header walk's 16 KiB, the object's 1 MiB chunks) go straight to the
# file. Each window's buffer lives until the request ends: at 64 KiB, a request of
# 1,000 spooled parts kept 64 MB of them.
_WINDOW_BUFFER = 8 * 1024


class _Window(io.RawIOBase):
    """The bytes [start, start + size) of a spool as a read-only, seekable raw file."""

    def __init__(self, spool: _Spool, start: int, size: int) -> None:
        super().__init__()
        self._spool = spool
        self._start = start
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._size - self._pos))
        if count == 0:
            return 0
        got = os.preadv(self._spool.fd, [view[:count]], self._start + self._pos)
        self._pos += got
        return got

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._spool.release()
        super().close()


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
