"""The DICOM node: one pynetdicom Application Entity serving the archive.

`DimseServer` runs next to the HTTP server in the same process (pynetdicom's
threaded server: one thread listening, one per association), on the cleartext
port and, when configured, a DICOM TLS port. It accepts every storage SOP class in
the transfer syntaxes modalities actually send, so that instances are kept as they
were encoded; answers C-ECHO, C-FIND, C-MOVE, C-GET and storage commitment from the
index. `connections.Guard` holds the connection and association policy.
"""

from __future__ import annotations

import copy
import logging
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.transport import ThreadedAssociationServer

from dicomvault.archive import Archive
from dicomvault.dimse import sop
from dicomvault.dimse.auditing import DimseAudit
from dicomvault.dimse.commitment import CommitmentHandler
from dicomvault.dimse.connections import Guard
from dicomvault.dimse.find import FindHandler
from dicomvault.dimse.retrieve import GetHandler, MoveHandler
from dicomvault.dimse.store import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, StoreHandler
from dicomvault.dimse.tls import server_context

__all__ = ["STORAGE_TRANSFER_SYNTAXES", "DimseServer"]

log = logging.getLogger(__name__)

# Uncompressed first: a peer offering several syntaxes in one context gets the
# first one both sides know, and the archive prefers what needs no decoder to read.
STORAGE_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
]
_PLAIN = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
# pynetdicom's own association limit counts connections still negotiating; the Guard
# enforces `dicom_max_associations` on established ones instead.
_UNLIMITED = 10_000


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server with a listen backlog for busy sites (its default,
    5, makes a burst of modalities connecting at once wait for SYN retries)."""

    request_queue_size = 128


class _Contexts(list[Any]):
    """The presentation contexts a server supports, of which pynetdicom deep-copies
    the whole list for every association it accepts, so that negotiation cannot change
    the server's own: 10.5 ms for the 170 storage contexts with 15 transfer syntaxes
    each, paid by every association before its first PDU is read. A context holds
    only immutable values (UIDs, flags) and lists of them, so a copy of each context
    with fresh lists is as independent, and takes 0.24 ms."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [_copy_context(context) for context in self]


def _copy_context(context: Any) -> Any:
    twin = copy.copy(context)
    for name, value in vars(context).items():
        if isinstance(value, list):
            setattr(twin, name, list(value))
    return twin


class _SharedSocketServer(_Server):
    """A server on a listening socket that every process of the archive shares.

    Each process's acceptor wakes for a new connection; a process already serving
    connections waits `_WAIT_PER_CONNECTION` for each before it accepts, so the
    least busy process takes it and associations spread evenly. The socket is
    non-blocking: a process that finds the connection taken goes back to waiting.
    """

    shared: socket.socket  # set by `_shared_server`
    _serving: list[socket.socket] = []  # noqa: RUF012 (replaced, never changed in place)

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.close()  # the one TCPServer made; the shared one serves instead
        self.socket = self.shared
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # listening already

    def server_close(self) -> None:
        if self.socket is not None:  # no shutdown(): that would stop them all listening
            self.socket.close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # Connections this process accepted and still holds open (an association
        # closes its socket when it ends): counted from the accept on, as modalities
        # connecting at once would all find a process whose threads had not started.
        self._serving = [sock for sock in self._serving if sock.fileno() != -1]
        if self._serving:
            time.sleep(min(len(self._serving) * _WAIT_PER_CONNECTION, _LONGEST_WAIT))
        # BlockingIOError (an OSError) when another process took it: socketserver
        # then simply waits for the next connection.
        sock, address = super().get_request()
        self._serving.append(sock)
        return sock, address


_WAIT_PER_CONNECTION = 0.003
_LONGEST_WAIT = 0.05


def _shared_server(listener: socket.socket) -> type[_SharedSocketServer]:
    return type("SharedSocketServer", (_SharedSocketServer,), {"shared": listener})


def _quiet_unless_logged() -> None:
    """Leave out pynetdicom's standard logging handlers unless its log shows them.

    By default every association binds handlers that describe each PDU and DIMSE
    message sent and received, building their text whatever the log level. They
    write at INFO and DEBUG, and `serve` keeps pynetdicom's log at WARNING unless
    run with `--log-level debug`: otherwise they cost CPU for nothing (measured: see
    docs/performance.md). Read when an association starts, so set before any does.
    """
    wanted = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    _config.LOG_HANDLER_LEVEL = "standard" if wanted else "none"


class DimseServer:
    """The archive's DICOM Application Entity, listening on `host:port` (and on
    `host:tls_port` over DICOM TLS) in background threads."""

    def __init__(
        self,
        archive: Archive,
        host: str,
        port: int | None,
        *,
        tls_port: int | None = None,
        listeners: Mapping[int, socket.socket] | None = None,
    ) -> None:
        self.archive = archive
        settings = archive.settings
        _quiet_unless_logged()
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        self.ae.implementation_version_name = IMPLEMENTATION_VERSION
        self.ae.maximum_pdu_size = settings.dicom_max_pdu_bytes
        self.ae.maximum_associations = _UNLIMITED
        self.ae.acse_timeout = settings.dicom_acse_timeout
        self.ae.dimse_timeout = settings.dicom_dimse_timeout
        self.ae.network_timeout = settings.dicom_network_timeout
        for abstract in (sop.VERIFICATION, sop.STORAGE_COMMITMENT, *sop.QUERY_RETRIEVE):
            self.ae.add_supported_context(abstract, _PLAIN)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                # scp_role: a C-GET requestor receives its instances as Storage SCP.
                self.ae.add_supported_context(
                    context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
                )
        self.host = host
        self.port = port
        self.tls_port = tls_port
        self.listeners = dict(listeners or {})
        self.audit = DimseAudit(archive.auditor)
        self.guard = Guard(archive, self.audit)
        self._servers: list[Any] = []

    def handlers(self) -> list[Any]:
        """The (event, handler) pairs each listening server binds."""
        return [
            *self.guard.handlers(),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_C_STORE, StoreHandler(self.archive, self.audit)),
            (evt.EVT_C_FIND, FindHandler(self.archive, self.audit)),
            (evt.EVT_C_MOVE, MoveHandler(self.archive, self.audit)),
            (evt.EVT_C_GET, GetHandler(self.archive, self.audit)),
            (evt.EVT_N_ACTION, CommitmentHandler(self.archive, self.audit)),
        ]

    def start(self) -> int | None:
        """Listen and serve in background threads; the cleartext port actually bound
        (useful with 0), None without one. `tls_port` is set likewise."""
        if self.port is not None:
            server = self._listen(self.port, None)
            self.port = int(server.server_address[1])
            log.info("DIMSE: %s listening on %s:%d", self.ae.ae_title, self.host, self.port)
        if self.tls_port is not None:
            server = self._listen(self.tls_port, server_context(self.archive.settings))
            self.tls_port = int(server.server_address[1])
            log.info("DIMSE: %s DICOM TLS on %s:%d", self.ae.ae_title, self.host, self.tls_port)
        return self.port

    def _listen(self, port: int, ssl_context: Any) -> Any:
        """pynetdicom's non-blocking server on `port`, or on the listening socket the
        processes of this archive share for it (`listeners`)."""
        shared = self.listeners.get(port)
        server_class = _Server if shared is None else _shared_server(shared)
        server = self.ae.make_server(
            (self.host, port),
            evt_handlers=self.handlers(),
            ssl_context=ssl_context,
            server_class=server_class,
        )
        server.contexts = _Contexts(server.contexts)
        thread = threading.Thread(
            target=server.serve_forever, name=f"dicom-acceptor-{port}", daemon=True
        )
        thread.start()
        self.ae._servers.append(server)  # so that AE.shutdown() stops it too
        self._servers.append(server)
        return server

    def stop(self) -> None:
        """Stop listening and end every association."""
        for server in self._servers:
            server.shutdown()
        self._servers = []
        self.ae.shutdown()
