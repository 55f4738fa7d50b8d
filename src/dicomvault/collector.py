"""Keeping Python's cyclic garbage collector off what a server keeps for its whole life.

A full collection walks every container object the process holds. A serving process
holds a great many that live as long as it does (the modules of pydicom, SQLAlchemy,
FastAPI; the app, its routes and settings), and a request that builds many objects
(a QIDO-RS answer of a thousand instances is some 30,000 dicts) sets off several
collections. Measured in one process holding 114,000 tracked objects, a search of
1,000 instances took 99 ms at the median, of which full collections took 68; with
the startup objects frozen, 36 ms.

`gc.freeze()` moves every object alive at that moment to a generation the collector
never visits; collection still runs as usual for everything made afterwards. It is
called once per process when it is about to serve, after a collection, so that no
startup garbage is kept for good.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_objects"]


def freeze_startup_objects() -> int:
    """Leave everything alive now out of later collections; how many objects that is."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
