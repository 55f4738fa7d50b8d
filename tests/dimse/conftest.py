"""A live DIMSE node on the `archive` fixture, on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dicomvault.archive import Archive
from dicomvault.dimse import DimseServer


@contextmanager
def running_node(
    archive: Archive, port: int | None = 0, tls_port: int | None = None
) -> Iterator[DimseServer]:
    """A DICOM node on `archive` on loopback (port 0: a free one), stopped afterwards."""
    server = DimseServer(archive, "127.0.0.1", port, tls_port=tls_port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dimse(archive: Archive) -> Iterator[DimseServer]:
    with running_node(archive) as server:
        yield server
