"""CPU time spent by process trees (a server, its database, its S3 endpoint).

On a machine of two cores the server under test, its backing services and the
benchmark's clients share the same cores, so an ingestion rate is bounded by their
sum of CPU per instance as much as by the server's. The figures from these counters
say which process an instance's CPU went to, for dicomvault and Orthanc alike.

A tree's time is the user + system time of each live process in it plus what its
processes have collected from children that ended (`cutime`, `cstime`): a PostgreSQL
backend that exits mid-measurement moves its time into the postmaster's, and the
sum stays whole. Linux only (/proc).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["tree_cpu_s"]

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its collected children)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    # After the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15).
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return int(fields[1]), ticks / _TICK


def tree_cpu_s(roots: Iterable[int]) -> float:
    """CPU seconds used so far by the processes `roots` and all their descendants."""
    parents: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(entry)) is not None:
            parents.setdefault(stat[0], []).append(int(entry))
            times[int(entry)] = stat[1]
    total, pending, seen = 0.0, [pid for pid in roots if pid in times], set()
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += times.get(pid, 0.0)
        pending.extend(parents.get(pid, ()))
    return total
