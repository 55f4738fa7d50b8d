"""HTTP connections spread over the processes of `serve --processes N` by their load.

The processes share one listening socket (see `serving`). Left to uvicorn, each
process's event loop accepts whatever connections are queued when it wakes: four
clients connecting at once landed three or four on one of two processes in eight of
ten tries. An HTTP connection is kept alive for many requests, so where it lands
decides where they all run, and a process runs Python on one core at a time: two
STOW-RS clients sending 50 small instances a request stored 661-724 instances/s
when both landed on one process, 1,015-1,100 when split.

Here each process publishes the number of connections it holds on a `LoadBoard`,
memory shared by the processes forked after it. A process holding more than the
least busy one waits `DEFER_S` and looks again, so that the least busy takes the
connection; after three such waits it takes it itself (the others may be busy). The
DICOM node balances its associations the same way with a wait per connection held
(`dimse.server`), as its processes do not share counts.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import mmap
import socket
import ssl
from collections.abc import Callable
from typing import Any

import uvicorn

__all__ = ["DEFER_S", "BalancedServer", "LoadBoard"]

log = logging.getLogger(__name__)

DEFER_S = 0.005  # a busier process's wait before it looks at a waiting connection again
_MOST_WAITS = 3  # then it takes the connection itself: the others may be stuck
_RETRY_S = 1.0  # out of file descriptors: accept again after this (as asyncio does)


class LoadBoard:
    """Connections held by each process, in memory every process forked later shares.

    Each process writes only its own slot; reading the others' without a lock is
    enough for a hint of who is least busy."""

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError("a load board needs at least one process")
        self._memory = mmap.mmap(-1, ctypes.sizeof(ctypes.c_int32) * processes)
        self._counts = (ctypes.c_int32 * processes).from_buffer(self._memory)

    def publish(self, index: int, connections: int) -> None:
        self._counts[index] = connections

    def counts(self) -> list[int]:
        return list(self._counts)

    def busier(self, index: int) -> bool:
        """Whether another process holds fewer connections than process `index`."""
        mine = self._counts[index]
        return any(count < mine for other, count in enumerate(self._counts) if other != index)


class _Acceptor:
    """Accepts this process's share of the connections on a shared listening socket."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: Callable[[], asyncio.Protocol],
        tls: ssl.SSLContext | None,
        accepted: Callable[[], None],
        dropped: Callable[[], None],
        busier: Callable[[], bool],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._tls = tls
        self._accepted = accepted  # a connection taken, not yet made (TLS handshake)
        self._dropped = dropped  # one that ended before it was made
        self._busier = busier
        self._timer: asyncio.TimerHandle | None = None
        self._waits = 0  # DEFER_S waits in a row so far
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        loop.add_reader(self._fd, self._ready)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop.remove_reader(self._fd)

    def _ready(self) -> None:
        # Counts change while a process waits (another took a connection meanwhile):
        # each look decides again, so that the one least busy by then takes it.
        if self._waits < _MOST_WAITS and self._busier():
            self._waits += 1
            self._pause(DEFER_S)
            return
        self._waits = 0
        self._accept()

    def _pause(self, seconds: float) -> None:
        self._loop.remove_reader(self._fd)
        self._timer = self._loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._loop.add_reader(self._fd, self._ready)
        self._ready()  # a look now, queued or not: an empty queue only ends the waits

    def _accept(self) -> None:
        try:
            conn, _address = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another process took it, or its client gave up
        except OSError as exc:  # out of file descriptors, most likely: not in a busy loop
            log.error("cannot accept an HTTP connection (%s); trying again shortly", exc)
            self._pause(_RETRY_S)
            return
        conn.setblocking(False)
        self._accepted()
        task = self._loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol, conn, ssl=self._tls)
        except Exception as exc:  # noqa: BLE001 - a failed handshake ends that connection only
            log.debug("HTTP connection dropped before its first request: %s", exc)
            conn.close()
            self._dropped()


class _Watched(set[Any]):
    """uvicorn's set of open connections, telling each change: its protocols add
    themselves when a connection is made (after the TLS handshake, if any) and
    discard themselves when it is lost."""

    def __init__(self, made: Callable[[], None], lost: Callable[[], None]) -> None:
        super().__init__()
        self._made = made
        self._lost = lost

    def add(self, item: Any) -> None:
        super().add(item)
        self._made()

    def discard(self, item: Any) -> None:
        super().discard(item)
        self._lost()


class BalancedServer(uvicorn.Server):
    """uvicorn on a listening socket shared by processes, taking its share of connections.

    `index` is this process's slot on `board`."""

    def __init__(self, config: uvicorn.Config, board: LoadBoard, index: int) -> None:
        super().__init__(config)
        self._board = board
        self._index = index
        self._acceptors: list[_Acceptor] = []
        self._pending = 0  # accepted, not yet made: in their TLS handshake, say
        self.server_state.connections = _Watched(self._settled, self._publish)

    def connections(self) -> int:
        """Connections this process holds, those still in their TLS handshake included."""
        return len(self.server_state.connections) + self._pending

    def _publish(self) -> None:
        self._board.publish(self._index, self.connections())

    def _accepted(self) -> None:
        self._pending += 1
        self._publish()

    def _settled(self) -> None:
        """A pending connection was made, or dropped: counted once either way."""
        self._pending = max(0, self._pending - 1)
        self._publish()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the application's startup, no listener
        config = self.config
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:  # as uvicorn's own startup makes them
            made: Any = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )
            return made  # type: ignore[no-any-return]

        for sock in sockets or []:
            self._acceptors.append(
                _Acceptor(
                    loop,
                    sock,
                    protocol,
                    config.ssl,
                    self._accepted,
                    self._settled,
                    lambda: self._board.busier(self._index),
                )
            )
        self._publish()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for acceptor in self._acceptors:
            acceptor.close()
        await super().shutdown(sockets=sockets)
