"""The measurements: each takes a running server and returns plain numbers.

Clients are real HTTP clients (httpx, one keep-alive connection per client
thread), sending what a modality gateway or viewer would send.
"""

from __future__ import annotations

import http.client
import os
import resource
import secrets
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

__all__ = [
    "disk_speed",
    "latency",
    "percentile",
    "stow",
    "stow_file",
    "wado_study",
]

STOW_ACCEPT = "application/dicom+json"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _multipart(files: Sequence[bytes]) -> tuple[bytes, str]:
    boundary = secrets.token_hex(16)
    body = bytearray()
    for data in files:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(base: str, files: Sequence[bytes], clients: int, per_request: int) -> dict[str, float]:
    """Store `files` with `clients` parallel clients, `per_request` instances per request."""
    requests = [_multipart(files[i : i + per_request]) for i in range(0, len(files), per_request)]
    local = threading.local()
    opened: list[httpx.Client] = []  # closed at the end: no idle connection outlives the case

    def send(request: tuple[bytes, str]) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=600)
            opened.append(client)
        response = client.post(
            f"{base}/studies",
            content=request[0],
            headers={"Content-Type": request[1], "Accept": STOW_ACCEPT},
        )
        if response.status_code != 200:
            raise RuntimeError(f"STOW-RS {response.status_code}: {response.text[:300]}")

    started, cpu = time.perf_counter(), _own_cpu_s()
    try:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(send, requests))
    finally:
        for client in opened:
            client.close()
    elapsed = time.perf_counter() - started
    size = sum(len(f) for f in files)
    return {
        "instances_per_s": len(files) / elapsed,
        "mb_per_s": size / elapsed / 1e6,
        "client_cpu_s": _own_cpu_s() - cpu,
    }


def _own_cpu_s() -> float:
    """CPU seconds of this process (the clients are its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stow_file(base: str, path: Path) -> float:
    """Store one (large) file streamed from disk; seconds."""
    boundary = secrets.token_hex(16)
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> object:
        yield head
        with open(path, "rb") as f:
            while chunk := f.read(1024 * 1024):
                yield chunk
        yield tail

    started = time.perf_counter()
    response = httpx.post(
        f"{base}/studies",
        content=body(),  # type: ignore[arg-type]
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(len(head) + path.stat().st_size + len(tail)),
            "Accept": STOW_ACCEPT,
        },
        timeout=3600,
    )
    if response.status_code != 200:
        raise RuntimeError(f"STOW-RS of {path.name}: {response.status_code} {response.text[:300]}")
    return time.perf_counter() - started


def stow_one_request(base: str, files: Sequence[bytes]) -> float:
    """Store `files` in one request, its body streamed part by part (as a tool that
    uploads a whole study at once sends it); seconds."""
    boundary = secrets.token_hex(16)
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        for data in files:
            yield head
            yield data
            yield b"\r\n"
        yield tail

    length = sum(len(head) + len(data) + 2 for data in files) + len(tail)
    started = time.perf_counter()
    response = httpx.post(
        f"{base}/studies",
        content=body(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(length),
            "Accept": STOW_ACCEPT,
        },
        timeout=3600,
    )
    if response.status_code != 200:
        raise RuntimeError(f"STOW-RS of {len(files)} parts: {response.status_code}")
    return time.perf_counter() - started


def wado_study(url: str) -> dict[str, float]:
    """Retrieve a study (or instance) as stored, streamed; MB/s and bytes.

    Read with the standard library's HTTP client into one reused buffer: httpx's
    streaming read tops out at 450-650 MB/s here (a bare ASGI app sending 52 MB from
    memory reaches 2,500-4,000 MB/s with this reader and with curl, 650 with httpx),
    which would measure the client rather than the server.
    """
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=3600)
    buffer = memoryview(bytearray(1024 * 1024))
    size = 0
    try:
        started = time.perf_counter()
        connection.request("GET", parts.path, headers={"Accept": AS_STORED})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"WADO-RS {response.status}: {response.read()[:300]!r}")
        while count := response.readinto(buffer):
            size += count
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
    return {"mb_per_s": size / elapsed / 1e6, "bytes": size, "seconds": elapsed}


def latency(
    call: Callable[[httpx.Client], httpx.Response], repeat: int, warmup: int = 2
) -> dict[str, float]:
    """p50 / p95 milliseconds of `call` on one keep-alive client."""
    times = []
    with httpx.Client(timeout=600) as client:
        for index in range(warmup + repeat):
            started = time.perf_counter()
            response = call(client)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"{response.request.url}: {response.status_code}")
            if index >= warmup:
                times.append(elapsed)
    return {"p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95)}


def disk_speed(directory: Path, megabytes: int) -> dict[str, float]:
    """Sequential write (then fsync) and read of a file in `directory`, MB/s.

    The read comes after posix_fadvise(DONTNEED) has dropped the file from the page
    cache, so it measures the disk, not memory.
    """
    block = os.urandom(4 * 1024 * 1024)
    fd, name = tempfile.mkstemp(dir=directory, prefix="disk-speed-")
    try:
        started = time.perf_counter()
        for _ in range(megabytes // 4):
            os.write(fd, block)
        os.fsync(fd)
        write = megabytes / (time.perf_counter() - started)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        fd = os.open(name, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        started = time.perf_counter()
        while os.read(fd, 4 * 1024 * 1024):
            pass
        read = megabytes / (time.perf_counter() - started)
    finally:
        os.close(fd)
        os.unlink(name)
    return {"write_mb_per_s": write, "read_mb_per_s": read}


def median_of(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}
