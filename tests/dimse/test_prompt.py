"""The association's waits end when there is work (dimse/prompt.py).

The idle wait is stretched to seconds, so that "woken" and "timed out" cannot be
confused on a slow machine: each wake-up must come long before the wait would end.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ABORT
from pynetdicom.transport import AssociationSocket

from dicomvault.dimse import prompt

STRETCHED = 3.0  # seconds


@pytest.fixture
def accepted(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, socket.socket]]:
    """A pynetdicom acceptor association on one end of a socket pair, made prompt."""
    monkeypatch.setattr(prompt, "IDLE_WAIT", STRETCHED)
    ours, peer = socket.socketpair()
    assoc = Association(AE(), "acceptor")
    assoc.set_socket(AssociationSocket(assoc, client_socket=ours))
    prompt.make_prompt(assoc)
    yield assoc, peer
    ours.close()
    peer.close()


def _later(action: Any, delay: float = 0.05) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), action()))
    thread.start()
    return thread


def test_the_dul_wakes_when_the_peer_sends(accepted: tuple[Any, socket.socket]) -> None:
    assoc, peer = accepted
    started = time.monotonic()
    assert assoc.dul._is_transport_event() is False  # nothing came: the whole wait
    assert time.monotonic() - started >= STRETCHED * 0.9

    sender = _later(lambda: peer.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"))
    started = time.monotonic()
    assert assoc.dul._is_transport_event() is True  # an A-ABORT PDU arrived and was read
    assert time.monotonic() - started < STRETCHED / 2
    sender.join()


def test_the_dul_wakes_when_something_is_to_be_sent(accepted: tuple[Any, socket.socket]) -> None:
    assoc, _peer = accepted
    waker = _later(lambda: assoc.dul.send_pdu(A_ABORT()))
    started = time.monotonic()
    assert assoc.dul._is_transport_event() is False  # woken, with nothing to read
    assert time.monotonic() - started < STRETCHED / 2
    assert isinstance(assoc.dul.to_provider_queue.get_nowait(), A_ABORT)
    assert assoc.dul._run_loop_delay == 0
    waker.join()


def test_the_reactor_poll_waits_for_a_message(accepted: tuple[Any, socket.socket]) -> None:
    assoc, _peer = accepted
    messages = assoc.dimse.msg_queue
    putter = _later(lambda: messages.put((1, "a message")))
    started = time.monotonic()
    assert assoc.dimse.get_msg(block=False) == (1, "a message")
    assert time.monotonic() - started < STRETCHED / 2
    putter.join()


def test_the_reactor_poll_still_ends_without_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompt, "IDLE_WAIT", 0.05)
    ours, peer = socket.socketpair()
    try:
        assoc = Association(AE(), "acceptor")
        assoc.set_socket(AssociationSocket(assoc, client_socket=ours))
        prompt.make_prompt(assoc)
        assert assoc.dimse.get_msg(block=False) == (None, None)
        with pytest.raises(queue.Empty):
            assoc.dimse.msg_queue.get(block=False)
    finally:
        ours.close()
        peer.close()


def test_requests_that_keep_coming_are_served_in_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """After serving a request the association thread serves the next one that comes,
    without going round pynetdicom's loop (and its 1 ms sleep); it goes back to the loop
    when the loop is paused for a send by another thread, or the association ends."""
    monkeypatch.setattr(prompt, "IDLE_WAIT", 0.2)
    ours, peer = socket.socketpair()
    try:
        assoc = Association(AE(), "acceptor")
        assoc.set_socket(AssociationSocket(assoc, client_socket=ours))
        served: list[tuple[str, int]] = []
        assoc._serve_request = lambda msg, context_id: served.append((msg, context_id))
        prompt.make_prompt(assoc)
        assoc.is_established = True
        assoc._reactor_checkpoint.set()
        messages = assoc.dimse.msg_queue
        messages.put((3, "second"))
        _later(lambda: messages.put((5, "third")), delay=0.05)
        assoc._serve_request("first", 1)
        assert served == [("first", 1), ("second", 3), ("third", 5)]

        assoc._reactor_checkpoint.clear()  # another thread wants to send: back to the loop
        messages.put((7, "for the loop"))
        assoc._serve_request("fourth", 1)
        assert served[-1] == ("fourth", 1)
        assert messages.qsize() == 1

        assoc._reactor_checkpoint.set()
        assoc.is_established = False  # released: back to the loop
        assoc._serve_request("fifth", 1)
        assert served[-1] == ("fifth", 1)
        assert messages.qsize() == 1
    finally:
        ours.close()
        peer.close()
