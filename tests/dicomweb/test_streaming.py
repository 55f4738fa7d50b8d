"""stream_parts: parts read ahead on threads, sent byte-exact, with a length known ahead."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable

import pytest

from dicomvault.dicomweb.multipart import read_parts
from dicomvault.dicomweb.streaming import PartSource, content_length, started, stream_parts
from dicomvault.errors import ChecksumMismatch


class Reads:
    """Sources whose reads are recorded (part index, in the order the threads began them)."""

    def __init__(self) -> None:
        self.begun: list[int] = []
        self._lock = threading.Lock()

    def source(self, index: int, chunks: list[bytes], *, held: bool = True) -> PartSource:
        def read() -> Iterable[bytes]:
            with self._lock:
                self.begun.append(index)
            return iter(chunks)

        return PartSource(
            f"application/dicom; part={index}", read, held=held, size=sum(map(len, chunks))
        )


async def _collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 7):  # the reader must not depend on where chunks end
        yield data[start : start + 7]


def test_held_and_streamed_parts_come_back_byte_exact_in_the_announced_length() -> None:
    reads = Reads()
    bodies = [[b"first part"], [b"a ", b"streamed ", b"one"], [], [b"x" * 5000, b"y"]]
    sources = [
        reads.source(i, body, held=i != 1) for i, body in enumerate(bodies)
    ]  # part 1 is streamed chunk by chunk
    body = asyncio.run(_collect(stream_parts("XYZ", sources, depth=2)))

    assert len(body) == content_length("XYZ", sources)
    parts = asyncio.run(read_parts(_chunks(body), "XYZ", spool_bytes=1 << 20, max_bytes=1 << 20))
    assert [part.file.read() for part in parts] == [b"".join(chunks) for chunks in bodies]
    assert [part.content_type for part in parts] == ["application/dicom"] * 4
    assert [part.headers["content-type"] for part in parts] == [s.content_type for s in sources]
    assert sorted(reads.begun) == [0, 1, 2, 3]


def test_the_length_is_unknown_when_one_size_is() -> None:
    sources = [
        PartSource("application/dicom", lambda: [b"abc"], size=3),
        PartSource("application/dicom", lambda: [b"transcoded"]),
    ]
    assert content_length("B", sources) is None


async def _first_then_wait(
    stream: AsyncIterator[bytes], settled: Callable[[], bool]
) -> AsyncIterator[bytes]:
    body = await started(stream)
    for _ in range(200):  # let the read-ahead threads run as far as they are allowed
        if settled():
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)
    return body


def test_reads_go_at_most_depth_parts_ahead_and_never_past_a_streamed_part() -> None:
    async def scenario() -> tuple[list[int], list[int], list[int]]:
        reads = Reads()
        held = [reads.source(i, [b"%d" % i]) for i in range(8)]
        body = await _first_then_wait(
            stream_parts("B", held, depth=3), lambda: len(reads.begun) >= 4
        )
        ahead = list(reads.begun)  # part 0 taken, parts 1..3 being read ahead
        await _collect(body)
        all_read = sorted(reads.begun)

        reads = Reads()
        mixed = [reads.source(0, [b"a"]), reads.source(1, [b"b"], held=False)]
        mixed += [reads.source(2, [b"c"]), reads.source(3, [b"d"])]
        body = await _first_then_wait(stream_parts("B", mixed, depth=3), lambda: False)
        before_streamed = sorted(reads.begun)
        await _collect(body)
        return ahead, all_read, before_streamed

    ahead, all_read, before_streamed = asyncio.run(scenario())
    assert sorted(ahead) == [0, 1, 2, 3]
    assert all_read == list(range(8))
    # Part 0 was sent; part 1 streams when its turn comes; 2 and 3 wait until it has.
    assert before_streamed == [0]


@pytest.mark.parametrize("held", [True, False])
def test_a_damaged_first_part_fails_before_a_byte_is_sent(held: bool) -> None:
    def damaged() -> Iterable[bytes]:
        raise ChecksumMismatch("object k: block 0 differs from what was written")

    def fine() -> Iterable[bytes]:
        return [b"fine"]

    sources = [PartSource("application/dicom", damaged, held=held, size=4)]
    sources.append(PartSource("application/dicom", fine, size=4))

    async def begin() -> None:
        await started(stream_parts("B", sources))

    with pytest.raises(ChecksumMismatch):
        asyncio.run(begin())


def test_a_damaged_later_part_ends_the_stream_with_the_error() -> None:
    def damaged() -> Iterable[bytes]:
        raise ChecksumMismatch("object k: shorter than recorded")

    sources = [
        PartSource("application/dicom", lambda: [b"good"], size=4),
        PartSource("application/dicom", damaged, size=4),
    ]
    received: list[bytes] = []

    async def drain() -> None:
        async for chunk in await started(stream_parts("B", sources)):
            received.append(chunk)

    with pytest.raises(ChecksumMismatch):
        asyncio.run(drain())
    assert b"good" in received
    assert not any(b"--B--" in chunk for chunk in received)  # never closed as if complete
