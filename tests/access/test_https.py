"""HTTPS served directly: TLS 1.2 or newer only, client certificates when a CA is set."""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.tls import server_ssl_context
from tests.support.live import running_server


@contextmanager
def https_server(settings: Settings) -> Iterator[str]:
    archive = Archive.open(settings)
    try:
        with running_server(archive) as url:
            assert url.startswith("https://")
            yield url
    finally:
        archive.close()


def _client_context(
    pki: Path, *, cert: bool = False, version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki / "ca.pem")
    if cert:
        context.load_cert_chain(pki / "client.pem", pki / "client.key")
    if version is not None:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer old versions
        with warnings.catch_warnings():  # Python deprecates TLS 1.0/1.1: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = version
            context.maximum_version = version
    return context


def test_https_with_tls_1_2_or_newer_only(archive: Archive, pki: Path) -> None:
    settings = archive.settings.model_copy(
        update={"tls_cert_file": pki / "server.pem", "tls_key_file": pki / "server.key"}
    )
    context = server_ssl_context(settings)
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with https_server(settings) as url:
        response = httpx.get(f"{url}/health", verify=_client_context(pki))
        assert response.status_code == 200
        for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/health", verify=_client_context(pki, version=old))
        tls13 = _client_context(pki, version=ssl.TLSVersion.TLSv1_3)
        assert httpx.get(f"{url}/health", verify=tls13).status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port
            httpx.get(url.replace("https:", "http:") + "/health")


def test_a_ca_file_requires_client_certificates(archive: Archive, pki: Path) -> None:
    settings = archive.settings.model_copy(
        update={
            "tls_cert_file": pki / "server.pem",
            "tls_key_file": pki / "server.key",
            "tls_ca_file": pki / "ca.pem",
        }
    )
    with https_server(settings) as url:
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/health", verify=_client_context(pki))
        ok = httpx.get(f"{url}/health", verify=_client_context(pki, cert=True))
        assert ok.status_code == 200


def test_a_certificate_without_its_key_is_a_clear_error(tmp_path: Path, pki: Path) -> None:
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file go together"):
        Settings(data_dir=tmp_path, tls_cert_file=pki / "server.pem")
    with pytest.raises(ValueError, match=r"tls_key_file = .*: no such file"):
        Settings(data_dir=tmp_path, tls_cert_file=pki / "server.pem", tls_key_file=pki / "nope.key")
