"""A live DIMSE node on the `archive` fixture, on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dicomvault.archive import Archive
from dicomvault.dimse import DimseServer


@pytest.fixture
def dimse(archive: Archive) -> Iterator[DimseServer]:
    server = DimseServer(archive, "127.0.0.1", 0)
    server.start()
    try:
        yield server
    finally:
        server.stop()
