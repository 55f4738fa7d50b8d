"""The allocator tuning of `dicomvault serve`: megabyte buffers reuse memory instead of
faulting in fresh pages every time, and an operator's own glibc settings win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Reads a 525 kB file 200 times the way a retrieval does (a 1 MiB read, fresh bytes
# each time) and prints the page faults that cost, after tuning or not.
_PROGRAM = """
import os, resource, sys, tempfile
from dicomvault.allocator import tune_allocator
applied = tune_allocator() if sys.argv[1] == "tuned" else False
fd, name = tempfile.mkstemp()
os.write(fd, os.urandom(525_000))
for _ in range(20):
    os.pread(fd, 1 << 20, 0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    data = os.pread(fd, 1 << 20, 0)
    del data
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
os.close(fd)
os.unlink(name)
"""


def _faults(mode: str, **env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] == "True", int(out[1])


def test_tuned_reads_fault_in_far_fewer_pages() -> None:
    applied, tuned = _faults("tuned")
    if not applied:
        pytest.skip("not glibc: nothing to tune")
    _, default = _faults("default")
    # Default glibc maps and unmaps every such buffer: about 128 faults a read.
    assert default > 200 * 50, default
    assert tuned < default / 10, (tuned, default)


def test_an_operators_own_glibc_settings_are_left_alone() -> None:
    applied, _ = _faults("tuned", MALLOC_TRIM_THRESHOLD_="1048576")
    assert not applied
