"""The HTTP door's worker threads (`dicomweb.threads`): results, errors, and a cancelled
request that waits for its work to end."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from dicomvault.dicomweb.threads import in_thread


def _where(value: int, *, plus: int = 0) -> tuple[int, str]:
    return value + plus, threading.current_thread().name


def test_the_work_runs_on_a_worker_thread_with_its_arguments() -> None:
    async def main() -> tuple[int, str]:
        return await in_thread(_where, 40, plus=2)

    value, thread = asyncio.run(main())
    assert value == 42
    assert thread.startswith("dicomweb")
    assert thread != threading.current_thread().name


def test_what_the_work_raises_reaches_the_caller() -> None:
    def fail() -> None:
        raise LookupError("no such study")

    async def main() -> None:
        await in_thread(fail)

    with pytest.raises(LookupError, match="no such study"):
        asyncio.run(main())


def test_a_cancelled_caller_unwinds_only_once_its_work_has_ended() -> None:
    started, finished = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        time.sleep(0.3)
        finished.set()

    async def main() -> bool:
        task = asyncio.create_task(in_thread(slow))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return finished.is_set()

    assert asyncio.run(main()) is True
