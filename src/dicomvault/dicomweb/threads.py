"""Blocking work of the HTTP door (index reads and writes, ingest, audit records) run on
worker threads, off the event loop.

One thread pool per process, on asyncio's own executor hand-off. Starlette's
`run_in_threadpool` goes through anyio (a cancel scope, a capacity limiter, a task
lookup on each side). Measured alternating the two in one server, requests one at a
time: a QIDO-RS search that finds nothing (three hand-offs) took 52-60 us less CPU at
the mean and 70-90 us less time; a single-instance STOW-RS request, 7-72 us less CPU
and 19-34 us less time (its ingest dwarfs the hand-offs).

As with anyio's worker threads, a request cancelled while its work runs waits for
that work to end before it unwinds: what the work uses (a spooled part, a database
connection) is closed by the request only once the thread is done with it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["MAX_THREADS", "in_thread"]

P = ParamSpec("P")
T = TypeVar("T")

MAX_THREADS = 40  # as anyio's default limit: requests beyond it wait for a thread

_pools: dict[int, ThreadPoolExecutor] = {}  # by process: a forked child makes its own
_pools_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    pid = os.getpid()
    pool = _pools.get(pid)
    if pool is None:
        with _pools_lock:
            pool = _pools.get(pid)
            if pool is None:
                pool = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="dicomweb")
                _pools[pid] = pool
    return pool


async def in_thread(function: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`function(*args, **kwargs)` on a worker thread; its result or what it raised."""
    loop = asyncio.get_running_loop()
    if kwargs:
        future = loop.run_in_executor(_pool(), functools.partial(function, *args, **kwargs))
    else:
        future = loop.run_in_executor(_pool(), function, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue
            except Exception:  # noqa: BLE001 - the cancellation is what goes on
                break
        raise
