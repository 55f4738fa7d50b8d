"""HashingReader: the whole and per-block digests of what passes through, hashed late
or at once (the local store hashes while the disk syncs, `lag_bytes`)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from blake3 import blake3

from dicomvault.storage.base import BLOCK_SIZE, BlockDigests, HashingReader, new_key
from dicomvault.storage.local import LocalStore

DATA = os.urandom(3 * BLOCK_SIZE + 12345)
CHUNKS = [DATA[:128], DATA[128 : BLOCK_SIZE + 7], DATA[BLOCK_SIZE + 7 :]]


def _expected_blocks() -> BlockDigests:
    return BlockDigests(
        b"".join(
            blake3(DATA[at : at + BLOCK_SIZE]).digest() for at in range(0, len(DATA), BLOCK_SIZE)
        ),
        "blake3",
    )


@pytest.mark.parametrize("lag", [0, BLOCK_SIZE, 8 * BLOCK_SIZE])
def test_digests_are_those_of_the_data_whatever_the_lag(lag: int) -> None:
    reader = HashingReader(iter(CHUNKS), lag_bytes=lag)
    assert b"".join(reader) == DATA
    result = reader.result("k")
    assert result.sha256 == hashlib.sha256(DATA).hexdigest()
    assert result.blocks == _expected_blocks()
    assert result.size == len(DATA)


def test_chunks_wait_to_be_hashed_only_up_to_the_lag() -> None:
    reader = HashingReader(iter(CHUNKS), lag_bytes=BLOCK_SIZE + 1000)
    waiting = []
    for _chunk in reader:
        waiting.append(reader._pending_bytes)
    assert max(waiting) <= BLOCK_SIZE + 1000
    assert waiting[0] == 128  # the first chunk waits: it is within the lag
    reader.finish()
    assert reader._pending_bytes == 0
    assert reader.hexdigest() == hashlib.sha256(DATA).hexdigest()


@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_forked_process_still_puts(tmp_path: Path) -> None:
    """`serve --processes N` forks after the parent may have used the store: the child's
    puts must not wait on sync threads that only the parent has."""
    store = LocalStore(tmp_path / "objects")
    store.put(new_key(), iter([DATA[:1000]]))  # the parent's sync threads now exist
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            done = threading.Event()
            threading.Thread(
                target=lambda: (store.put(new_key(), iter([DATA[:2000]])), done.set()),
                daemon=True,
            ).start()
            code = 0 if done.wait(10) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
