"""Fixtures: every archive-level test runs on both backend pairs.

    sqlite   SQLite file + local directory (the embedded defaults)
    postgres PostgreSQL (a throw-away server) + S3 (a moto server on loopback)

DICOMVAULT_TEST_BACKENDS=sqlite limits a local run to the embedded pair; CI runs both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.index.db import Database
from dicomvault.index.schema import metadata
from dicomvault.storage.local import LocalStore
from tests.support.live import running_server
from tests.support.pki import make_pki
from tests.support.postgres import TempPostgres, find_bin
from tests.support.s3 import S3_KEY, S3_SECRET, new_bucket

BACKENDS = [
    b.strip() for b in os.environ.get("DICOMVAULT_TEST_BACKENDS", "sqlite,postgres").split(",")
]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    existing = os.environ.get("DICOMVAULT_TEST_DATABASE_URL")
    if existing:
        yield existing
        return
    bindir = find_bin()
    if bindir is None:
        pytest.fail(
            "PostgreSQL is not installed: install Debian's `postgresql` package, set "
            "DICOMVAULT_TEST_DATABASE_URL, or run with DICOMVAULT_TEST_BACKENDS=sqlite"
        )
    server = TempPostgres(bindir)
    url = server.start()
    try:
        db = Database(url)
        from dicomvault.index import migrate

        migrate.upgrade(db)
        db.dispose()
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    existing = os.environ.get("DICOMVAULT_TEST_S3_ENDPOINT")
    if existing:
        yield existing
        return
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _clean_postgres(url: str) -> None:
    db = Database(url)
    try:
        with db.write() as conn:
            names = ", ".join(t.name for t in metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        db.dispose()


@pytest.fixture(autouse=True)
def _fanout_on_demand(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk stores make each fan-out directory when an object first needs it.

    A fresh archive's first put otherwise makes all 4,096 at once: the right trade
    for a data directory that lives for years, but up to a second and a half here for
    each of hundreds of archives that hold a few objects (a third of the DICOMweb
    tests' time was spent making them). Directories made on demand go through the
    store's own code, the path a store takes for keys of older layouts. Tests about
    the fan-out itself are marked `fanout` and get the real `prepare`.
    """
    if request.node.get_closest_marker("fanout") is None:
        monkeypatch.setattr(LocalStore, "prepare", _prepare_nothing)


def _prepare_nothing(store: LocalStore) -> None:
    store._fanout_ready = True


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings for a fresh, empty archive on the backend pair under test."""
    if backend == "sqlite":
        yield Settings(data_dir=tmp_path / "data")
        return
    pg_url: str = request.getfixturevalue("postgres_url")
    endpoint: str = request.getfixturevalue("s3_endpoint")
    bucket = new_bucket(endpoint)
    _clean_postgres(pg_url)
    yield Settings(
        data_dir=tmp_path / "data",
        database_url=pg_url,
        storage_url=f"s3://{bucket}/archive",
        s3_endpoint_url=endpoint,
        s3_access_key_id=S3_KEY,
        s3_secret_access_key=S3_SECRET,  # type: ignore[arg-type]
    )


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    opened = Archive.open(settings)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def server(archive: Archive) -> Iterator[str]:
    """Base URL of a live uvicorn server on the archive (DICOMweb at /dicom-web)."""
    with running_server(archive) as url:
        yield url


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """ca.pem, server.pem/.key and client.pem/.key (for 127.0.0.1) under one directory."""
    return make_pki(tmp_path / "pki")
