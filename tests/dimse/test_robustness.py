"""A misbehaving peer cannot lock out a real modality: stalled half-PDUs, a flood from one
address, an oversized PDU, HTTP sent to the DICOM port. After each, C-ECHO still answers
within 2 s (the requirement)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dicomvault.archive import Archive
from dicomvault.dimse import DimseServer
from tests.dimse.conftest import running_node
from tests.support.dcmtk import dcmtk


def _echo_seconds(port: int) -> float:
    started = time.monotonic()
    done = dcmtk("echoscu", "-to", "5", "-aec", "DICOMVAULT", "127.0.0.1", port, timeout=10)
    assert done.returncode == 0, done.stdout + done.stderr
    return time.monotonic() - started


@contextmanager
def _stalled(port: int, count: int, first_bytes: bytes) -> Iterator[list[socket.socket]]:
    """`count` connections that send `first_bytes` (part of a PDU) and then nothing."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(first_bytes)
            sockets.append(sock)
        time.sleep(0.2)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("count", [10, 40])
def test_stalled_half_pdus_do_not_lock_out_a_modality(dimse: DimseServer, count: int) -> None:
    # An A-ASSOCIATE-RQ header announcing 200 bytes, then silence.
    with _stalled(dimse.port, count, b"\x01\x00\x00\x00\x00\xc8\x00\x01") as sockets:
        assert _echo_seconds(dimse.port) < 2.0
        if count > 16:  # over the per-address cap: the oldest waiting ones were dropped
            time.sleep(0.5)
            assert sum(_closed_by_peer(s, 0.01) for s in sockets) >= count - 16


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_silent_connection_is_closed_after_the_acse_timeout(archive: Archive) -> None:
    archive.settings = archive.settings.model_copy(update={"dicom_acse_timeout": 0.5})
    with running_node(archive) as server, _stalled(server.port, 1, b"\x01\x00") as (sock,):  # type: ignore[misc]
        assert _closed_by_peer(sock, 5.0)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_oversized_pdu_is_refused_before_its_body_is_read(dimse: DimseServer) -> None:
    # A P-DATA-TF announcing 1 GiB: the node must not try to read (or allocate) it.
    with _stalled(dimse.port, 1, b"\x04\x00" + (1 << 30).to_bytes(4, "big")) as (sock,):  # type: ignore[misc]
        assert _closed_by_peer(sock, 2.0)
    assert _echo_seconds(dimse.port) < 2.0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_http_sent_to_the_dicom_port_is_dropped(dimse: DimseServer) -> None:
    request = b"GET / HTTP/1.1\r\nHost: archive\r\nUser-Agent: scanner\r\n\r\n"
    with _stalled(dimse.port, 1, request) as (sock,):  # type: ignore[misc]
        assert _closed_by_peer(sock, 2.0)
    assert _echo_seconds(dimse.port) < 2.0
