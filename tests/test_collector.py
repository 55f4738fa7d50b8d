"""The garbage collector and `dicomvault serve`: what lives as long as the server is left
out of collections, startup garbage is not kept, and each serving process does it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Each program runs in its own interpreter: freezing pytest's own objects would keep
# them for the rest of the run.
_FREEZE = """
import gc, weakref
class Node: pass
kept = {"a": []}
a, b = Node(), Node()
a.other, b.other = b, a  # a reference cycle: garbage only a collection frees
garbage = weakref.ref(a)
del a, b
from dicomvault.collector import freeze_startup_objects
frozen = freeze_startup_objects()
tracked = gc.get_objects()  # what later collections visit
print(garbage() is None, frozen > 1000, any(o is kept for o in tracked))
fresh = {"b": []}
print(any(o is fresh for o in gc.get_objects()))
"""

# `serving._serve` as a serving process runs it, with uvicorn's run replaced by a
# report of how many objects are frozen at that moment.
_SERVE = """
import gc, socket, sys
import uvicorn
from dicomvault.config import Settings
from dicomvault.serving import Plan, _serve

def report(self, sockets=None):
    print(gc.get_freeze_count())

uvicorn.Server.run = report
settings = Settings(data_dir=sys.argv[1], http_port=0)
from dicomvault.archive import Archive
Archive.open(settings).close()  # the schema, as `serve` makes it before serving
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
_serve(Plan(settings, dicom=False), listener, {}, first=False)
"""


def _run(program: str, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_objects_alive_at_freezing_are_left_out_and_garbage_is_freed_first() -> None:
    collected, many, kept_visited, fresh_visited = _run(_FREEZE)
    assert collected == "True"  # the cycle was collected, not frozen for good
    assert many == "True"
    assert kept_visited == "False"
    assert fresh_visited == "True"  # objects made afterwards are collected as usual


def test_a_serving_process_freezes_what_it_built_before_it_serves(tmp_path: Path) -> None:
    [frozen] = _run(_SERVE, str(tmp_path / "data"))
    # The app, the archive and every module imported to build them: tens of thousands.
    assert int(frozen) > 20_000, frozen
