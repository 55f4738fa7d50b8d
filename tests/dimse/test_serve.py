"""`dicomvault serve` as a process: the DICOM node next to DICOMweb, port and AE title from env."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.dcmtk import dcmtk
from tests.support.live import free_port


def test_serve_starts_the_dicom_node_next_to_dicomweb(tmp_path: Path) -> None:
    exe = shutil.which("dicomvault")
    assert exe
    http, dicom = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
    env |= {"DICOMVAULT_DICOM_PORT": str(dicom), "DICOMVAULT_AE_TITLE": "VAULT_E2E"}
    args = [exe, "serve", "--data-dir", str(tmp_path), "--http-port", str(http)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while dcmtk("echoscu", "-aec", "VAULT_E2E", "127.0.0.1", dicom).returncode != 0:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "no C-ECHO answer from dicomvault serve"
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{http}/health").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=15)[0].decode()
    assert proc.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal
    assert "Finished server process" in output
    assert f"DIMSE AE VAULT_E2E at 127.0.0.1:{dicom}" in output
