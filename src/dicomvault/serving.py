"""Running the archive's servers: DICOMweb (uvicorn), the DICOM node and the job
workers, in one process or several.

One Python process runs Python code on one core at a time. With `serve_processes`
N > 1, `dicomvault serve` forks N - 1 more processes that serve the same ports: each
listening socket (HTTP, DICOM, DICOM TLS) is bound once before the fork and shared,
and a connection goes to the least busy process: an HTTP connection is kept alive
for many requests and a DICOM association for a whole study, so where it lands
decides where they all run. A process already serving more connections waits a
little before it accepts, and a less busy one takes it (HTTP: `http_balance`, on
counts the processes share; DICOM: `dimse.server`). SO_REUSEPORT would hash each
connection to a process regardless of load, and four associations landed all on one
process one time in three.
Every process opens its own database connections and object store after the fork;
the job workers run in the first process only. Everything that must be done once
(schema migration, the secure-defaults check, the allocator's tuning in
`dicomvault.allocator`) happens before the fork. Each process, once it has built
everything it serves with, leaves those objects out of the garbage collector's
passes (`dicomvault.collector`).

If a process of a multi-process server dies, the others are stopped and `serve`
exits with status 1, so that the service manager restarts it whole; a child also
stops when the first process goes away.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Any

from dicomvault.allocator import tune_allocator
from dicomvault.archive import Archive
from dicomvault.collector import freeze_startup_objects
from dicomvault.config import Settings
from dicomvault.http_balance import BalancedServer, LoadBoard

__all__ = ["HTTP_NOTSENT_LOWAT", "Plan", "dicom_listeners", "http_listener", "run"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class Plan:
    """What `dicomvault serve` runs."""

    settings: Settings
    dicom: bool  # the DICOM node too
    log_level: str = "info"

    @property
    def processes(self) -> int:
        return self.settings.serve_processes


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # The protocol named, not left 0: asyncio's own loop (uvicorn's, where uvloop is
    # not installed) sets TCP_NODELAY on accepted sockets only when their protocol
    # says TCP; without it every small response waited about 40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


# Unsent bytes an HTTP connection may hold in the kernel before the socket stops
# taking more (TCP_NOTSENT_LOWAT, where the platform has it, as Linux does; set on
# the listening socket, it is inherited by every accepted connection). Without it, a
# retrieval hands the kernel as much as its send buffer (autotuned to 4 MiB) takes in
# one write, and uvloop makes that write holding the GIL, so the threads reading and
# checking the next parts wait; with it, a write takes 64 KiB and the event loop's
# library sends the rest without the GIL. It bounds what waits unsent, not what is in
# flight, so a connection's window over a long path is not capped (a small SO_SNDBUF
# would be). WADO-RS of a 52 MB study on loopback: 2,168-2,183 MB/s against 1,718-1,739.
HTTP_NOTSENT_LOWAT = 64 * 1024


def http_listener(settings: Settings) -> socket.socket:
    """The HTTP listening socket, bound once for every process."""
    sock = _listening_socket(settings.host, settings.http_port)
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if option is not None:
        sock.setsockopt(socket.IPPROTO_TCP, option, HTTP_NOTSENT_LOWAT)
    return sock


def dicom_listeners(settings: Settings) -> dict[int, socket.socket]:
    """The DICOM (and DICOM TLS) listening sockets of a multi-process server, by the
    port configured, bound once before the fork; {} with one process, whose DICOM
    node binds its own."""
    if settings.serve_processes < 2:
        return {}
    ports = [p for p in (settings.dicom_port, settings.dicom_tls_port) if p]
    listeners: dict[int, socket.socket] = {}
    try:
        for port in ports:
            listeners[port] = _listening_socket(settings.host, port)
    except OSError:
        for sock in listeners.values():
            sock.close()
        raise
    return listeners


def run(plan: Plan, listener: socket.socket, dicom: dict[int, socket.socket] | None = None) -> int:
    """Serve until told to stop (SIGINT, SIGTERM); the exit status. `dicom`: the shared
    DICOM listening sockets from `dicom_listeners`."""
    dicom = dicom or {}
    _stop_request.install()
    tune_allocator()  # before the fork: every process inherits it
    board = LoadBoard(plan.processes) if plan.processes > 1 else None
    children = [_fork(plan, listener, dicom, board, i) for i in range(1, plan.processes)]
    failed, stopping = threading.Event(), threading.Event()
    if children:
        threading.Thread(
            target=_watch, args=(children, failed, stopping), name="serve-watch", daemon=True
        ).start()
    try:
        _serve(plan, listener, dicom, first=True, board=board)
    finally:
        stopping.set()
        _stop(children)
    return 1 if failed.is_set() else 0


def _fork(
    plan: Plan,
    listener: socket.socket,
    dicom: dict[int, socket.socket],
    board: LoadBoard | None,
    index: int,
) -> int:
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        _die_with_parent()
        _serve(plan, listener, dicom, first=False, board=board, index=index)
        status = 0
    except BaseException:  # a child must never return into the parent's code
        log.exception("serve process %d failed", os.getpid())
    finally:
        logging.shutdown()
        os._exit(status)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the first one goes away."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _serve(
    plan: Plan,
    listener: socket.socket,
    dicom: dict[int, socket.socket],
    *,
    first: bool,
    board: LoadBoard | None = None,
    index: int = 0,
) -> None:
    """One process's servers: uvicorn on the shared socket, the DICOM node, and (in the
    first process) the job workers. With several processes, `board` is where they
    share their HTTP load and `index` this process's place on it."""
    import uvicorn

    from dicomvault.dicomweb.app import create_app
    from dicomvault.jobs.worker import start_serve_workers
    from dicomvault.tls import uvicorn_config

    settings = plan.settings
    archive = Archive.open(settings, upgrade=False)
    workers = start_serve_workers(archive) if first else None
    dimse = None
    try:
        if plan.dicom:
            from dicomvault.dimse import DimseServer

            dimse = DimseServer(
                archive,
                settings.host,
                settings.dicom_port or None,
                tls_port=settings.dicom_tls_port,
                listeners=dicom,
            )
            dimse.start()
        config = uvicorn_config(
            create_app(archive),
            settings,
            host=settings.host,
            port=settings.http_port,
            log_level=plan.log_level,
            access_log=plan.log_level == "debug",
        )
        server = uvicorn.Server(config) if board is None else BalancedServer(config, board, index)
        _stop_request.server = server
        if _stop_request.requested:  # asked to stop while starting: start, then stop at once
            server.should_exit = True
        freeze_startup_objects()
        server.run(sockets=[listener])
    finally:
        if workers is not None:
            workers.stop(timeout=30)
        if dimse is not None:
            dimse.stop()
        archive.close()


class _StopRequest:
    """SIGINT/SIGTERM for this process, from before it starts serving.

    The handlers are installed before anything starts (and so before the fork), as
    a stop can come at any time: from the first process when a child dies, from a
    service manager. Before uvicorn runs, a stop is remembered and ends its start at
    once; while it runs, uvicorn handles the signal itself and raises it again once
    stopped, under these handlers; then the process stops its workers and DICOM node
    instead of dying at once with the signal's default action."""

    def __init__(self) -> None:
        self.requested = False
        self.server: Any = None

    def install(self) -> None:
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, self.handle)

    def handle(self, signum: int, _frame: object) -> None:
        log.info("serve process %d: %s, stopping", os.getpid(), signal.Signals(signum).name)
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True


_stop_request = _StopRequest()


def _watch(children: list[int], failed: threading.Event, stopping: threading.Event) -> None:
    """Stop the first process when a child ends (with status 1 if it failed)."""
    while not stopping.is_set():
        for pid in children:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done and not stopping.is_set():
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    log.error("serve process %d ended with status %d: stopping", pid, code)
                    failed.set()
                os.kill(os.getpid(), signal.SIGTERM)
                return
        stopping.wait(0.5)


def _stop(children: list[int]) -> None:
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    for pid in children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            continue
