"""TLS for the archive's doors: one server context from the shared settings
(`tls_cert_file`, `tls_key_file`, and `tls_ca_file` to require client certificates),
used by HTTPS and by DICOM TLS alike. TLS 1.2 is the oldest version accepted.
"""

from __future__ import annotations

import ssl
from typing import Any

import uvicorn

from dicomvault.config import Settings

__all__ = ["server_ssl_context", "uvicorn_config"]

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The server-side TLS context, or None when no certificate is configured."""
    if settings.tls_cert_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_ca_file is not None:
        context.load_verify_locations(settings.tls_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def uvicorn_config(app: Any, settings: Settings, **kwargs: Any) -> uvicorn.Config:
    """A uvicorn config serving `app`, over HTTPS with our context when a certificate is
    configured (ssl_context_factory, uvicorn >= 0.47; its own context sets no minimum
    version)."""
    context = server_ssl_context(settings)
    if context is not None:
        kwargs["ssl_context_factory"] = lambda _config, _default: context
    return uvicorn.Config(app, **kwargs)
