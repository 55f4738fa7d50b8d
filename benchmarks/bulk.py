"""Loading a folder of DICOM files: `dicomvault import` against Orthanc's way of doing it.

Orthanc has no import command; its documented way to load a folder is its
ImportDicomFiles sample, which POSTs each file to the REST `/instances` resource. Here
that is done from as many client threads as `dicomvault import` has workers, on one
keep-alive connection each. Orthanc is running before its clock starts; so that
dicomvault is timed alike, its figure leaves out what the same command takes on an
empty folder (Python's start, the imports, the archive opened: about a second), timed
just before on the same, already made, archive.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from benchmarks import leftovers
from benchmarks.servers import DICOMVAULT

__all__ = ["WORKERS", "dicomvault_import", "folder_of", "orthanc_post"]

WORKERS = 4  # `dicomvault import`'s default, and Orthanc's client threads


def folder_of(files: Sequence[bytes]) -> Path:
    """A new folder holding `files` as 00000.dcm, 00001.dcm, ..., written out to the disk
    before it is returned: a folder to import has usually been there a while, and its
    writeback would otherwise still be running during the first server's import (and,
    as dirty data of the same file system, be waited for by dicomvault's `syncfs`)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-import-"))
    for number, data in enumerate(files):
        (folder / f"{number:05d}.dcm").write_bytes(data)
    os.sync()
    return folder


def _rates(count: int, size: int, elapsed: float) -> dict[str, float]:
    return {"instances_per_s": count / elapsed, "mb_per_s": size / elapsed / 1e6}


def dicomvault_import(env: dict[str, str], folder: Path) -> dict[str, float]:
    """`dicomvault import FOLDER` into a new data directory with the backend `env`; its
    start-up (the same command on an empty folder) is left out and returned apart."""
    work = Path(tempfile.mkdtemp(prefix="bench-dv-import-"))
    (work / "empty").mkdir()
    full_env = {**os.environ, "DICOMVAULT_DATA_DIR": str(work / "data"), **env}
    files = sorted(folder.iterdir())
    try:
        _timed_import(full_env, work / "empty")  # the first makes the archive
        start_up = _timed_import(full_env, work / "empty")
        elapsed = _timed_import(full_env, folder)
    finally:
        leftovers.remove(work)
    rates = _rates(len(files), sum(f.stat().st_size for f in files), elapsed - start_up)
    return rates | {"start_up_s": start_up}


def _timed_import(env: dict[str, str], folder: Path) -> float:
    """Seconds `dicomvault import FOLDER` takes; an error if it fails."""
    started = time.perf_counter()
    done = subprocess.run(
        [DICOMVAULT, "import", "-j", str(WORKERS), str(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"dicomvault import failed:\n{(done.stdout + done.stderr)[-2000:]}")
    return elapsed


def orthanc_post(root: str, folder: Path) -> dict[str, float]:
    """Each file of `folder` POSTed to Orthanc's `{root}/instances` from WORKERS threads."""
    files = sorted(folder.iterdir())
    local = threading.local()
    opened: list[httpx.Client] = []

    def post(path: Path) -> int:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=600)
            opened.append(client)
        data = path.read_bytes()
        response = client.post(
            f"{root}/instances", content=data, headers={"Content-Type": "application/dicom"}
        )
        if response.status_code != 200:
            raise RuntimeError(f"POST /instances {response.status_code}: {response.text[:300]}")
        return len(data)

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            size = sum(pool.map(post, files))
    finally:
        for client in opened:
            client.close()
    return _rates(len(files), size, time.perf_counter() - started)
