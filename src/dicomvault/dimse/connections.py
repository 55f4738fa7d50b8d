"""Each connection to the DICOM node: socket options, deadlines, limits, who is calling.

pynetdicom serves every connection in its own thread but leaves the socket as the
kernel made it: Nagle's algorithm on, no read deadline, PDUs of any announced length
read whole into memory, and one association limit for everyone that half-open
connections count against. So a handful of connections that send half a PDU and
stall lock a real modality out. `Guard` fixes that, from pynetdicom's events:

- on connect (EVT_CONN_OPEN, in the connection's thread): TCP_NODELAY, a read
  deadline on the socket (the ACSE timeout until negotiation, then the network
  timeout), the TLS handshake under that deadline, a cap on the PDU length checked
  from the PDU header before the body is read, and a per-address connection cap
  that drops the oldest not-yet-associated connection of that address, so a flood
  from one address cannot take the slots a new connection needs; and waits that end
  when there is work instead of pynetdicom's 1 ms polls (`prompt.make_prompt`);
  C-STORE responses encoded directly (`replies.quick_store_replies`);
- on A-ASSOCIATE-RQ (EVT_REQUESTED): the association policy (known AEs only,
  calling host) and the limit of established associations, as an A-ASSOCIATE-RJ;
  the registry entry of the caller is looked up once and kept for the handlers.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import weakref
from typing import Any

from dicomvault.access.policy import Principal, Role
from dicomvault.archive import Archive
from dicomvault.dimse import registry
from dicomvault.dimse.auditing import DimseAudit
from dicomvault.dimse.policy import Peer, admit
from dicomvault.dimse.prompt import make_prompt
from dicomvault.dimse.replies import quick_store_replies

__all__ = ["Guard", "peer_of", "tune_socket"]

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason.
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognized
_REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit
_PDU_HEADER = 6

_peers: weakref.WeakKeyDictionary[Any, Peer] = weakref.WeakKeyDictionary()


def peer_of(assoc: Any) -> Peer:
    """Who is on the other side of `assoc` (resolved once, at association request)."""
    peer = _peers.get(assoc)
    if peer is None:  # not through the Guard (cannot happen on the node's own server)
        requestor = assoc.requestor
        nobody = Principal("unknown", "ae", Role.VIEWER, frozenset(), grants=frozenset())
        peer = Peer(str(requestor.ae_title).strip(), str(requestor.address), None, nobody)
    return peer


def tune_socket(sock: socket.socket | None) -> None:
    """TCP_NODELAY: DIMSE is small request/response PDUs; with Nagle's algorithm on,
    each response waits for a delayed ACK (stock pynetdicom stores ~19 instances/s
    that way, over 100 without)."""
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def read_exactly(sock: socket.socket, nr_bytes: int) -> bytearray:
    """`nr_bytes` from `sock`, or fewer if the peer closed the connection first (what
    pynetdicom's own read returns then: the DUL sees a short PDU and aborts)."""
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    got = 0
    try:
        while got < nr_bytes:
            count = sock.recv_into(view[got:])
            if not count:
                break
            got += count
    finally:
        view.release()
    if got < nr_bytes:
        del buffer[got:]
    return buffer


def _drop(assoc: Any) -> None:
    """End a connection from another thread: its blocked read returns and it winds down."""
    sock = getattr(assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class Guard:
    """The connection and association policy of one DICOM node."""

    def __init__(self, archive: Archive, audit: DimseAudit) -> None:
        self.archive = archive
        self.audit = audit
        settings = archive.settings
        self.max_pdu = settings.dicom_max_pdu_bytes
        self.per_peer = settings.dicom_max_connections_per_peer
        self.max_associations = settings.dicom_max_associations
        self.acse_timeout = settings.dicom_acse_timeout
        self.network_timeout = settings.dicom_network_timeout
        self._lock = threading.Lock()
        self._open: dict[str, list[Any]] = {}

    def handlers(self) -> list[Any]:
        from pynetdicom import evt

        return [
            (evt.EVT_CONN_OPEN, self.on_connect),
            (evt.EVT_CONN_CLOSE, self.on_close),
            (evt.EVT_REQUESTED, self.on_request),
            (evt.EVT_ESTABLISHED, self.on_established),
        ]

    # -- connection level ---------------------------------------------------------------

    def on_connect(self, event: Any) -> None:
        assoc = event.assoc
        if not assoc.is_acceptor:
            tune_socket(assoc.dul.socket.socket)
            return
        sock = assoc.dul.socket.socket
        try:
            tune_socket(sock)
            sock.settimeout(self.acse_timeout)
            if isinstance(sock, ssl.SSLSocket):
                sock.do_handshake()
        except (OSError, ValueError) as exc:
            log.info("DICOM connection from %s dropped: %s", event.address, exc)
            _drop(assoc)
            return
        self._cap_pdus(assoc)
        make_prompt(assoc)
        quick_store_replies(assoc)
        self._admit(assoc, str(event.address[0]))

    def _cap_pdus(self, assoc: Any) -> None:
        """Refuse a PDU longer than we announced before reading its body: the DUL reads
        the 6-byte header, then asks for the announced length in one call.

        The read itself replaces pynetdicom's, which takes 4 KiB per `recv` (and, with a
        socket timeout, a `poll` before each): 260 system calls and as many rounds of
        Python for a 525 kB CT instance. Here the bytes land in place, as many per call
        as the kernel holds."""
        sock = assoc.dul.socket.socket
        # An A-ASSOCIATE-RQ is not bound by the negotiated maximum: allow it 64 KiB.
        limit = max(self.max_pdu, 65536) + _PDU_HEADER

        def capped(nr_bytes: int) -> bytearray:
            if nr_bytes > limit:
                raise OSError(f"PDU of {nr_bytes} bytes is over the {self.max_pdu}-byte maximum")
            return read_exactly(sock, nr_bytes)

        assoc.dul.socket.recv = capped

    def _admit(self, assoc: Any, address: str) -> None:
        with self._lock:
            conns = self._open.setdefault(address, [])
            conns.append(assoc)
            while len(conns) > self.per_peer:
                waiting = [a for a in conns[:-1] if not a.is_established]
                # All others working associations: refuse the new one.
                victim = waiting[0] if waiting else assoc
                conns.remove(victim)
                log.warning("DICOM: %d connections from %s, dropping one", len(conns) + 1, address)
                _drop(victim)

    def on_close(self, event: Any) -> None:
        assoc = event.assoc
        self.audit.association_ended(assoc)
        with self._lock:
            for address, conns in list(self._open.items()):
                if assoc in conns:
                    conns.remove(assoc)
                if not conns:
                    del self._open[address]

    def on_established(self, event: Any) -> None:
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if event.assoc.is_acceptor and sock is not None:
            sock.settimeout(self.network_timeout)

    # -- association level ---------------------------------------------------------------

    def on_request(self, event: Any) -> None:
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        address = str(assoc.requestor.address)
        try:
            known = registry.find(self.archive.db, calling)
        except Exception:
            log.exception("DICOM: the AE registry is unavailable")
            self._reject(assoc, _REJECT_BUSY, f"{calling}: registry unavailable")
            return
        peer = admit(
            calling, address, known, accept_unknown=self.archive.settings.dicom_accepts_unknown_aes
        )
        if not isinstance(peer, Peer):
            self.audit.denied(calling, address, None, peer.reason)  # before the peer hears
            self._reject(assoc, _REJECT_CALLING_AE, peer.reason)
            return
        established = sum(
            1 for a in assoc.ae.active_associations if a.is_acceptor and a.is_established
        )
        if established >= self.max_associations:
            self._reject(assoc, _REJECT_BUSY, f"{established} associations already")
            return
        _peers[assoc] = peer

    @staticmethod
    def _reject(assoc: Any, reason: tuple[int, int, int], why: str) -> None:
        log.info("DICOM association from %s refused: %s", assoc.requestor.address, why)
        assoc.acse.send_reject(*reason)
        assoc.kill()  # as pynetdicom does for its own refusals: waits until the RJ is sent
