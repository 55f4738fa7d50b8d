"""Serve a DIMSE request the moment it is decoded, not at the next poll.

pynetdicom's acceptor runs two polling threads per association: the DUL thread checks
its outgoing queue and the socket, and sleeps 1 ms whenever neither had anything; the
association thread sleeps 1 ms, then looks for a decoded message without waiting. A
C-STORE crosses those sleeps three times (request in, message to the handler,
response out), up to 3 ms of an instance that otherwise takes about 8 on one
association. `make_prompt` turns the sleeps into waits that end as soon as there is
work, for one accepted association:

- the DUL thread, when it found nothing to do, waits in select() on the socket and on
  a pipe that every primitive handed to it for sending writes to, for at most
  `IDLE_WAIT`; its own sleep between rounds becomes 0;
- the association thread's look at its message queue waits up to `IDLE_WAIT` for a
  message;
- once it has served a request, the association thread takes the next message that
  comes within `IDLE_WAIT` and serves it too, instead of going round pynetdicom's loop,
  which sleeps 1 ms at the top of every round (its loop itself is not replaced). A
  modality streaming instances on one association pays that sleep once per pause, not
  once per instance (1.1 ms of about 5 measured). It goes back to the loop when no
  message comes, when the association is ending, and when another thread pauses the
  loop to send on the association itself (pynetdicom's reactor checkpoint).

An idle association still wakes every `IDLE_WAIT` to check its timers and whether the
peer released, as before. Only attributes of the association's own objects change,
the way `connections.Guard` caps PDU lengths: nothing global in pynetdicom.
"""

from __future__ import annotations

import os
import queue
import select
import weakref
from contextlib import suppress
from typing import Any

__all__ = ["IDLE_WAIT", "make_prompt"]

IDLE_WAIT = 0.005  # seconds


class _PromptQueue(queue.Queue[Any]):
    """The association's DIMSE message queue; its non-blocking get (the reactor's poll)
    waits briefly for a message instead."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            block, timeout = True, IDLE_WAIT
        return super().get(block, timeout)


def make_prompt(assoc: Any) -> None:
    """Replace the polling sleeps of the accepted, not yet started `assoc` (see module)."""
    dul = assoc.dul
    transport = dul.socket
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    weakref.finalize(dul, _close, wake_read, wake_write)

    def wake() -> None:
        with suppress(BlockingIOError, OSError):  # a full pipe is already a wake-up
            os.write(wake_write, b"\0")

    send_pdu = dul.send_pdu

    def send_and_wake(primitive: Any) -> None:
        send_pdu(primitive)
        wake()

    transport_event = dul._is_transport_event

    def wait_for_transport_event() -> bool:
        if transport_event():
            return True
        sock = transport.socket
        if sock is None:
            return False
        try:
            select.select([sock, wake_read], [], [], IDLE_WAIT)
        except (OSError, ValueError):  # closed meanwhile: the next round sees it
            return False
        with suppress(BlockingIOError, OSError):
            os.read(wake_read, 4096)
        return bool(transport_event())

    serve = assoc._serve_request

    def serve_while_busy(msg: Any, context_id: int) -> None:
        while msg is not None:
            serve(msg, context_id)
            if assoc._kill or not assoc.is_established or not assoc._reactor_checkpoint.is_set():
                return
            context_id, msg = assoc.dimse.get_msg(block=False)  # waits up to IDLE_WAIT

    dul.send_pdu = send_and_wake
    dul._is_transport_event = wait_for_transport_event
    dul._run_loop_delay = 0
    assoc.dimse.msg_queue = _PromptQueue()
    assoc._serve_request = serve_while_busy


def _close(*fds: int) -> None:
    for fd in fds:
        with suppress(OSError):
            os.close(fd)
