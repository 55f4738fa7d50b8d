"""Backend pairs for dicomvault: SQLite + disk (embedded default), PostgreSQL + S3.

PostgreSQL is a throw-away Debian server with durable settings (fsync on, as in
production); S3 is a moto server in its own process, an emulator on loopback:
its figures say what the archive does over the S3 protocol, not what AWS does.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.support.postgres import TempPostgres, find_bin
from tests.support.s3 import S3_KEY, S3_SECRET, new_bucket

__all__ = ["BACKENDS", "Backend", "backend"]

BACKENDS = ("sqlite", "postgres-s3")


@dataclass(frozen=True)
class Backend:
    env: dict[str, str]  # DICOMVAULT_* settings that point the server at it
    services: list[int] = field(default_factory=list)  # pids of its processes (CPU figures)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _moto() -> Iterator[tuple[str, int]]:
    port = _port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield endpoint, process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def backend(name: str) -> Iterator[Backend]:
    """Backend `name` with its services running: the settings to use it, their pids."""
    if name == "sqlite":
        yield Backend({})
        return
    bindir = find_bin()
    if bindir is None:
        raise SystemExit("postgres-s3 needs PostgreSQL: sudo apt-get install postgresql")
    server = TempPostgres(bindir, durable=True)
    url = server.start()
    try:
        with _moto() as (endpoint, moto_pid):
            env = {
                "DICOMVAULT_DATABASE_URL": url,
                "DICOMVAULT_STORAGE_URL": f"s3://{new_bucket(endpoint, 'bench')}/archive",
                "DICOMVAULT_S3_ENDPOINT_URL": endpoint,
                "DICOMVAULT_S3_ACCESS_KEY_ID": S3_KEY,
                "DICOMVAULT_S3_SECRET_ACCESS_KEY": S3_SECRET,
            }
            yield Backend(env, [server.pid, moto_pid])
    finally:
        server.stop()
