"""The DICOM node: one pynetdicom Application Entity serving the archive.

`DimseServer` runs next to the HTTP server in the same process (pynetdicom's
threaded server: one thread listening, one per association). It accepts every
storage SOP class in the transfer syntaxes modalities actually send, so that
instances are kept as they were encoded, answers C-ECHO, and C-FIND from the index.

Every accepted socket gets TCP_NODELAY: DIMSE is request/response over small
PDUs, and with Nagle's algorithm on, each C-STORE response waits for a delayed
ACK (stock pynetdicom stores about 19 instances/s that way, over 100 without).
"""

from __future__ import annotations

import logging
import socket
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
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomvault.archive import Archive
from dicomvault.dimse.find import PATIENT_ROOT_FIND, STUDY_ROOT_FIND, FindHandler
from dicomvault.dimse.store import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, StoreHandler

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


def _no_delay(event: Any) -> None:
    """EVT_CONN_OPEN: turn Nagle's algorithm off on the association's socket."""
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class DimseServer:
    """The archive's DICOM Application Entity, listening on `host:port` in background threads."""

    def __init__(self, archive: Archive, host: str, port: int) -> None:
        self.archive = archive
        self.ae = AE(ae_title=archive.settings.ae_title)
        self.ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        self.ae.implementation_version_name = IMPLEMENTATION_VERSION
        self.ae.add_supported_context(
            Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        for model in (PATIENT_ROOT_FIND, STUDY_ROOT_FIND):
            self.ae.add_supported_context(model, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                self.ae.add_supported_context(context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES)
        self.host = host
        self.port = port
        self._server: Any = None

    def start(self) -> int:
        """Listen and serve in background threads; the port actually bound (useful with 0)."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, _no_delay),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_C_STORE, StoreHandler(self.archive)),
            (evt.EVT_C_FIND, FindHandler(self.archive)),
        ]
        self._server = self.ae.start_server(
            (self.host, self.port), block=False, evt_handlers=handlers
        )
        self.port = int(self._server.server_address[1])
        log.info("DIMSE: %s listening on %s:%d", self.ae.ae_title, self.host, self.port)
        return self.port

    def stop(self) -> None:
        """Stop listening and end every association."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()
