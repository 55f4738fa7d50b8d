"""C-STORE ingestion with dcmtk's storescu, the way a modality or PACS sends."""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import leftovers

__all__ = ["STORESCU", "storescu"]

STORESCU = os.environ.get("STORESCU", "/usr/bin/storescu")


def storescu(
    port: int, called_ae: str, files: Sequence[bytes], associations: int
) -> dict[str, float]:
    """Send `files` over `associations` parallel associations; instances/s and MB/s.

    TCP_NODELAY=1 is set for storescu: Debian's dcmtk leaves Nagle's algorithm on,
    which caps any server near 20 instances/s.
    """
    work = Path(tempfile.mkdtemp(prefix="bench-cstore-"))
    try:
        groups: list[list[str]] = [[] for _ in range(associations)]
        for index, data in enumerate(files):
            path = work / f"{index:06d}.dcm"
            path.write_bytes(data)
            groups[index % associations].append(str(path))
        env = {**os.environ, "TCP_NODELAY": "1"}
        # The files just written are written back to the disk now, not while the
        # server under test syncs its own writes (which it then waits behind).
        os.sync()
        started, cpu = time.perf_counter(), _children_cpu_s()
        processes = [
            subprocess.Popen(
                [STORESCU, "-aec", called_ae, "-aet", "BENCH", "127.0.0.1", str(port), *group],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for group in groups
            if group
        ]
        for process in processes:
            _, err = process.communicate(timeout=3600)
            if process.returncode != 0:
                raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
        elapsed = time.perf_counter() - started
        client_cpu = _children_cpu_s() - cpu
    finally:
        leftovers.remove(work)
    size = sum(len(f) for f in files)
    return {
        "instances_per_s": len(files) / elapsed,
        "mb_per_s": size / elapsed / 1e6,
        "client_cpu_s": client_cpu,
    }


def _children_cpu_s() -> float:
    """CPU seconds of this process's ended children (the storescu processes, once
    waited for; the servers under test end only after the measurement)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
