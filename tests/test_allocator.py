"""The allocator tuning of `dicomvault serve`: megabyte buffers reuse memory instead of
faulting in fresh pages every time, on whichever thread they are made, and an
operator's own glibc settings win."""

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
applied = tune_allocator() if sys.argv[1] == "tuned" else []
fd, name = tempfile.mkstemp()
os.write(fd, os.urandom(525_000))
for _ in range(20):
    os.pread(fd, 1 << 20, 0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    data = os.pread(fd, 1 << 20, 0)
    del data
print(",".join(applied) or "-", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
os.close(fd)
os.unlink(name)
"""

# Sixteen live threads take turns, as a server's worker threads do, at building a
# 2 MB string (a metadata answer's size) after the main thread has made some;
# prints the page faults of their turns.
_THREADS = """
import resource, sys, threading
from dicomvault.allocator import tune_allocator
applied = tune_allocator()
for _ in range(5):
    text = "x" * 2_000_000
    del text
turn, ready = threading.Lock(), threading.Barrier(17)

def work():
    ready.wait()
    with turn:
        text = "x" * 2_000_000
        del text

threads = [threading.Thread(target=work) for _ in range(16)]
for thread in threads:
    thread.start()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ready.wait()
for thread in threads:
    thread.join()
print(",".join(applied) or "-", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, program: str = _PROGRAM, **env: str) -> tuple[list[str], int]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
    out = subprocess.run(
        [sys.executable, "-c", program, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [name for name in out[0].split(",") if name != "-"], int(out[1])


def test_tuned_reads_fault_in_far_fewer_pages() -> None:
    applied, tuned = _faults("tuned")
    if not applied:
        pytest.skip("not glibc: nothing to tune")
    _, default = _faults("default")
    # Default glibc maps and unmaps every such buffer: about 128 faults a read.
    assert default > 200 * 50, default
    assert tuned < default / 10, (tuned, default)


def test_threads_taking_turns_share_warm_memory() -> None:
    applied, tuned = _faults("tuned", _THREADS)
    if "MALLOC_ARENA_MAX" not in applied:
        pytest.skip("not glibc: nothing to tune")
    # The same with the operator's own limit, 64, above the sixteen threads (glibc's
    # default is 8 a core): each thread's first turn faults in its own arena's pages,
    # about 490 each.
    _, own_arenas = _faults("tuned", _THREADS, MALLOC_ARENA_MAX="64")
    assert own_arenas > 16 * 200, own_arenas
    assert tuned < own_arenas / 4, (tuned, own_arenas)


def test_an_operators_own_glibc_settings_are_left_alone() -> None:
    applied, _ = _faults("tuned", MALLOC_TRIM_THRESHOLD_="1048576", MALLOC_ARENA_MAX="8")
    assert applied == ["MALLOC_MMAP_THRESHOLD_"]
    applied, _ = _faults("tuned", GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    assert applied == []
