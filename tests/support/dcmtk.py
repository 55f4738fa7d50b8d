"""dcmtk's real tools as DICOM peers: run one, or keep a `storescp` listening."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pynetdicom import AE

from tests.support.live import free_port

__all__ = ["TOOLS", "dcmtk", "storescp"]

# Debian's dcmtk leaves Nagle's algorithm on unless told: each message then waits for a
# delayed ACK, which makes the tools slow, not wrong.
TOOLS = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(tool: str, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool (dcmtk's own binary, not pynetdicom's script of the same name)."""
    return subprocess.run(
        [f"/usr/bin/{tool}", *map(str, args)],
        env=TOOLS,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def storescp(
    out: Path, ae_title: str = "DEST", *, port: int | None = None, tls: list[str] | None = None
) -> Iterator[int]:
    """A dcmtk storescp writing what it receives, bit for bit, under `out`; its port.
    `tls`: storescp's TLS options (it then speaks DICOM TLS only)."""
    out.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [
            "/usr/bin/storescp",
            "-aet",
            ae_title,
            "+xa",
            "+B",
            "-od",
            str(out),
            *(tls or []),
            str(port),
        ],
        env=TOOLS,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        if tls:
            _wait_port(port)  # no DICOM probe in cleartext on a TLS port
        else:
            _wait_listening(port, ae_title)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def _wait_listening(port: int, ae_title: str, timeout: float = 10) -> None:
    ae = AE()
    ae.add_requested_context("1.2.840.10008.1.1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.1)
    raise AssertionError(f"storescp did not listen on {port}")
