"""The README's first command, for real: `dicomvault serve` as a process, used by real clients."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from dicomvault.synthetic import study_instances
from tests.support.live import free_port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    exe = shutil.which("dicomvault")
    assert exe, "the dicomvault console script is not installed (pip install -e .)"
    port = free_port()
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
    proc = subprocess.Popen(
        [
            exe,
            "serve",
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(port),
            "--log-level",
            "warning",
            "--no-dicom",  # the DIMSE side has its own test; 11112 may be taken here
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                output = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"dicomvault serve did not start:\n{output}")
            time.sleep(0.1)
        yield base, data_dir
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_serve_embedded_defaults_store_find_fetch(served: tuple[str, Path]) -> None:
    base, data_dir = served
    client = DICOMwebClient(f"{base}/dicom-web")
    datasets = [pydicom.dcmread(BytesIO(b)) for b in study_instances("e2e", series=2, per_series=2)]
    response = client.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 4

    studies = client.search_for_studies(search_filters={"PatientName": "doe*"})
    assert len(studies) == 1
    study_uid = studies[0]["0020000D"]["Value"][0]
    assert studies[0]["00201208"]["Value"] == [4]

    fetched = client.retrieve_study(study_uid)
    assert sorted(ds.SOPInstanceUID for ds in fetched) == sorted(
        ds.SOPInstanceUID for ds in datasets
    )
    assert fetched[0].pixel_array.shape == (64, 64)
    # The embedded defaults: SQLite and objects under the data directory.
    assert (data_dir / "index.sqlite3").is_file()
    assert len(list((data_dir / "objects").rglob("*.dcm"))) == 4
