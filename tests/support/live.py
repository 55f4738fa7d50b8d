"""Run the real HTTP app under uvicorn on a free loopback port, in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from dicomvault.archive import Archive
from dicomvault.dicomweb.app import create_app
from dicomvault.tls import uvicorn_config

__all__ = ["free_port", "running_server", "wait_for_health"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(archive: Archive, app: Any = None) -> Iterator[str]:
    """Yield the base URL (http://127.0.0.1:PORT, https with a TLS certificate in the
    settings) of a live server on `archive`."""
    port = free_port()
    config = uvicorn_config(
        app if app is not None else create_app(archive),
        archive.settings,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        scheme = "https" if archive.settings.tls_cert_file else "http"
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_for_health(base: str, alive: Callable[[], bool], timeout: float = 30) -> None:
    """Poll `base`/health until it answers 200; fail early if `alive()` turns False."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if not alive() or time.monotonic() > deadline:
            raise RuntimeError(f"no healthy server at {base}")
        time.sleep(0.1)
