"""The servers under test, each started on loopback with its own temporary storage.

dicomvault runs as `dicomvault serve` from the same Python environment; Orthanc
as Debian's `Orthanc` binary with its DICOMweb plugin and a generated config.
Both are measured as whole processes (peak RSS from /proc).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks import leftovers

__all__ = [
    "Server",
    "dicomvault_server",
    "orthanc_available",
    "orthanc_postgres_available",
    "orthanc_server",
]

ORTHANC = os.environ.get("ORTHANC_BIN", "/usr/sbin/Orthanc")
DICOMVAULT = str(Path(sys.executable).with_name("dicomvault"))  # this environment's command
ORTHANC_PLUGINS = os.environ.get("ORTHANC_PLUGINS", "/usr/share/orthanc/plugins")
PG_INDEX_PLUGIN = "libOrthancPostgreSQLIndex.so"


@dataclass
class Server:
    name: str
    dicomweb: str  # base URL of the DICOMweb root
    process: subprocess.Popen[bytes]
    dicom_port: int | None = None  # DIMSE port, when the server has one
    ae_title: str = ""
    services: list[int] = field(default_factory=list)  # its database's, S3 endpoint's pids

    def peak_rss_mb(self) -> float:
        """VmHWM of the server process: its peak resident memory since it started."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited at start:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server did not answer {url} within 60 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def dicomvault_server(env: dict[str, str], processes: int = 1) -> Iterator[Server]:
    """`dicomvault serve` on a free port, with `env` (DICOMVAULT_* backend settings) and
    `processes` server processes."""
    work = Path(tempfile.mkdtemp(prefix="bench-dv-"))
    port = free_port()
    log = work / "server.log"
    command = [DICOMVAULT, "serve", "--http-port", str(port), "--log-level", "warning"]
    if processes > 1:
        command += ["--processes", str(processes)]
    dicom_port = free_port() if has_dimse() else None
    if dicom_port is not None:
        command += ["--dicom-port", str(dicom_port)]
    full_env = {**os.environ, "DICOMVAULT_DATA_DIR": str(work / "data"), **env}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}/health", process, log)
        yield Server(
            "dicomvault", f"http://127.0.0.1:{port}/dicom-web", process, dicom_port, "DICOMVAULT"
        )
    finally:
        _stop(process)
        leftovers.remove(work)


def has_dimse() -> bool:
    """Whether this dicomvault has a DIMSE door (`serve --dicom-port`)."""
    help_text = subprocess.run(
        [DICOMVAULT, "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return "--dicom-port" in help_text


def orthanc_available() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed, else how to get them."""
    if not Path(ORTHANC).exists() or not Path(ORTHANC_PLUGINS, "libOrthancDicomWeb.so").exists():
        return "Orthanc is not installed: sudo apt-get install orthanc orthanc-dicomweb"
    return None


def orthanc_postgres_available() -> bool:
    """Whether Orthanc's PostgreSQL index plugin (Debian `orthanc-postgresql`) is installed."""
    return Path(ORTHANC_PLUGINS, PG_INDEX_PLUGIN).exists()


@contextmanager
def orthanc_server(postgres_port: int | None = None) -> Iterator[Server]:
    """Orthanc with disk storage in a temp dir, DICOMweb enabled; its index in SQLite (its
    default) or, given `postgres_port`, in that PostgreSQL through its index plugin."""
    work = Path(tempfile.mkdtemp(prefix="bench-orthanc-"))
    port, dicom_port = free_port(), free_port()
    plugins = [str(Path(ORTHANC_PLUGINS, "libOrthancDicomWeb.so"))]
    config: dict[str, object] = {
        "Name": "bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "storage"),
        "HttpPort": port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageCompression": False,
        "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    if postgres_port is not None:
        plugins.append(str(Path(ORTHANC_PLUGINS, PG_INDEX_PLUGIN)))
        config["PostgreSQL"] = {
            "EnableIndex": True,
            "EnableStorage": False,  # files on disk, as Orthanc is usually deployed
            "Host": "127.0.0.1",
            "Port": postgres_port,
            "Database": "postgres",
            "Username": "postgres",
            "Password": "",
            "Lock": False,
        }
    (work / "orthanc.json").write_text(json.dumps(config))
    log = work / "orthanc.log"
    with open(log, "wb") as out:
        # Orthanc's DICOM side is dcmtk, which leaves Nagle's algorithm on unless told:
        # each C-STORE response would then wait for a delayed ACK (~20 instances/s).
        process = subprocess.Popen(
            [ORTHANC, str(work / "orthanc.json")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
    try:
        _wait(f"http://127.0.0.1:{port}/system", process, log)
        yield Server(
            "orthanc", f"http://127.0.0.1:{port}/dicom-web", process, dicom_port, "ORTHANC"
        )
    finally:
        _stop(process)
        leftovers.remove(work)
