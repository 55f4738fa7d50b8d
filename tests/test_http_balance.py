"""HTTP connections spread over the processes of `serve --processes N` (http_balance).

Two `BalancedServer`s in threads of this process stand for two serving processes:
each has its own descriptor of one listening socket, as forked processes do, and
they share a `LoadBoard`. Each answers with its own number, which tells which one
took a connection.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from dicomvault import http_balance, serving
from dicomvault.config import Settings
from dicomvault.http_balance import BalancedServer, LoadBoard
from dicomvault.tls import uvicorn_config


@pytest.fixture(autouse=True)
def _long_defer(monkeypatch: pytest.MonkeyPatch) -> None:
    # The servers here are threads of one process, taking turns on its GIL: a wait
    # long enough that thread scheduling cannot decide who takes a connection.
    monkeypatch.setattr(http_balance, "DEFER_S", 0.2)


def _numbered_app(number: int) -> Any:
    async def app(scope: dict[str, Any], _receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(number).encode()})

    return app


@contextmanager
def _servers(
    count: int, *, board_size: int | None = None, settings: Settings | None = None
) -> Iterator[tuple[str, LoadBoard]]:
    """`count` servers sharing a listening socket and a board; the base URL and board."""
    listener = serving._listening_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]
    board = LoadBoard(board_size or count)
    servers: list[BalancedServer] = []
    threads: list[threading.Thread] = []
    for number in range(count):
        own = socket.socket(fileno=os.dup(listener.fileno()))  # a process's own descriptor
        app = _numbered_app(number)
        if settings is not None:
            config = uvicorn_config(app, settings, log_level="warning", lifespan="off")
        else:
            config = uvicorn.Config(app, log_level="warning", lifespan="off")
        server = BalancedServer(config, board, number)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [own]}, daemon=True)
        thread.start()
        servers.append(server)
        threads.append(thread)
    deadline = time.monotonic() + 20
    while not all(server.started for server in servers):
        assert time.monotonic() < deadline, "the servers did not start"
        time.sleep(0.02)
    scheme = "https" if settings is not None and settings.tls_cert_file else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}", board
    finally:
        for server in servers:
            server.should_exit = True
        for thread in threads:
            thread.join(timeout=10)
        listener.close()


def _wait_counts(board: LoadBoard, expected: list[int]) -> None:
    deadline = time.monotonic() + 10
    while board.counts() != expected:
        assert time.monotonic() < deadline, f"board {board.counts()}, expected {expected}"
        time.sleep(0.01)


def _connect_together(url: str, clients: list[httpx.Client]) -> list[str]:
    """Each client's first request, all started at once; which server answered each."""
    start = threading.Barrier(len(clients))
    answers: list[str] = [""] * len(clients)

    def first(index: int) -> None:
        start.wait()
        answers[index] = clients[index].get(url).text

    threads = [threading.Thread(target=first, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return answers


def test_clients_connecting_at_once_are_shared_evenly() -> None:
    with _servers(2) as (url, board):
        for _ in range(3):
            clients = [httpx.Client() for _ in range(4)]
            try:
                answers = _connect_together(url, clients)
                assert sorted(answers) == ["0", "0", "1", "1"]
                _wait_counts(board, [2, 2])
                # Requests stay on their connection, so on the server that took it.
                assert [c.get(url).text for c in clients] == answers
            finally:
                for client in clients:
                    client.close()
            _wait_counts(board, [0, 0])  # closed connections are off the board at once


def test_a_closed_connection_makes_room_for_the_next() -> None:
    with _servers(2) as (url, board):
        first, second = httpx.Client(), httpx.Client()
        try:
            taken = {first.get(url).text: first, second.get(url).text: second}
            assert sorted(taken) == ["0", "1"]
            taken["0"].close()
            _wait_counts(board, [0, 1])
            with httpx.Client() as third:
                assert third.get(url).text == "0"  # server 1 was busier: it left it
        finally:
            first.close()
            second.close()


def test_a_busier_process_takes_the_connection_when_nobody_else_does() -> None:
    # Slot 1 stands for a process that holds nothing and never accepts (stuck, say).
    with _servers(1, board_size=2) as (url, board), httpx.Client() as held:
        assert held.get(url).text == "0"
        assert board.busier(0)
        started = time.monotonic()
        with httpx.Client() as late:
            assert late.get(url).text == "0"
        assert time.monotonic() - started >= http_balance.DEFER_S  # the others' chance


def test_https_connections_and_failed_handshakes(pki: Path, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, tls_cert_file=pki / "server.pem", tls_key_file=pki / "server.key"
    )
    with _servers(2, settings=settings) as (url, board):
        verify = ssl.create_default_context(cafile=pki / "ca.pem")
        clients = [httpx.Client(verify=verify) for _ in range(2)]
        try:
            assert sorted(_connect_together(url, clients)) == ["0", "1"]
        finally:
            for client in clients:
                client.close()
        # A client that speaks no TLS: its connection fails and leaves the board.
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            plain.settimeout(10)
            assert plain.recv(1024) == b""  # closed by the server
        _wait_counts(board, [0, 0])
        with httpx.Client(verify=verify) as after:
            assert after.get(url).status_code == 200


def test_the_board_is_shared_with_processes_forked_after_it() -> None:
    board = LoadBoard(2)
    pid = os.fork()
    if pid == 0:  # the child: publish, then leave without running pytest's cleanup
        board.publish(1, 7)
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.counts() == [0, 7]
    assert board.busier(1)
    assert not board.busier(0)
    board.publish(0, 8)
    assert board.busier(0)
    assert not board.busier(1)


def test_a_board_needs_a_process() -> None:
    with pytest.raises(ValueError, match="at least one process"):
        LoadBoard(0)
