"""Reading a PDU's body off the socket in as few calls as the kernel allows."""

from __future__ import annotations

import os
import socket
import threading

from dicomvault.dimse.connections import read_exactly


def test_a_body_sent_in_pieces_is_read_whole() -> None:
    body = os.urandom(300_000)
    ours, theirs = socket.socketpair()
    with ours, theirs:

        def send() -> None:
            for start in range(0, len(body), 7_001):  # pieces that do not line up
                theirs.sendall(body[start : start + 7_001])

        sender = threading.Thread(target=send)
        sender.start()
        first = read_exactly(ours, 100_000)
        second = read_exactly(ours, 200_000)
        sender.join()
    assert bytes(first + second) == body


def test_a_peer_that_closes_early_leaves_a_short_read() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        theirs.sendall(b"only twelve!")
        theirs.close()
        got = read_exactly(ours, 1_000)
    assert bytes(got) == b"only twelve!"
