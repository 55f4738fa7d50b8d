"""DICOM TLS (PS3.15 B.9, the BCP 195 TLS Secure Transport Connection Profile).

The certificate, key and client CA are the ones HTTPS uses (`tls_cert_file`,
`tls_key_file`, `tls_ca_file`: client certificates are required when a CA is set).
TLS 1.2 is the oldest version; with TLS 1.2 only the BCP 195 recommended suites
(ECDHE/DHE with AES-GCM) are offered; TLS 1.3 suites are all BCP 195-conformant.

The server context defers the handshake: pynetdicom wraps each accepted socket in
its single accept thread, where a peer that connects and says nothing would stall
every other connection. `connections.Guard` runs the handshake instead, in the
connection's own thread and under a deadline.
"""

from __future__ import annotations

import ssl
from typing import Any

from dicomvault.config import Settings

__all__ = ["BCP195_CIPHERS", "client_context", "server_context"]

BCP195_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    ]
)


class _DeferredHandshake(ssl.SSLContext):
    """An SSLContext whose server sockets do not handshake when wrapped."""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    return context


def server_context(settings: Settings) -> ssl.SSLContext:
    """The DICOM TLS server context; ValueError without a certificate."""
    if settings.tls_cert_file is None:
        raise ValueError("DICOM TLS needs tls_cert_file and tls_key_file")
    context = _harden(_DeferredHandshake(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_ca_file is not None:
        context.load_verify_locations(settings.tls_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(settings: Settings) -> ssl.SSLContext:
    """The context for reaching a peer over DICOM TLS: the peer is verified against
    `tls_ca_file` (else the system's CAs); our certificate is presented when set."""
    context = _harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
    if settings.tls_ca_file is not None:
        context.load_verify_locations(settings.tls_ca_file)
    if settings.tls_cert_file is not None:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context
